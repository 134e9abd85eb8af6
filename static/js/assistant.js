/* The "Suggest prompts" boxes (templates/includes/prompt_assistant.html): post the phrase to
 * /prompts/suggest/ and put the suggested prompts into the page's prompt fields, one per
 * line, for the operator to edit. The box is a form of its own with its CSRF token, so the
 * request carries it like any form post; the answer's warnings are listed under the box.
 */
(function () {
  "use strict";

  function describeError(data, status) {
    const errors = data && data.errors;
    if (errors) {
      const lines = Object.values(errors).flat();
      if (lines.length) return lines.join(" ");
    }
    return `The suggestion failed (HTTP ${status}).`;
  }

  function setup(box) {
    const status = box.querySelector('[data-role="assistant-status"]');
    const list = box.querySelector('[data-role="assistant-warnings"]');
    const button = box.querySelector('button[type="submit"]');

    function showWarnings(warnings) {
      const items = (warnings || []).map((text) => {
        const li = document.createElement("li");
        li.className = "warning";
        li.textContent = text;
        return li;
      });
      list.replaceChildren(...items);
      list.hidden = items.length === 0;
    }

    function fill(id, prompts) {
      const field = id && document.getElementById(id);
      if (!field || !Array.isArray(prompts)) return;
      field.value = prompts.join("\n");
      field.dispatchEvent(new Event("input", { bubbles: true }));
    }

    box.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      status.textContent = "Suggesting…";
      showWarnings([]);
      try {
        const response = await fetch(box.action, {
          method: "POST",
          body: new FormData(box),
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (response.redirected) {
          status.textContent = "Your session has ended: reload the page and log in again.";
          return;
        }
        const data = await response.json().catch(() => null);
        if (!response.ok || !data) {
          status.textContent = describeError(data, response.status);
          return;
        }
        fill(box.dataset.normal, data.normal);
        fill(box.dataset.anomaly, data.anomaly);
        status.textContent =
          data.source === "llm"
            ? "Suggested by the prompt assistant: check and edit them before saving."
            : "Suggested from templates: check and edit them before saving.";
        showWarnings(data.warnings);
      } catch (error) {
        status.textContent = `The suggestion failed: ${error.message}`;
      } finally {
        button.disabled = false;
      }
    });
  }

  document.querySelectorAll("form[data-assistant]").forEach(setup);
})();
