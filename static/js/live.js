/* clipwatch live: the analysis websocket (reconnecting, gap-free) and the score chart.
 *
 * window.clipwatch.connect(path, handlers) opens ws(s)://<host><path>, reconnects with
 * capped exponential backoff and jitter, asks for `?after=<last frame index>` on reconnect,
 * and resyncs when a score's `previous` is not the last frame index held. Handlers:
 *   onSnapshot(msg, append)  scores to replace the chart with (append=false) or to add
 *   onScore(msg)             one new score, in order, never twice; `frame_url` when the
 *                            latest-frame picture now shows its frame (as in a snapshot)
 *   onMessage(msg)           status, progress, incident
 *   onState(state, detail)   connecting | live | reconnecting | denied | gone
 * No build step, no dependency but Chart.js (for scoreChart), no innerHTML with data.
 */
(function () {
  "use strict";

  const BASE_DELAY_MS = 500;
  const MAX_DELAY_MS = 15000;
  const CLOSE_FORBIDDEN = 4403;
  const CLOSE_NOT_FOUND = 4404;

  function socketUrl(path, after) {
    const url = new URL(path, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    if (after !== null) url.searchParams.set("after", String(after));
    return url.toString();
  }

  // Half fixed, half random: clients that lost the server together do not return together.
  function backoff(attempt) {
    const cap = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** Math.min(attempt, 10));
    return cap / 2 + Math.random() * (cap / 2);
  }

  function connect(path, handlers) {
    let ws = null;
    let timer = null;
    let attempt = 0;
    let stopped = false;
    let last = null; // frame_index of the newest score held
    let resyncing = false;

    const emit = (name, ...args) => {
      if (typeof handlers[name] === "function") handlers[name](...args);
    };

    function open() {
      timer = null;
      if (stopped) return;
      emit("onState", attempt ? "reconnecting" : "connecting", {});
      let socket;
      try {
        socket = new WebSocket(socketUrl(path, last));
      } catch (err) {
        // A malformed URL or a blocked scheme: retry later rather than break the page.
        const delay = backoff(attempt++);
        emit("onState", "reconnecting", { delay });
        timer = window.setTimeout(open, delay);
        return;
      }
      ws = socket;
      socket.addEventListener("message", (event) => {
        if (ws !== socket) return;
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        if (msg && typeof msg.type === "string") handle(msg);
      });
      socket.addEventListener("close", (event) => {
        if (ws !== socket) return; // an old socket we already replaced
        ws = null;
        resyncing = false;
        if (stopped) return;
        if (event.code === CLOSE_FORBIDDEN || event.code === CLOSE_NOT_FOUND) {
          stopped = true; // retrying cannot help; a reload (and a login) might
          emit("onState", event.code === CLOSE_FORBIDDEN ? "denied" : "gone", {});
          return;
        }
        const delay = backoff(attempt++);
        emit("onState", "reconnecting", { delay });
        timer = window.setTimeout(open, delay);
      });
    }

    // Start again from the newest window: the stored series was replaced (a re-run).
    function restart() {
      last = null;
      attempt = 0;
      if (ws) ws.close();
      else if (timer === null) open();
    }

    function handle(msg) {
      if (msg.type === "snapshot") {
        attempt = 0;
        resyncing = false;
        // A resync or reconnect snapshot holds exactly what we missed; a truncated one
        // skipped older scores, so it starts a new series.
        const append = Boolean(msg.resync) && !msg.truncated && last !== null;
        let scores = Array.isArray(msg.scores) ? msg.scores : [];
        if (append) scores = scores.filter((s) => s.frame_index > last);
        if (scores.length) last = scores[scores.length - 1].frame_index;
        else if (!append) last = null;
        emit("onState", "live", {});
        emit("onSnapshot", { ...msg, scores }, append);
        return;
      }
      if (msg.type === "score") {
        if (resyncing) return; // the resync snapshot will contain it
        const previous = msg.previous === undefined ? null : msg.previous;
        if (last !== null) {
          if (previous === null) return restart(); // the server holds nothing older
          if (msg.frame_index <= last) return; // already held (it came with a snapshot)
          if (previous > last) {
            resyncing = true;
            ws.send(JSON.stringify({ type: "resync", after: last }));
            return;
          }
          if (previous < last) return restart(); // the series went backwards
        } else if (previous !== null) {
          // We hold nothing (an empty snapshot) yet the server stored scores before this
          // one: they were published before we joined and lost. Ask for all of them.
          resyncing = true;
          ws.send(JSON.stringify({ type: "resync", after: -1 }));
          return;
        }
        last = msg.frame_index;
        emit("onScore", msg);
        return;
      }
      if (msg.type === "status" && msg.reset) restart();
      emit("onMessage", msg);
    }

    // Back online: no need to sit out the rest of a long backoff.
    window.addEventListener("online", () => {
      if (timer !== null) {
        window.clearTimeout(timer);
        open();
      }
    });

    open();
    return {
      close() {
        stopped = true;
        if (timer !== null) window.clearTimeout(timer);
        if (ws) ws.close(1000);
      },
      get lastFrameIndex() {
        return last;
      },
    };
  }

  // --- Small DOM helpers (textContent only) -------------------------------------------------

  const STATE_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    denied: "no access: reload the page",
    gone: "analysis not found",
  };

  function showState(el, state, detail) {
    if (!el) return;
    el.dataset.state = state;
    let text = STATE_TEXT[state] || state;
    if (state === "reconnecting" && detail && detail.delay) {
      text = `reconnecting in ${Math.ceil(detail.delay / 1000)} s…`;
    }
    el.textContent = text;
  }

  function label(value) {
    const text = String(value || "");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function badge(cls, text) {
    const span = document.createElement("span");
    span.className = `badge ${cls}`;
    span.textContent = text;
    return span;
  }

  // A status badge inside `holder`, e.g. <span class="badge status-running">Running</span>.
  function setStatusBadge(holder, status) {
    if (!holder || typeof status !== "string" || !/^[a-z_]+$/.test(status)) return;
    holder.replaceChildren(badge(`status-${status}`, label(status)));
  }

  // Learning frames are learned as normal and never judged against the threshold.
  function scoreBadge(score, threshold, learning) {
    if (learning) return badge("badge-learning", "Learning");
    return score >= threshold ? badge("badge-anomaly", "Anomaly") : badge("badge-normal", "Normal");
  }

  // A score beside its label: more digits where rounding would carry it across the
  // threshold (0.5997 at 0.6 reads "0.5997", never "0.600" beside "Normal").
  function scoreText(score, threshold, digits = 3) {
    let text = score.toFixed(digits);
    for (let more = digits + 1; more < 10; more++) {
      if (typeof threshold !== "number" || Number(text) >= threshold === score >= threshold) break;
      text = score.toFixed(more);
    }
    return text;
  }

  // A file analysis's progress: "16 of 80 frames (20%)" once the expected count is known.
  function progressText(pct, scored, expected, suffix = "") {
    if (typeof scored === "number" && typeof expected === "number" && expected > 0) {
      return `${scored} of ${expected} frames (${pct}%)`;
    }
    return `${pct}%${suffix}`;
  }

  function seconds(value) {
    if (Math.abs(value) < 60) return `${Number(value.toFixed(1))} s`;
    const total = Math.round(value);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  // --- The score chart -------------------------------------------------------------------------

  const COLORS = {
    line: "#1f6feb",
    anomaly: "#b42318",
    threshold: "#93370d",
    peak: "#6e1a11",
    grid: "#eaecf0",
    learning: "#98a2b3",
    learningBand: "rgba(152, 162, 179, 0.16)",
    incidentBand: "rgba(180, 35, 24, 0.12)",
    picked: "#101828",
  };

  // Fill the canvas white, so the downloaded PNG is not transparent.
  const whiteBackground = {
    id: "clipwatchBackground",
    beforeDraw(chart) {
      const { ctx, width, height } = chart;
      ctx.save();
      ctx.globalCompositeOperation = "destination-over";
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, width, height);
      ctx.restore();
    },
  };

  // A score as a chart point: x is wall-clock ms (live cameras) or seconds from the start;
  // l: learned as normal (never judged), p: the prompts' score, n: novelty (where present).
  function toPoint(score, useClock) {
    let x = score.time_s;
    if (useClock) x = score.captured_at ? Date.parse(score.captured_at) : Date.now();
    const point = { x, y: score.score, i: score.frame_index };
    // t: seconds from the start, which incident ranges use (x is the clock on live cameras).
    if (useClock && typeof score.time_s === "number") point.t = score.time_s;
    if (score.learning) point.l = true;
    if (typeof score.prompt_score === "number") point.p = score.prompt_score;
    if (typeof score.novelty === "number") point.n = score.novelty;
    return point;
  }

  // A grey band behind each run of learning points (chart.$learning holds the points).
  const learningBand = {
    id: "clipwatchLearning",
    beforeDatasetsDraw(chart) {
      const points = chart.$learning;
      if (!points || !points.length) return;
      const { ctx, chartArea, scales } = chart;
      ctx.save();
      ctx.fillStyle = COLORS.learningBand;
      let start = null;
      for (let k = 0; k <= points.length; k++) {
        const p = points[k];
        if (p && p.l) {
          if (start === null) start = k;
          continue;
        }
        if (start !== null) {
          // From the first learning point to the next judged one (or the last learning one).
          const x0 = scales.x.getPixelForValue(points[start].x);
          const x1 = scales.x.getPixelForValue((p || points[k - 1]).x);
          const left = Math.max(chartArea.left, Math.min(x0, x1));
          const right = Math.min(chartArea.right, Math.max(x0, x1));
          if (right > left) ctx.fillRect(left, chartArea.top, right - left, chartArea.bottom - chartArea.top);
          start = null;
        }
      }
      ctx.restore();
    },
  };

  // Incident ranges shaded behind the series (chart.$incidents: {start_time_s, end_time_s,
  // open}); an open incident runs to the newest point. On a clock axis, seconds from the
  // start become clock time through the newest point that has both (p.x - p.t * 1000).
  // The boxes drawn are kept in chart.$incidentBoxes ({id, left, right}: pixels).
  const incidentShading = {
    id: "clipwatchIncidents",
    beforeDatasetsDraw(chart) {
      const incidents = chart.$incidents;
      const points = chart.$learning;
      chart.$incidentBoxes = [];
      if (!incidents || !incidents.length || !points || !points.length) return;
      const clockAxis = Boolean(chart.$clock);
      let offset = 0;
      if (clockAxis) {
        const ref = [...points].reverse().find((p) => typeof p.t === "number");
        if (!ref) return;
        offset = ref.x - ref.t * 1000;
      }
      const toX = (t) => (clockAxis ? offset + t * 1000 : t);
      const newest = points[points.length - 1].x;
      const { ctx, chartArea, scales } = chart;
      ctx.save();
      ctx.fillStyle = COLORS.incidentBand;
      for (const inc of incidents) {
        if (typeof inc.start_time_s !== "number") continue;
        const open = inc.open || typeof inc.end_time_s !== "number";
        const x0 = scales.x.getPixelForValue(toX(inc.start_time_s));
        const x1 = scales.x.getPixelForValue(open ? Math.max(newest, toX(inc.start_time_s)) : toX(inc.end_time_s));
        let left = Math.max(chartArea.left, Math.min(x0, x1));
        let right = Math.min(chartArea.right, Math.max(x0, x1));
        if (right < chartArea.left || left > chartArea.right) continue; // out of the window
        if (right - left < 2) right = Math.min(chartArea.right, left + 2); // a one-frame incident
        if (right - left < 2) left = right - 2;
        ctx.fillRect(left, chartArea.top, right - left, chartArea.bottom - chartArea.top);
        chart.$incidentBoxes.push({ id: inc.id, left, right, open });
      }
      ctx.restore();
    },
  };

  // A dashed line at the point the user picked (chart.$picked: an x value).
  const pickedLine = {
    id: "clipwatchPicked",
    afterDatasetsDraw(chart) {
      if (typeof chart.$picked !== "number") return;
      const { ctx, chartArea, scales } = chart;
      const x = scales.x.getPixelForValue(chart.$picked);
      if (x < chartArea.left || x > chartArea.right) return;
      ctx.save();
      ctx.strokeStyle = COLORS.picked;
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(x, chartArea.top);
      ctx.lineTo(x, chartArea.bottom);
      ctx.stroke();
      ctx.restore();
    },
  };

  /* opts: threshold, window (points kept; 0 = all), compact, clock, peak ({x, y}),
   * onPick(point) (a click on the chart: the nearest score point, {x, y, i, ...}) */
  function scoreChart(canvas, opts) {
    let threshold = opts.threshold;
    const limit = opts.window || 0;
    const compact = Boolean(opts.compact);
    const points = [];
    const thresholdLine = [];
    const anomalous = (ctx) => Boolean(ctx.raw) && !ctx.raw.l && ctx.raw.y >= threshold;
    const learning = (ctx) => Boolean(ctx.raw) && Boolean(ctx.raw.l);
    const formatX = (v) => {
      if (!points.length) return ""; // no made-up axis before the first score
      return opts.clock ? clock(v) : seconds(v);
    };

    const datasets = [
      {
        label: "Anomaly score",
        data: points,
        parsing: false,
        borderColor: COLORS.line,
        borderWidth: compact ? 1.5 : 2,
        // Highlight anomalous points; plain ones vanish when there are many.
        pointRadius: (ctx) =>
          anomalous(ctx) ? (compact ? 2 : 3.5) : compact || points.length > 300 ? 0 : 2,
        pointBackgroundColor: (ctx) =>
          learning(ctx) ? COLORS.learning : anomalous(ctx) ? COLORS.anomaly : COLORS.line,
        pointBorderColor: (ctx) =>
          learning(ctx) ? COLORS.learning : anomalous(ctx) ? COLORS.anomaly : COLORS.line,
        segment: {
          borderColor: (ctx) => {
            const raw = points[ctx.p1DataIndex];
            if (raw && raw.l) return COLORS.learning;
            return ctx.p1.parsed.y >= threshold ? COLORS.anomaly : undefined;
          },
          borderDash: (ctx) => {
            const raw = points[ctx.p1DataIndex];
            return raw && raw.l ? [3, 3] : undefined;
          },
        },
      },
      {
        label: `Threshold ${threshold}`,
        data: thresholdLine,
        parsing: false,
        borderColor: COLORS.threshold,
        borderDash: [6, 4],
        borderWidth: 1,
        pointRadius: 0,
        pointHitRadius: 0,
      },
    ];
    if (opts.peak) {
      datasets.push({
        label: `Peak ${opts.peak.y.toFixed(3)}`,
        data: [{ x: opts.peak.x, y: opts.peak.y, i: opts.peak.i }],
        parsing: false,
        showLine: false,
        order: -1, // drawn on top of the series
        pointStyle: "triangle",
        pointRadius: 9,
        pointHoverRadius: 10,
        backgroundColor: COLORS.peak,
        borderColor: COLORS.peak,
        pointBackgroundColor: COLORS.peak,
        pointBorderColor: "#ffffff",
        pointBorderWidth: 1.5,
      });
    }

    // In the legend only: what the grey band means, once there is one.
    datasets.push({
      label: "Learning (never judged)",
      data: [],
      parsing: false,
      borderColor: COLORS.learning,
      backgroundColor: COLORS.learningBand,
      borderDash: [3, 3],
      borderWidth: 1,
      pointRadius: 0,
    });
    const learningDataset = datasets.length - 1;

    const chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets },
      plugins: [whiteBackground, learningBand, incidentShading, pickedLine],
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        onClick: opts.onPick ? (event, elements, c) => pick(event, c) : undefined,
        onHover: opts.onPick
          ? (event, elements, c) => {
              c.canvas.style.cursor = points.length ? "pointer" : "default";
            }
          : undefined,
        scales: {
          x: {
            type: "linear",
            grid: { display: !compact, color: COLORS.grid },
            title: { display: !compact, text: opts.clock ? "time" : "time from start" },
            ticks: { display: !compact, maxTicksLimit: 8, callback: formatX },
          },
          y: {
            min: 0,
            max: 1,
            grid: { color: COLORS.grid },
            title: { display: !compact, text: "anomaly score" },
            ticks: { display: !compact, stepSize: 0.2 },
          },
        },
        plugins: {
          legend: {
            display: !compact,
            labels: {
              boxHeight: 2,
              filter: (item) => item.datasetIndex !== learningDataset || points.some((p) => p.l),
            },
          },
          tooltip: {
            enabled: !compact,
            filter: (item) => item.datasetIndex !== 1 && item.datasetIndex !== learningDataset,
            callbacks: {
              title: (items) => (items.length ? formatX(items[0].raw.x) : ""),
              label: (item) => {
                const frame = item.raw.i === undefined ? "" : ` (frame ${item.raw.i})`;
                const lines = [`${item.dataset.label}: ${item.raw.y.toFixed(3)}${frame}`];
                if (typeof item.raw.p === "number") lines.push(`prompts: ${item.raw.p.toFixed(3)}`);
                if (typeof item.raw.n === "number") lines.push(`novelty: ${item.raw.n.toFixed(3)}`);
                if (item.raw.l) lines.push("learning: learned as normal, never judged");
                return lines;
              },
            },
          },
        },
      },
    });

    function syncThreshold() {
      thresholdLine.length = 0;
      if (points.length) {
        thresholdLine.push({ x: points[0].x, y: threshold });
        thresholdLine.push({ x: points[points.length - 1].x, y: threshold });
      }
    }

    chart.$learning = points;
    chart.$clock = Boolean(opts.clock);
    const incidents = [];
    chart.$incidents = incidents;

    // The score point nearest to a click along x (the series or the peak marker).
    function pick(event, c) {
      const found = c.getElementsAtEventForMode(event, "nearest", { axis: "x", intersect: false }, true);
      const hit = found.find((e) => e.datasetIndex === 0 || (opts.peak && e.datasetIndex === 2));
      const raw = hit ? c.data.datasets[hit.datasetIndex].data[hit.index] : null;
      if (!raw || raw.i === undefined) return;
      c.$picked = raw.x;
      c.update("none");
      opts.onPick(raw);
    }

    function add(list) {
      for (const p of list) {
        if (Number.isFinite(p.x) && Number.isFinite(p.y)) points.push(p);
      }
      if (limit && points.length > limit) points.splice(0, points.length - limit);
      syncThreshold();
      chart.update("none");
    }

    return {
      chart,
      add,
      replace(list) {
        points.length = 0;
        add(list);
      },
      // Incident ranges to shade: replace them all, or add/update one (by id).
      setIncidents(list) {
        incidents.length = 0;
        for (const inc of list || []) if (inc && Number.isInteger(inc.id)) incidents.push(inc);
        chart.update("none");
      },
      upsertIncident(inc) {
        if (!inc || !Number.isInteger(inc.id)) return;
        const at = incidents.findIndex((held) => held.id === inc.id);
        if (at >= 0) incidents[at] = inc;
        else incidents.push(inc);
        chart.update("none");
      },
      // Mark the point picked from outside (e.g. a link), by its x value.
      pickX(x) {
        chart.$picked = x;
        chart.update("none");
      },
      setThreshold(value) {
        if (!Number.isFinite(value) || value === threshold) return;
        threshold = value;
        datasets[1].label = `Threshold ${value}`;
        syncThreshold();
        chart.update("none");
      },
    };
  }

  function downloadPNG(chart, filename) {
    const link = document.createElement("a");
    link.href = chart.toBase64Image("image/png", 1);
    link.download = filename;
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  window.clipwatch = {
    connect,
    showState,
    setStatusBadge,
    scoreBadge,
    scoreText,
    progressText,
    scoreChart,
    toPoint,
    downloadPNG,
    seconds,
  };
})();
