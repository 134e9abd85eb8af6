/* The dashboard wall: every card follows its camera and its analyses without a reload.
 *
 * Two channels, each doing what it is good at:
 * - a status poll (GET state.json every few seconds, only while the page is visible):
 *   statuses, phases, errors, counts and the latest frame of every visible camera, read
 *   from the database; cameras and analyses that appear, change or go away;
 * - a socket per queued or running analysis (live.js): its scores for the chart (the score
 *   of each new picture with the picture's URL) and statuses as they happen. The poll
 *   opens one when it sees an analysis become active; it closes when the analysis ends.
 *   An inactive analysis's socket lives only for its first snapshot (the chart's last
 *   window).
 * A new or changed card is fetched rendered (detection:wall_card), so its markup is the
 * template's alone. Counts, frames and scores only move forward, whichever channel is
 * fresher, except on a new run (a `reset` status message, or the poll seeing frames_scored
 * drop or started_at change): then the card starts again from the database.
 * No innerHTML with data: text goes through textContent; cards are server-rendered HTML.
 */
(function () {
  "use strict";

  const L = window.clipwatch;
  const root = document.getElementById("wall");
  if (!L || !window.Chart || !root) return;

  const ACTIVE = ["queued", "running"];
  const POLL_MS = parseInt(root.dataset.pollMs, 10) || 3000;
  const FETCH_TIMEOUT_MS = 10000;
  const FRAME_EVERY_MS = 1000; // at most one image request per card and second
  const items = new Map(); // analysis id -> its card's controller
  const fetching = new Set(); // camera ids whose card is being fetched
  let order = []; // camera ids in page order, as the last poll listed them

  const role = (el, name) => el.querySelector(`[data-role="${name}"]`);

  function badge(cls, text) {
    const span = document.createElement("span");
    span.className = `badge ${cls}`;
    span.textContent = text;
    return span;
  }

  // --- One analysis of a card -------------------------------------------------------------

  function setupItem(li) {
    const id = Number(li.dataset.analysis);
    const canvas = li.querySelector(".mini-chart canvas");
    if (!canvas || items.has(id)) return;
    const card = li.closest(".card.camera");
    const r = (name) => role(li, name);
    const stateEl = r("live-state");
    const img = r("frame");
    const placeholder = r("frame-placeholder");
    let threshold = parseFloat(li.dataset.threshold);
    let useClock = false;
    let started = li.dataset.started || null; // the run the card shows (started_at)
    // Two exact lower bounds of the frames scored; the card shows the larger. Adding what
    // one channel says to what the other said would count a score twice (a poll can read
    // a score the socket has not delivered yet).
    let polledFrames = parseInt(li.dataset.frames, 10) || 0; // frames_scored, last poll
    let socketFrames = 0; // the socket's snapshot summary, plus the scores since
    let frameIndex = li.dataset.frameIndex === "" ? null : Number(li.dataset.frameIndex);
    let scoreIndex = frameIndex; // frame index of the score shown
    let progressValue = -1;
    let scored = null;
    let expected = null;
    let conn = null;
    let pendingFrame = null;
    let frameTimer = null;
    let lastSwap = 0;
    const chart = L.scoreChart(canvas, {
      threshold,
      window: parseInt(li.dataset.window, 10) || 60,
      compact: true,
    });

    // The latest frame: forward only, throttled, the placeholder until one loads.
    if (img) {
      img.addEventListener("load", () => {
        img.hidden = false;
        if (placeholder) placeholder.hidden = true;
      });
      img.addEventListener("error", () => {
        img.hidden = true; // not written yet (404), or gone
        if (placeholder) placeholder.hidden = false;
      });
    }

    function swapFrame() {
      frameTimer = null;
      if (!img || pendingFrame === null) return;
      lastSwap = Date.now();
      img.src = pendingFrame;
      pendingFrame = null;
    }

    function showFrame(url, index) {
      if (typeof url !== "string" || !url) return;
      if (typeof index === "number" && frameIndex !== null && index <= frameIndex) return;
      if (typeof index === "number") frameIndex = index;
      pendingFrame = url;
      const wait = lastSwap + FRAME_EVERY_MS - Date.now();
      if (wait <= 0) swapFrame();
      else if (frameTimer === null) frameTimer = window.setTimeout(swapFrame, wait);
    }

    function clearFrame() {
      frameIndex = null;
      pendingFrame = null;
      if (frameTimer !== null) window.clearTimeout(frameTimer);
      frameTimer = null;
      if (img) {
        img.hidden = true;
        img.removeAttribute("src");
      }
      if (placeholder) placeholder.hidden = false;
    }

    function setScore(score, learning, index) {
      if (typeof score !== "number") return;
      if (typeof index === "number") scoreIndex = index;
      const holder = r("score");
      if (holder) {
        const text = document.createElement("span");
        text.textContent = `last score ${L.scoreText(score, threshold)}`;
        holder.replaceChildren(text, " ", L.scoreBadge(score, threshold, learning));
      }
      const overlay = r("frame-score");
      if (overlay) {
        overlay.textContent = L.scoreText(score, threshold);
        overlay.classList.toggle("is-anomaly", !learning && score >= threshold);
        overlay.hidden = false;
      }
    }

    function clearScore() {
      scoreIndex = null;
      const holder = r("score");
      if (holder) holder.replaceChildren();
      const overlay = r("frame-score");
      if (overlay) overlay.hidden = true;
    }

    function showCount() {
      const n = Math.max(polledFrames, socketFrames);
      const el = r("frames");
      if (!el) return;
      el.dataset.count = String(n);
      el.textContent = `${n} frame${n === 1 ? "" : "s"} scored`;
    }

    function setProgress(value, msg = {}, force = false) {
      if (typeof msg.scored === "number") scored = msg.scored;
      if (typeof msg.expected === "number") expected = msg.expected;
      if (typeof value !== "number" || (!force && value < progressValue)) return;
      progressValue = value;
      const pct = Math.round(Math.max(0, Math.min(1, value)) * 100);
      const bar = r("progress");
      if (bar) bar.value = pct;
      const text = r("progress-text");
      if (text) text.textContent = L.progressText(pct, scored, expected, " done");
    }

    // A file's progress bar exists while it is queued or running (as the page renders it).
    function syncBar(status) {
      const line = li.querySelector(".progress-line");
      if (!line) return;
      const bar = r("progress");
      if (ACTIVE.includes(status) && !bar) {
        const fresh = document.createElement("progress");
        fresh.max = 100;
        fresh.value = Math.max(0, Math.round(progressValue * 100));
        fresh.dataset.role = "progress";
        line.prepend(fresh, " ");
      } else if (!ACTIVE.includes(status) && bar) {
        bar.remove();
      }
    }

    function setStatus(status) {
      if (typeof status !== "string") return;
      li.dataset.status = status;
      L.setStatusBadge(r("analysis-status"), status);
      syncBar(status);
      if (!ACTIVE.includes(status)) setPhase("");
    }

    function setPhase(phase) {
      const el = r("phase");
      if (!el || typeof phase !== "string") return;
      el.textContent = phase;
      el.hidden = !phase;
    }

    function setError(text) {
      const el = r("analysis-error");
      if (!el || typeof text !== "string") return;
      el.textContent = text;
      el.hidden = !text;
    }

    function setThreshold(value) {
      if (typeof value !== "number" || value === threshold) return;
      threshold = value;
      chart.setThreshold(value);
    }

    // A new run: nothing of the old one stays on the card.
    function reset(count) {
      chart.replace([]);
      clearScore();
      clearFrame();
      polledFrames = typeof count === "number" ? count : 0;
      socketFrames = 0;
      showCount();
      progressValue = -1;
      scored = null;
    }

    // A status message from the socket. The camera's error is left to the poll, which
    // shows it as the server redacted it.
    function applyStatus(msg) {
      setStatus(msg.status);
      if (typeof msg.phase === "string") setPhase(msg.phase);
      if (msg.status === "failed" && typeof msg.error_message === "string") {
        setError(msg.error_message);
      } else if (typeof msg.status === "string") {
        setError("");
      }
      if (typeof msg.camera_status === "string" && card && card.dataset.live === "true") {
        L.setStatusBadge(role(card, "camera-status"), msg.camera_status);
      }
      setProgress(msg.progress);
    }

    const points = (scores) => scores.map((s) => L.toPoint(s, useClock));

    function closeSocket() {
      if (conn) conn.close();
      conn = null;
      if (stateEl) stateEl.hidden = true;
    }

    function openSocket() {
      if (conn) return;
      conn = L.connect(li.dataset.wsUrl, {
        onState(state, detail) {
          L.showState(stateEl, state, detail);
          if (stateEl) stateEl.hidden = state === "live" || state === "connecting";
        },
        onSnapshot(msg, append) {
          useClock = Boolean(msg.is_live);
          if (typeof msg.expected_frames === "number") expected = msg.expected_frames;
          if (typeof msg.threshold === "number") setThreshold(msg.threshold);
          const summary = msg.summary || {};
          if (typeof summary.frames_scored === "number") scored = summary.frames_scored;
          // The count as stored when the snapshot was read (its scores included).
          if (typeof summary.frames_scored === "number") socketFrames = summary.frames_scored;
          else if (append) socketFrames += msg.scores.length;
          showCount();
          if (append) {
            chart.add(points(msg.scores));
          } else {
            chart.replace(points(msg.scores));
            if (!msg.scores.length) {
              clearScore();
              if (!msg.frame_url) clearFrame();
            }
          }
          if (msg.scores.length) {
            const last = msg.scores[msg.scores.length - 1];
            setScore(last.score, last.learning, last.frame_index);
          }
          if (msg.frame_url) {
            const v = Number(new URL(msg.frame_url, window.location.href).searchParams.get("v"));
            showFrame(msg.frame_url, Number.isFinite(v) ? v : undefined);
          }
          applyStatus(msg);
          if (!ACTIVE.includes(msg.status)) closeSocket();
        },
        onScore(msg) {
          // In order and gap-free: live.js resyncs a score that follows an empty snapshot
          // (or any gap) before handing it on.
          setThreshold(msg.threshold); // the threshold in use changes once derived
          chart.add(points([msg]));
          setScore(msg.score, msg.learning, msg.frame_index);
          socketFrames += 1;
          showCount();
          // The score of the frame the picture now shows carries its URL.
          if (msg.frame_url) showFrame(msg.frame_url, msg.frame_index);
        },
        onMessage(msg) {
          if (msg.type === "status") {
            if (msg.reset) reset(0); // live.js fetches the new run's snapshot
            applyStatus(msg);
            if (typeof msg.status === "string" && !ACTIVE.includes(msg.status)) closeSocket();
          } else if (msg.type === "progress") {
            setProgress(msg.progress, msg);
          }
        },
      });
    }

    // What the status poll read from the database.
    function applyPoll(a) {
      const newRun =
        a.frames_scored < polledFrames || (started !== null && a.started_at !== started);
      started = a.started_at;
      polledFrames = a.frames_scored;
      if (newRun) {
        reset(a.frames_scored);
        closeSocket(); // reopened below on the new run: its snapshot redraws the chart
      }
      setThreshold(a.threshold);
      setStatus(a.status);
      setPhase(a.phase);
      setError(a.error_message);
      showCount();
      if (typeof a.last_frame_index === "number") {
        if (scoreIndex === null || a.last_frame_index > scoreIndex) {
          setScore(a.last_score, false, a.last_frame_index);
        }
        showFrame(a.frame_url, a.last_frame_index);
      }
      setProgress(a.progress, { scored: a.frames_scored, expected: a.expected_frames });
      // Active: live scores. A new run: its snapshot redraws the chart (then it closes).
      if (newRun || ACTIVE.includes(a.status)) openSocket();
    }

    items.set(id, {
      applyPoll,
      destroy() {
        closeSocket();
        if (frameTimer !== null) window.clearTimeout(frameTimer);
        chart.chart.destroy();
        items.delete(id);
      },
    });
    openSocket(); // its snapshot fills the chart; inactive analyses then close it
  }

  function setupCard(card) {
    for (const li of card.querySelectorAll("li.analysis-item[data-ws-url]")) {
      try {
        setupItem(li);
      } catch (err) {
        console.error("clipwatch: live card failed", err); // the other cards still work
      }
    }
  }

  function destroyCard(card) {
    for (const li of card.querySelectorAll("li.analysis-item[data-analysis]")) {
      const item = items.get(Number(li.dataset.analysis));
      if (item) item.destroy();
    }
  }

  // --- Cameras: appear, change, go ----------------------------------------------------------

  function cardsList() {
    let list = role(root, "cards");
    if (!list) {
      list = document.createElement("ul");
      list.className = "cards";
      list.dataset.role = "cards";
      role(root, "empty").before(list);
    }
    return list;
  }

  function syncEmpty() {
    const empty = role(root, "empty");
    const any = root.querySelector("li.card.camera");
    if (empty) empty.hidden = Boolean(any);
  }

  function insertCard(card) {
    const list = cardsList();
    const at = order.indexOf(Number(card.dataset.camera));
    for (const id of order.slice(at + 1)) {
      const next = document.getElementById(`camera-${id}`);
      if (next && next !== card) {
        next.before(card);
        return;
      }
    }
    list.append(card);
  }

  function fetchCard(camera) {
    if (fetching.has(camera.id)) return;
    fetching.add(camera.id);
    fetch(camera.card_url, { credentials: "same-origin", cache: "no-store" })
      .then((response) => {
        if (response.status === 404) return null; // gone meanwhile: the next poll drops it
        if (!response.ok) throw new Error(`card ${camera.id}: HTTP ${response.status}`);
        return response.text();
      })
      .then((html) => {
        if (html === null || !order.includes(camera.id)) return;
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.querySelector("li.card.camera");
        if (!fresh) return;
        const old = document.getElementById(`camera-${camera.id}`);
        const card = document.adoptNode(fresh);
        if (old) {
          destroyCard(old);
          old.replaceWith(card);
        } else {
          insertCard(card);
        }
        setupCard(card);
        syncEmpty();
      })
      .catch((err) => console.warn("clipwatch:", err))
      .finally(() => fetching.delete(camera.id));
  }

  function updateCamera(card, camera) {
    if (/^[a-z_]+$/.test(camera.state)) {
      role(card, "camera-status").replaceChildren(badge(`status-${camera.state}`, camera.state_label));
    }
    const streaming = role(card, "camera-streaming");
    if (streaming) {
      streaming.dataset.streaming = String(Boolean(camera.streaming));
      streaming.textContent = camera.streaming ? "Camera: streaming" : "Camera: no frames";
    }
    const last = role(card, "last-frame");
    if (last) {
      if (camera.last_frame_at) {
        const time = document.createElement("time");
        time.dateTime = camera.last_frame_at.iso;
        time.textContent = camera.last_frame_at.text;
        last.replaceChildren(time);
      } else {
        last.textContent = "never";
      }
    }
    const error = role(card, "camera-error");
    if (error) {
      error.textContent = camera.error || "";
      error.hidden = !camera.error;
    }
  }

  function apply(state) {
    const cameras = Array.isArray(state.cameras) ? state.cameras : [];
    order = cameras.map((c) => c.id);
    let previous = null;
    for (const camera of cameras) {
      const card = document.getElementById(`camera-${camera.id}`);
      if (!card || card.dataset.version !== camera.version) fetchCard(camera);
      if (!card) continue; // inserted once fetched
      card.dataset.live = String(Boolean(camera.is_live));
      // Keep the page order (a renamed camera moves).
      if (previous ? previous.nextElementSibling !== card : card.previousElementSibling) {
        if (previous) previous.after(card);
        else cardsList().prepend(card);
      }
      previous = card;
      updateCamera(card, camera);
      for (const analysis of camera.analyses) {
        const item = items.get(analysis.id);
        if (item) item.applyPoll(analysis);
      }
    }
    for (const card of root.querySelectorAll("li.card.camera")) {
      if (!order.includes(Number(card.dataset.camera))) {
        destroyCard(card); // deleted, or no longer shared: its sockets close too
        card.remove();
      }
    }
    syncEmpty();
  }

  // --- The status poll ----------------------------------------------------------------------

  const pageState = role(root, "page-state");
  const PAGE_TEXT = {
    live: "Page: connected",
    reconnecting: "Page: reconnecting…",
    denied: "Page: signed out, reload",
  };

  function setPage(state) {
    if (!pageState) return;
    pageState.dataset.state = state;
    pageState.textContent = PAGE_TEXT[state] || state;
  }

  let timer = null;
  let inFlight = false;

  function schedule() {
    if (timer === null && !inFlight && document.visibilityState === "visible") {
      timer = window.setTimeout(poll, POLL_MS);
    }
  }

  async function poll() {
    timer = null;
    if (inFlight || document.visibilityState !== "visible") return;
    inFlight = true;
    const abort = new AbortController();
    const limit = window.setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(root.dataset.stateUrl, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      if (response.status === 403) {
        setPage("denied");
      } else if (!response.ok) {
        throw new Error(`state: HTTP ${response.status}`);
      } else {
        apply(await response.json());
        setPage("live");
      }
    } catch (err) {
      setPage("reconnecting"); // the server is down or restarting: keep asking
    } finally {
      window.clearTimeout(limit);
      inFlight = false;
      schedule();
    }
  }

  // Hidden pages do not poll; one coming back asks at once.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    if (timer !== null) window.clearTimeout(timer);
    timer = null;
    poll();
  });

  for (const card of root.querySelectorAll("li.card.camera")) setupCard(card);
  poll();
})();
