/* /image/: a busy state while the server scores the image (8-18 s on a CPU), so the page
 * does not look dead and the button is not pressed twice. The form posts as a normal page
 * load; the server keeps the image, so the next page needs no file to score it again.
 */
(function () {
  "use strict";

  const form = document.getElementById("image-form");
  if (!form) return;
  const button = form.querySelector('[data-role="submit"]');
  const busy = form.querySelector('[data-role="busy"]');

  function setBusy(on) {
    form.setAttribute("aria-busy", on ? "true" : "false");
    button.disabled = on;
    busy.hidden = !on;
  }

  form.addEventListener("submit", (event) => {
    if (form.getAttribute("aria-busy") === "true") {
      event.preventDefault(); // already scoring: one request at a time
      return;
    }
    // Disabled after this event: a disabled submitter would not be sent, but nothing
    // reads its value, and the browser has already started the submission.
    setBusy(true);
  });

  // Back to this page from the bfcache: the request it was waiting for is long gone.
  window.addEventListener("pageshow", () => setBusy(false));
})();
