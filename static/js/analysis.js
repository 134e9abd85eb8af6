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
  const autoThreshold = root.dataset.autoThreshold === "true";
  const learningSeconds = parseFloat(root.dataset.learningSeconds) || 0;
  // The time of the first frame learned (the stored one, else the first that arrives).
  let learningStart = root.dataset.learningStart === "" ? null : parseFloat(root.dataset.learningStart);
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

  // A POST form with the page's CSRF token; `template` is the action for incident 0.
  function postForm(template, id, role, text) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = template.replace(/\/0\/([a-z-]+)\/$/, `/${id}/$1/`);
    form.className = "inline";
    form.dataset.role = role;
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = csrfToken();
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "secondary small";
    button.textContent = text;
    form.append(token, button);
    return form;
  }

  function ackForm(id) {
    return postForm(table.dataset.ackUrl, id, "ack-form", "Acknowledge");
  }

  const FEEDBACK = {
    false_alarm: { label: "False alarm", url: "falseAlarmUrl" },
    confirmed: { label: "Confirm", url: "confirmUrl", given: "Confirmed anomaly" },
  };

  // The feedback given (a badge) and the two buttons; the given one is disabled.
  function showFeedback(td, inc) {
    let given = td.querySelector('[data-role="feedback-given"]');
    if (!given) {
      given = document.createElement("span");
      given.dataset.role = "feedback-given";
      td.append(given);
      for (const [kind, spec] of Object.entries(FEEDBACK)) {
        if (!table.dataset[spec.url]) continue;
        const form = postForm(table.dataset[spec.url], inc.id, "feedback-form", spec.label);
        form.dataset.feedback = kind;
        td.append(" ", form);
      }
    }
    const kind = typeof inc.feedback === "string" && FEEDBACK[inc.feedback] ? inc.feedback : null;
    if (kind) {
      const span = document.createElement("span");
      span.className = `badge feedback-${kind}`;
      span.textContent = FEEDBACK[kind].given || FEEDBACK[kind].label;
      given.replaceChildren(span);
    } else given.replaceChildren();
    for (const form of td.querySelectorAll('form[data-role="feedback-form"]')) {
      const button = form.querySelector("button");
      if (button) button.disabled = form.dataset.feedback === kind;
    }
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
      row.append(
        cell(row, "thumb"),
        cell(row, "clip"),
        cell(row, "range"),
        started,
        cell(row, "peak"),
        cell(row, "ack"),
        cell(row, "feedback"),
        note,
      );
      tbody.prepend(row); // live lists are newest first
      const wrap = role("incident-wrap");
      if (wrap) wrap.hidden = false;
      const none = role("no-incidents");
      if (none) none.hidden = true;
    }
    row.classList.toggle("open", Boolean(inc.open));
    setThumbnail(cell(row, "thumb"), inc);
    setClip(cell(row, "clip"), inc);
    if (chart) chart.upsertIncident(inc);
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
    if ("feedback" in inc) showFeedback(cell(row, "feedback"), inc);
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

  // The incident's clip (written by the worker once the incident ends): a player on demand.
  function setClip(td, inc) {
    const url = typeof inc.clip_url === "string" && inc.clip_url.startsWith("/") && !inc.clip_url.startsWith("//") ? inc.clip_url : null;
    const video = td.querySelector("video");
    if (!url) {
      if (!video && !td.textContent) {
        const none = document.createElement("span");
        none.className = "muted";
        none.textContent = "—";
        td.replaceChildren(none);
      }
      return;
    }
    if (video && video.getAttribute("src") === url) return;
    const details = document.createElement("details");
    details.className = "clip";
    const summary = document.createElement("summary");
    summary.textContent = "Play clip";
    const player = document.createElement("video");
    player.controls = true;
    player.preload = "none";
    player.src = url;
    const link = document.createElement("a");
    link.href = url;
    link.download = "";
    link.textContent = "download";
    details.append(summary, player, link);
    td.replaceChildren(details);
  }

  function openBadge() {
    const span = document.createElement("span");
    span.className = "badge badge-anomaly";
    span.textContent = "open";
    return span;
  }

  if (tbody) {
    tbody.addEventListener("submit", async (event) => {
      const form = event.target.closest('form[data-role="ack-form"], form[data-role="feedback-form"]');
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
        if (form.dataset.role === "feedback-form") {
          if (button) button.disabled = true;
          const row = form.closest("tr");
          if (row && typeof data.message === "string") row.title = data.message;
        }
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

  let scored = null;
  let expected = null;

  function setProgress(value, msg = {}) {
    if (typeof msg.scored === "number") scored = msg.scored;
    if (typeof msg.expected === "number") expected = msg.expected;
    if (typeof value !== "number") return;
    const pct = Math.round(Math.max(0, Math.min(1, value)) * 100);
    for (const bar of roles("progress")) bar.value = pct;
    for (const text of roles("progress-text")) text.textContent = L.progressText(pct, scored, expected);
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
      cameraStatus = msg.camera_status;
    }
    if (typeof msg.last_error === "string") showCameraError(msg.last_error);
    if (typeof msg.phase === "string") showPhase(msg.phase);
    else if (typeof msg.status === "string" && msg.status !== "running") showPhase("");
    renderCamera();
    if (typeof msg.error_message === "string") {
      const error = role("error");
      if (error) {
        error.textContent = msg.error_message;
        error.hidden = !msg.error_message;
      }
    }
    setProgress(msg.progress);
  }

  // What the worker is doing before its first score ("loading model"); "" once it scores.
  function showPhase(phase) {
    const el = role("phase");
    if (!el) return;
    el.textContent = phase;
    el.hidden = !phase;
  }

  // The camera's last error (the sources redact credentials before it is stored).
  function showCameraError(text) {
    const line = role("camera-error-line");
    const el = role("camera-error");
    if (!line || !el) return;
    el.textContent = text;
    line.hidden = !text;
  }

  // "Page connected" (the socket, data-role=live-state) is one thing; "camera streaming"
  // another: the camera online with frames arriving (scores, frames, live pictures) lately.
  const FRAMES_FRESH_MS = 15000;
  const isLiveCamera = root.dataset.isLive === "true";
  let cameraStatus = root.dataset.cameraStatus || "";
  let lastFrameSeen = root.dataset.cameraStreaming === "true" ? Date.now() : null;

  function framesArrived() {
    lastFrameSeen = Date.now();
    renderCamera();
  }

  const CAMERA_TEXT = {
    streaming: "streaming",
    "no-frames": "online, no frames",
    reconnecting: "reconnecting…",
    offline: "offline",
    failed: "failed",
    unknown: "not streaming",
    reading: "reading the file",
    waiting: "waiting for a worker",
    idle: "not being read",
  };

  function renderCamera() {
    const el = role("camera-indicator");
    if (!el) return;
    let state;
    if (!isLiveCamera) {
      const status = root.dataset.status;
      state = status === "running" ? "reading" : status === "queued" ? "waiting" : "idle";
    } else if (cameraStatus === "online") {
      const fresh = lastFrameSeen !== null && Date.now() - lastFrameSeen < FRAMES_FRESH_MS;
      state = fresh ? "streaming" : "no-frames";
    } else {
      state = CAMERA_TEXT[cameraStatus] ? cameraStatus : "unknown";
    }
    el.dataset.state = state;
    el.textContent = CAMERA_TEXT[state];
  }
  renderCamera();
  window.setInterval(renderCamera, 2000);

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
      const badge = L.scoreBadge(summary.last_score, threshold, summary.last_learning);
      last.replaceChildren(`${L.scoreText(summary.last_score, threshold)} `, badge);
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
    summary.last_learning = Boolean(msg.learning);
    if (typeof summary.peak_score !== "number" || msg.score > summary.peak_score) {
      summary.peak_score = msg.score;
      summary.peak_time_s = msg.time_s;
    }
    renderSummary();
  }

  function showCurrent(msg) {
    const score = msg.score;
    if (typeof score !== "number") return;
    const current = role("current-score");
    if (current) current.textContent = L.scoreText(score, threshold);
    const label = role("current-label");
    if (label) label.replaceChildren(L.scoreBadge(score, threshold, msg.learning));
    root.classList.toggle("is-anomaly", !msg.learning && score >= threshold);
    showLearning(msg);
  }

  // "learning: 12 of 30 s" while the newest frames are learned as normal.
  function showLearning(msg) {
    const el = role("learning");
    if (!el) return;
    if (!msg.learning || typeof msg.time_s !== "number") {
      el.hidden = true;
      return;
    }
    if (learningStart === null || msg.time_s < learningStart) learningStart = msg.time_s;
    const elapsed = Math.max(0, msg.time_s - learningStart);
    el.textContent = `learning: ${Math.round(elapsed)} of ${Number(learningSeconds.toFixed(1))} s`;
    el.hidden = false;
  }

  // The threshold in use changed (the automatic one, once learning ended).
  function setThreshold(value) {
    if (typeof value !== "number" || value === threshold) return;
    threshold = value;
    root.dataset.threshold = String(value);
    const text = autoThreshold ? `automatic: ${Number(value.toPrecision(3))}` : String(value);
    for (const el of [...roles("threshold-now"), ...roles("threshold-in-use")]) el.textContent = text;
    if (chart) chart.setThreshold(value);
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

  // --- Exploring: the frame behind a clicked point ----------------------------------------------

  const explore = role("explore");
  const exploreImg = role("explore-image");
  const exploreCaption = role("explore-caption");
  const exploreError = role("explore-error");
  let exploreSeq = 0;
  let exploreObjectUrl = null;

  // `url` for frame 0 is in data-frame-url; the server decodes (files) or finds what it kept
  // (live cameras), or answers a short text saying why it cannot (shown as it is).
  function frameUrl(index) {
    return root.dataset.frameUrl.replace(/\/0\.jpg$/, `/${index}.jpg`);
  }

  async function showFrame(point) {
    if (!explore || !Number.isInteger(point.i)) return;
    const seq = ++exploreSeq;
    explore.hidden = false;
    explore.dataset.frame = String(point.i);
    explore.dataset.state = "loading";
    const at = typeof point.t === "number" ? point.t : point.x;
    const when = root.dataset.isLive === "true" && typeof point.t !== "number" ? "" : ` at ${L.seconds(at)}`;
    const label = point.l ? "learning" : point.y >= threshold ? "Anomaly" : "Normal";
    exploreCaption.textContent = `Frame ${point.i}${when}: score ${L.scoreText(point.y, threshold)} (${label})`;
    exploreError.hidden = true;
    try {
      const response = await fetch(frameUrl(point.i), { credentials: "same-origin" });
      if (seq !== exploreSeq) return; // another point was clicked meanwhile
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("image/")) {
        const text = type.startsWith("text/plain") ? (await response.text()).slice(0, 300) : "";
        throw new Error(text || `This frame cannot be shown (HTTP ${response.status}).`);
      }
      const blob = await response.blob();
      if (seq !== exploreSeq) return;
      if (exploreObjectUrl) URL.revokeObjectURL(exploreObjectUrl);
      exploreObjectUrl = URL.createObjectURL(blob);
      exploreImg.src = exploreObjectUrl;
      exploreImg.hidden = false;
      explore.dataset.state = "shown";
    } catch (err) {
      if (seq !== exploreSeq) return;
      exploreImg.hidden = true;
      exploreError.textContent = err && err.message ? err.message : "This frame cannot be shown.";
      exploreError.hidden = false;
      explore.dataset.state = "error";
    }
  }

  // --- The live picture: a few frames a second while the page is visible -----------------------
  // Each request waits for the previous picture to load (paced by image loads, at most
  // PICTURE_MS apart): a slow link gets fewer pictures, never a queue. Requests stop while the
  // tab is hidden; the worker stops encoding some seconds after the last request.

  const PICTURE_MS = 250;
  const pictureFigure = role("picture-figure");
  if (pictureFigure) {
    const pictureImg = pictureFigure.querySelector('[data-role="picture"]');
    const pictureCaption = pictureFigure.querySelector('[data-role="picture-caption"]');
    let pictureTimer = null;
    let pictureUrl = null;
    let pictureN = 0;
    let pictureStopped = false;
    pictureFigure.dataset.count = "0";

    const schedule = (delay) => {
      if (pictureTimer === null && !pictureStopped) pictureTimer = window.setTimeout(loadPicture, delay);
    };

    async function loadPicture() {
      pictureTimer = null;
      if (document.hidden) return; // visibilitychange starts it again
      const started = performance.now();
      try {
        const response = await fetch(`${pictureFigure.dataset.url}?n=${pictureN++}`, {
          credentials: "same-origin",
          cache: "no-store",
        });
        const type = response.headers.get("Content-Type") || "";
        if (response.status === 403 || (response.redirected && !type.startsWith("image/"))) {
          pictureStopped = true; // logged out or no access: a reload says more
          pictureCaption.textContent = "Live picture: no access (reload the page)";
          return;
        }
        if (!response.ok || !type.startsWith("image/")) {
          const text = type.startsWith("text/plain") ? (await response.text()).slice(0, 200) : "";
          pictureFigure.dataset.state = "waiting";
          pictureCaption.textContent = text || "Live picture: waiting for the camera…";
          pictureImg.classList.add("stale");
          schedule(1000);
          return;
        }
        const url = URL.createObjectURL(await response.blob());
        await new Promise((resolve) => {
          pictureImg.addEventListener("load", resolve, { once: true });
          pictureImg.addEventListener("error", resolve, { once: true });
          pictureImg.src = url;
        });
        if (pictureUrl) URL.revokeObjectURL(pictureUrl);
        pictureUrl = url;
        pictureImg.hidden = false;
        pictureImg.classList.remove("stale");
        pictureFigure.dataset.state = "live";
        pictureFigure.dataset.count = String(Number(pictureFigure.dataset.count) + 1);
        pictureCaption.textContent = "Live picture (about 4 frames/s)";
        framesArrived();
        schedule(Math.max(0, PICTURE_MS - (performance.now() - started)));
      } catch (err) {
        pictureFigure.dataset.state = "waiting";
        pictureCaption.textContent = "Live picture: the server cannot be reached, retrying…";
        schedule(2000);
      }
    }

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) schedule(0);
    });
    schedule(0);
  }

  // --- Chart ----------------------------------------------------------------------------------

  const canvas = document.getElementById("score-chart");
  let chart = null;

  // The incident ranges the page was rendered with (shaded on the chart).
  function storedIncidents() {
    const node = document.getElementById("incident-ranges");
    try {
      const list = node ? JSON.parse(node.textContent) : [];
      return Array.isArray(list) ? list : [];
    } catch (err) {
      return [];
    }
  }
  if (!canvas || !window.Chart) return;

  if (root.dataset.mode === "results") {
    const node = document.getElementById("series-data");
    const series = node ? JSON.parse(node.textContent) : { points: [] };
    const peak = series.peak ? { x: series.peak.t, y: series.peak.s, i: series.peak.i } : null;
    chart = L.scoreChart(canvas, { threshold, window: 0, peak, onPick: showFrame });
    chart.replace(
      series.points.map((p) => {
        const point = { x: p.t, y: p.s, i: p.i };
        if (p.l) point.l = true;
        if (typeof p.p === "number") point.p = p.p;
        if (typeof p.n === "number") point.n = p.n;
        return point;
      }),
    );
    chart.setIncidents(storedIncidents());
  } else {
    const useClock = root.dataset.isLive === "true";
    const window_ = parseInt(root.dataset.window, 10) || 60;
    chart = L.scoreChart(canvas, { threshold, window: window_, clock: useClock, onPick: showFrame });
    const stateEl = role("live-state");
    const points = (scores) => scores.map((s) => L.toPoint(s, useClock));

    chart.setIncidents(storedIncidents());

    L.connect(root.dataset.wsUrl, {
      onState: (state, detail) => L.showState(stateEl, state, detail),
      onSnapshot(msg, append) {
        setThreshold(msg.threshold);
        if (append) chart.add(points(msg.scores));
        else chart.replace(points(msg.scores));
        for (const score of msg.scores) {
          if (score.learning && (learningStart === null || score.time_s < learningStart)) {
            learningStart = score.time_s;
          }
        }
        if (msg.scores.length) showCurrent(msg.scores[msg.scores.length - 1]);
        if (typeof msg.expected_frames === "number") expected = msg.expected_frames;
        if (msg.summary) {
          scored = msg.summary.frames_scored;
          summary = { ...msg.summary };
          const newest = msg.scores[msg.scores.length - 1];
          if (newest) summary.last_learning = Boolean(newest.learning);
          renderSummary();
        }
        applyStatus(msg);
        // Newest first: insert the oldest first so the newest ends on top.
        if (Array.isArray(msg.incidents)) msg.incidents.slice().reverse().forEach(upsertIncident);
        if (msg.frame_url) setFrame(msg.frame_url);
      },
      onScore(msg) {
        framesArrived();
        setThreshold(msg.threshold);
        chart.add(points([msg]));
        showCurrent(msg);
        countScore(msg);
        // The score of the frame the picture now shows carries its URL.
        if (msg.frame_url) setFrame(msg.frame_url);
      },
      onMessage(msg) {
        if (msg.type === "status") {
          if (msg.reset && tbody) tbody.replaceChildren();
          if (msg.reset) chart.setIncidents([]);
          if (msg.reset) learningStart = null; // a re-run learns again from its start
          applyStatus(msg);
        } else if (msg.type === "progress") setProgress(msg.progress, msg);
        else if (msg.type === "incident") upsertIncident(msg);
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
