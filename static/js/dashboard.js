/* The dashboard: a small live chart per analysis, status badges and progress kept current.
 *
 * Every analysis gets one socket. Queued and running ones stay connected; the others close
 * after the first snapshot, which is all their chart needs (the last window of scores).
 */
(function () {
  "use strict";

  const L = window.clipwatch;
  if (!L || !window.Chart) return;

  const ACTIVE = ["queued", "running"];

  function setup(item) {
    const canvas = item.querySelector(".mini-chart canvas");
    if (!canvas) return;
    const card = item.closest(".card.camera");
    const role = (name) => item.querySelector(`[data-role="${name}"]`);
    const stateEl = role("live-state");
    let threshold = parseFloat(item.dataset.threshold);
    let useClock = false;
    const chart = L.scoreChart(canvas, {
      threshold,
      window: parseInt(item.dataset.window, 10) || 60,
      compact: true,
    });

    function setScore(msg) {
      const holder = role("score");
      const score = msg.score;
      if (!holder || typeof score !== "number") return;
      const text = document.createElement("span");
      text.textContent = `last score ${L.scoreText(score, threshold)}`;
      holder.replaceChildren(text, " ", L.scoreBadge(score, threshold, msg.learning));
    }

    function countFrames(n) {
      const frames = role("frames");
      if (!frames) return;
      const total = (parseInt(frames.dataset.count, 10) || 0) + n;
      frames.dataset.count = String(total);
      frames.textContent = `${total} frame${total === 1 ? "" : "s"} scored`;
    }

    let scored = null;
    let expected = null;

    function setProgress(value, msg = {}) {
      if (typeof msg.scored === "number") scored = msg.scored;
      if (typeof msg.expected === "number") expected = msg.expected;
      if (typeof value !== "number") return;
      const pct = Math.round(Math.max(0, Math.min(1, value)) * 100);
      const bar = role("progress");
      if (bar) bar.value = pct;
      const text = role("progress-text");
      if (text) text.textContent = L.progressText(pct, scored, expected, " done");
    }

    function applyStatus(msg) {
      if (typeof msg.status === "string") {
        item.dataset.status = msg.status;
        L.setStatusBadge(role("analysis-status"), msg.status);
      }
      if (typeof msg.camera_status === "string" && card) {
        L.setStatusBadge(card.querySelector('[data-role="camera-status"]'), msg.camera_status);
      }
      setProgress(msg.progress);
    }

    const points = (scores) => scores.map((s) => L.toPoint(s, useClock));
    const conn = L.connect(item.dataset.wsUrl, {
      onState(state, detail) {
        L.showState(stateEl, state, detail);
        if (stateEl) stateEl.hidden = state === "live" || state === "connecting";
      },
      onSnapshot(msg, append) {
        useClock = Boolean(msg.is_live);
        if (typeof msg.expected_frames === "number") expected = msg.expected_frames;
        if (msg.summary && typeof msg.summary.frames_scored === "number") {
          scored = msg.summary.frames_scored;
        }
        if (typeof msg.threshold === "number") {
          threshold = msg.threshold;
          chart.setThreshold(threshold);
        }
        if (append) {
          chart.add(points(msg.scores));
          countFrames(msg.scores.length);
        } else {
          chart.replace(points(msg.scores));
        }
        if (msg.scores.length) setScore(msg.scores[msg.scores.length - 1]);
        applyStatus(msg);
        if (!ACTIVE.includes(msg.status)) conn.close();
      },
      onScore(msg) {
        // The threshold in use changes once an automatic one is derived.
        if (typeof msg.threshold === "number" && msg.threshold !== threshold) {
          threshold = msg.threshold;
          chart.setThreshold(threshold);
        }
        chart.add(points([msg]));
        setScore(msg);
        countFrames(1);
      },
      onMessage(msg) {
        if (msg.type === "status") {
          applyStatus(msg);
          if (typeof msg.status === "string" && !ACTIVE.includes(msg.status)) conn.close();
        } else if (msg.type === "progress") setProgress(msg.progress, msg);
      },
    });
  }

  for (const item of document.querySelectorAll("li.analysis-item[data-ws-url]")) {
    try {
      setup(item);
    } catch (err) {
      console.error("clipwatch: live chart failed", err); // the other cards still work
    }
  }
})();
