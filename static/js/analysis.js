/* The analysis page: live chart, current score, frame image and incidents over the socket
 * (live cameras, running files), or the full stored series (finished files). */
(function () {
  "use strict";

  const root = document.getElementById("analysis-page");
  const L = window.clipwatch;
  if (!root || !L) return;

  const roles = (name) => Array.from(root.querySelectorAll(`[data-role="${name}"]`));
  const role = (name) => root.querySelector(`[data-role="${name}"]`);
  let threshold = parseFloat(root.dataset.threshold);
  const isFile = root.dataset.isFile === "true";
  const fixed2 = (v) => (typeof v === "number" ? v.toFixed(2) : "?");
  const fixed3 = (v) => (typeof v === "number" ? v.toFixed(3) : "?");

  // --- Start / stop / re-run ------------------------------------------------------------------

  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  function showControls(status) {
    for (const form of root.querySelectorAll("form[data-when]")) {
      form.hidden = !form.dataset.when.split(" ").includes(status);
    }
  }

  // --- Incidents ----------------------------------------------------------------------------

  const tbody = role("incidents");
  const table = tbody ? tbody.closest("table") : null;

  function csrfToken() {
    const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
    if (input && input.value) return input.value;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function ackForm(id) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = table.dataset.ackUrl.replace(/\/0\/acknowledge\/$/, `/${id}/acknowledge/`);
    form.className = "inline";
    form.dataset.role = "ack-form";
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = csrfToken();
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "secondary small";
    button.textContent = "Acknowledge";
    form.append(token, button);
    return form;
  }

  function dateTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function cell(row, name) {
    let td = row.querySelector(`[data-role="${name}"]`);
    if (!td) {
      td = document.createElement("td");
      td.dataset.role = name;
    }
    return td;
  }

  function upsertIncident(inc) {
    if (!tbody || !inc || !Number.isInteger(inc.id)) return;
    let row = tbody.querySelector(`tr[data-incident-id="${inc.id}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.incidentId = String(inc.id);
      const started = document.createElement("td");
      started.textContent = "—";
      const note = document.createElement("td");
      row.append(cell(row, "thumb"), cell(row, "range"), started, cell(row, "peak"), cell(row, "ack"), note);
      tbody.prepend(row); // live lists are newest first
      const wrap = role("incident-wrap");
      if (wrap) wrap.hidden = false;
      const none = role("no-incidents");
      if (none) none.hidden = true;
    }
    row.classList.toggle("open", Boolean(inc.open));
    setThumbnail(cell(row, "thumb"), inc);
    const range = cell(row, "range");
    range.replaceChildren(`${fixed2(inc.start_time_s)} s – `);
    if (inc.open) range.append(openBadge());
    else range.append(`${fixed2(inc.end_time_s)} s`);
    cell(row, "peak").textContent = `${fixed3(inc.peak_score)} at ${fixed2(inc.peak_time_s)} s`;
    const ack = cell(row, "ack");
    if (inc.acknowledged_at) {
      ack.textContent = `${inc.acknowledged_by || "(deleted user)"}, ${dateTime(inc.acknowledged_at)}`;
    } else if (!ack.querySelector("form")) {
      ack.replaceChildren(ackForm(inc.id));
    }
  }

  // The peak frame, through the access-checked view; its URL changes when the worker
  // replaces it (a higher peak), so only then is the image fetched again.
  function setThumbnail(td, inc) {
    const url = typeof inc.thumbnail_url === "string" && inc.thumbnail_url.startsWith("/") ? inc.thumbnail_url : null;
    const img = td.querySelector("img");
    if (!url) return;
    if (img && img.getAttribute("src") === url) return;
    const link = document.createElement("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    const image = document.createElement("img");
    image.className = "incident-thumb";
    image.src = url;
    image.alt = `Peak frame of incident ${inc.id}`;
    image.loading = "lazy";
    link.append(image);
    td.replaceChildren(link);
  }

  function openBadge() {
    const span = document.createElement("span");
    span.className = "badge badge-anomaly";
    span.textContent = "open";
    return span;
  }

  if (tbody) {
    tbody.addEventListener("submit", async (event) => {
      const form = event.target.closest('form[data-role="ack-form"]');
      if (!form) return;
      event.preventDefault();
      const button = form.querySelector("button");
      if (button) button.disabled = true;
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: new FormData(form),
          credentials: "same-origin",
          headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
        });
        const type = response.headers.get("Content-Type") || "";
        if (!response.ok || !type.includes("application/json")) throw new Error(String(response.status));
        const data = await response.json();
        upsertIncident(data.incident);
      } catch (err) {
        if (button) button.disabled = false;
        let note = form.querySelector(".form-error");
        if (!note) {
          note = document.createElement("span");
          note.className = "form-error";
          form.append(note);
        }
        note.textContent = " Not saved: reload the page and try again.";
      }
    });
  }

  // --- Status, progress, current score, frame -------------------------------------------------

  function setProgress(value) {
    if (typeof value !== "number") return;
    const pct = Math.round(Math.max(0, Math.min(1, value)) * 100);
    for (const bar of roles("progress")) bar.value = pct;
    for (const text of roles("progress-text")) text.textContent = `${pct}%`;
  }

  function applyStatus(msg) {
    if (typeof msg.status === "string") {
      const before = root.dataset.status;
      root.dataset.status = msg.status;
      for (const holder of roles("analysis-status")) L.setStatusBadge(holder, msg.status);
      showControls(msg.status);
      const finished = role("finished");
      if (finished && isFile && msg.status === "completed" && before !== "completed") {
        finished.hidden = false;
      }
    }
    if (typeof msg.camera_status === "string") {
      for (const holder of roles("camera-status")) L.setStatusBadge(holder, msg.camera_status);
    }
    if (typeof msg.error_message === "string") {
      const error = role("error");
      if (error) {
        error.textContent = msg.error_message;
        error.hidden = !msg.error_message;
      }
    }
    setProgress(msg.progress);
  }

  // The Summary card: stored values from each snapshot, then kept current per score.
  let summary = null;

  function renderSummary() {
    if (!summary) return;
    const set = (name, text) => {
      const el = role(name);
      if (el) el.textContent = text;
    };
    const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "—");
    set("sum-frames", String(summary.frames_scored));
    const last = role("sum-last");
    if (last && typeof summary.last_score === "number") {
      last.replaceChildren(`${fmt(summary.last_score)} `, L.scoreBadge(summary.last_score, threshold));
    }
    const at = typeof summary.peak_time_s === "number" ? ` at ${summary.peak_time_s.toFixed(2)} s` : "";
    set("sum-peak", typeof summary.peak_score === "number" ? fmt(summary.peak_score) + at : "—");
    set("sum-average", fmt(summary.average_score));
  }

  function countScore(msg) {
    if (!summary || typeof msg.score !== "number") return;
    const n = summary.frames_scored;
    summary.average_score = ((summary.average_score || 0) * n + msg.score) / (n + 1);
    summary.frames_scored = n + 1;
    summary.last_score = msg.score;
    if (typeof summary.peak_score !== "number" || msg.score > summary.peak_score) {
      summary.peak_score = msg.score;
      summary.peak_time_s = msg.time_s;
    }
    renderSummary();
  }

  function showCurrent(score) {
    if (typeof score !== "number") return;
    const current = role("current-score");
    if (current) current.textContent = score.toFixed(3);
    const label = role("current-label");
    if (label) label.replaceChildren(L.scoreBadge(score, threshold));
    root.classList.toggle("is-anomaly", score >= threshold);
  }

  const img = role("frame");
  const caption = role("frame-caption");
  let frameLoading = false;
  let frameNext = null;

  // One image request at a time: a fast scorer skips frames instead of queueing them.
  function setFrame(url) {
    if (!img || typeof url !== "string" || !url.startsWith("/") || url.startsWith("//")) return;
    if (frameLoading) {
      frameNext = url;
      return;
    }
    frameLoading = true;
    img.src = url;
  }

  function frameDone() {
    frameLoading = false;
    if (frameNext) {
      const url = frameNext;
      frameNext = null;
      setFrame(url);
    }
  }

  if (img) {
    img.addEventListener("load", () => {
      img.hidden = false;
      if (caption) caption.textContent = "Latest scored frame";
      frameDone();
    });
    img.addEventListener("error", frameDone);
  }

  // --- Chart ----------------------------------------------------------------------------------

  const canvas = document.getElementById("score-chart");
  if (!canvas || !window.Chart) return;
  let chart;

  if (root.dataset.mode === "results") {
    const node = document.getElementById("series-data");
    const series = node ? JSON.parse(node.textContent) : { points: [] };
    const peak = series.peak ? { x: series.peak.t, y: series.peak.s, i: series.peak.i } : null;
    chart = L.scoreChart(canvas, { threshold, window: 0, peak });
    chart.replace(series.points.map((p) => ({ x: p.t, y: p.s, i: p.i })));
  } else {
    const useClock = root.dataset.isLive === "true";
    const window_ = parseInt(root.dataset.window, 10) || 60;
    chart = L.scoreChart(canvas, { threshold, window: window_, clock: useClock });
    const stateEl = role("live-state");
    const points = (scores) => scores.map((s) => L.toPoint(s, useClock));

    L.connect(root.dataset.wsUrl, {
      onState: (state, detail) => L.showState(stateEl, state, detail),
      onSnapshot(msg, append) {
        if (typeof msg.threshold === "number") {
          threshold = msg.threshold;
          chart.setThreshold(threshold);
        }
        if (append) chart.add(points(msg.scores));
        else chart.replace(points(msg.scores));
        if (msg.scores.length) showCurrent(msg.scores[msg.scores.length - 1].score);
        if (msg.summary) {
          summary = { ...msg.summary };
          renderSummary();
        }
        applyStatus(msg);
        // Newest first: insert the oldest first so the newest ends on top.
        if (Array.isArray(msg.incidents)) msg.incidents.slice().reverse().forEach(upsertIncident);
        if (msg.frame_url) setFrame(msg.frame_url);
      },
      onScore(msg) {
        if (typeof msg.threshold === "number" && msg.threshold !== threshold) {
          threshold = msg.threshold;
          chart.setThreshold(threshold);
        }
        chart.add(points([msg]));
        showCurrent(msg.score);
        countScore(msg);
      },
      onMessage(msg) {
        if (msg.type === "status") {
          if (msg.reset && tbody) tbody.replaceChildren();
          applyStatus(msg);
        } else if (msg.type === "progress") setProgress(msg.progress);
        else if (msg.type === "incident") upsertIncident(msg);
        else if (msg.type === "frame") setFrame(msg.url);
      },
    });
  }

  const download = root.querySelector('[data-action="download-png"]');
  if (download) {
    download.addEventListener("click", () =>
      L.downloadPNG(chart.chart, download.dataset.filename || "chart.png"),
    );
  }
})();
