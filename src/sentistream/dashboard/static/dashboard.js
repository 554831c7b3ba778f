// sentistream dashboard. Posts are untrusted: every value from a record reaches the page
// through textContent, element attributes or CSSOM properties, never as HTML; and each is shown
// in its own <bdi> (or an element styled unicode-bidi: isolate), so a U+202E in a post cannot
// turn the text around it.
"use strict";

(function () {
  const MAX_POSTS = 200;          // feed items kept in the page
  const MINUTES = 30;             // chart width in minutes
  const KNOWN = { negative: "#d92d20", neutral: "#98a2b3", positive: "#039855" };
  const PALETTE = ["#2e90fa", "#7a5af8", "#ee46bc", "#f79009", "#15b79e", "#667085"];

  const $ = (id) => document.getElementById(id);
  const state = {
    counts: new Map(),            // "task\u0000label" -> n
    minutes: new Map(),           // "YYYY-MM-DDTHH:MM" -> Map(label -> n)
    labels: [],                   // primary-task labels in first-seen order
    latencies: [],                // last record latencies (ms)
    received: 0,
    lastStats: null,
    primaryTask: "",              // the model's primary task, from the stats events
  };

  function colour(label) {
    if (Object.prototype.hasOwnProperty.call(KNOWN, label)) return KNOWN[label];
    let h = 0;
    for (const ch of String(label)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // An untrusted value as isolated text: its direction controls stay inside.
  function u(text) {
    const node = document.createElement("bdi");
    node.textContent = String(text);
    return node;
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }

  // -- records -----------------------------------------------------------------------------
  function bump(map, key, by) { map.set(key, (map.get(key) || 0) + by); }

  function addLabel(label) {
    if (state.labels.includes(label)) return;
    state.labels.push(label);
    const opt = el("option", null, label);
    opt.value = label;
    $("filter-label").appendChild(opt);
    renderLegend();
  }

  function onRecord(rec) {
    if (!rec || typeof rec !== "object") return;
    const label = String(rec.label);
    addLabel(label);
    bump(state.counts, "primary\u0000" + label, 1);
    const tasks = rec.tasks && typeof rec.tasks === "object" ? rec.tasks : {};
    for (const [task, value] of Object.entries(tasks)) {
      if (value && typeof value === "object") bump(state.counts, task + "\u0000" + String(value.label), 1);
    }
    const minute = typeof rec.processed_at === "string" ? rec.processed_at.slice(0, 16) : "";
    if (minute) {
      if (!state.minutes.has(minute)) state.minutes.set(minute, new Map());
      bump(state.minutes.get(minute), label, 1);
      if (state.minutes.size > MINUTES * 4) {
        const oldest = [...state.minutes.keys()].sort()[0];
        state.minutes.delete(oldest);
      }
    }
    if (typeof rec.latency_ms === "number") {
      state.latencies.push(rec.latency_ms);
      if (state.latencies.length > 200) state.latencies.shift();
    }
    state.received += 1;
    addPost(rec, label, tasks);
    scheduleRender();
  }

  function addPost(rec, label, tasks) {
    const item = el("li", "post");
    item.dataset.label = label;
    item.dataset.text = String(rec.text || "").toLowerCase();
    item.style.borderLeftColor = colour(label);
    item.appendChild(el("div", "post-text", rec.text === undefined ? "" : rec.text));
    const meta = el("div", "post-meta");
    const lab = el("span", "post-label");
    lab.append(u(label), " " + fmt(rec.score, 3));
    lab.style.color = colour(label);
    meta.appendChild(lab);
    if (rec.scores && typeof rec.scores === "object") {
      const scores = el("span", "post-scores");
      Object.entries(rec.scores).forEach(([k, v], i) => {
        scores.append(i ? " · " : "", u(k), " " + fmt(v, 2));
      });
      meta.appendChild(scores);
    }
    for (const [task, value] of Object.entries(tasks)) {
      if (value && typeof value === "object") {
        const span = el("span", "post-task");
        span.append(u(task), ": ", u(value.label), " " + fmt(value.score, 2));
        meta.appendChild(span);
      }
    }
    const id = el("span", "post-id");
    id.append("id ", u(rec.id));
    meta.appendChild(id);
    if (typeof rec.processed_at === "string") meta.appendChild(el("span", "post-time", rec.processed_at));
    item.appendChild(meta);
    item.hidden = !matches(item);
    const feed = $("feed");
    feed.insertBefore(item, feed.firstChild);
    while (feed.childElementCount > MAX_POSTS) feed.removeChild(feed.lastElementChild);
  }

  // -- filters -----------------------------------------------------------------------------
  function matches(item) {
    const text = $("filter-text").value.trim().toLowerCase();
    const label = $("filter-label").value;
    return (!label || item.dataset.label === label) && (!text || item.dataset.text.includes(text));
  }

  function applyFilters() {
    for (const item of $("feed").children) item.hidden = !matches(item);
  }

  // -- rendering ---------------------------------------------------------------------------
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  function render() {
    $("received").textContent = String(state.received);
    if (state.latencies.length) {
      const mean = state.latencies.reduce((a, b) => a + b, 0) / state.latencies.length;
      $("latency").textContent = fmt(mean, 1);
    }
    renderCounts();
    renderChart();
  }

  function renderCounts() {
    const body = $("counts").tBodies[0];
    const rows = [...state.counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    body.replaceChildren(...rows.map(([key, n]) => {
      const [task, label] = key.split("\u0000");
      const tr = el("tr");
      const name = task === "primary" && state.primaryTask ? state.primaryTask : task;
      tr.append(el("td", null, name), el("td", null, label), el("td", null, n));  // cells isolate (CSS)
      return tr;
    }));
  }

  function renderLegend() {
    $("legend").replaceChildren(...state.labels.map((label) => {
      const item = el("span");
      const sw = el("span", "swatch");
      sw.style.background = colour(label);
      item.append(sw, u(label));
      return item;
    }));
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function renderChart() {
    const chart = $("chart");
    const minutes = [...state.minutes.keys()].sort().slice(-MINUTES);
    const totals = minutes.map((m) => [...state.minutes.get(m).values()].reduce((a, b) => a + b, 0));
    const peak = Math.max(1, ...totals);
    const width = 1080, height = 200, gap = 2;
    const bar = width / MINUTES;
    const nodes = [];
    let plotted = 0;
    minutes.forEach((m, i) => {
      const x = (MINUTES - minutes.length + i) * bar;
      let y = height;
      for (const label of state.labels) {
        const n = state.minutes.get(m).get(label) || 0;
        if (!n) continue;
        plotted += n;
        const h = (n / peak) * (height - 16);
        y -= h;
        const rect = svg("rect", { x: x + gap / 2, y: y, width: bar - gap, height: h, fill: colour(label) });
        rect.dataset.minute = m;
        rect.dataset.label = label;
        const title = svg("title", {});
        title.textContent = m.slice(11) + " " + label + ": " + n;
        rect.appendChild(title);
        nodes.push(rect);
      }
    });
    if (minutes.length) {  // time of the newest minute at the right, the oldest at its bar
      const last = svg("text", { x: width - 2, y: 12, "font-size": 11, fill: "#667085", "text-anchor": "end" });
      last.textContent = minutes[minutes.length - 1].slice(11) + " UTC";
      nodes.push(last);
      const x0 = (MINUTES - minutes.length) * bar;
      if (minutes.length > 4) {
        const first = svg("text", { x: x0 + 2, y: 12, "font-size": 11, fill: "#667085" });
        first.textContent = minutes[0].slice(11);
        nodes.push(first);
      }
    }
    chart.replaceChildren(...nodes);
    chart.dataset.total = String(plotted);
    chart.dataset.minutes = String(minutes.length);
  }

  // -- stats -------------------------------------------------------------------------------
  function onStats(s) {
    const model = s.model || {};
    $("model").replaceChildren("model: ", u(model.name || "?"), " v", u(model.version || "?"));
    if (s.feed) $("feed-name").replaceChildren("feed: ", u(s.feed));
    else $("feed-name").textContent = "feed: none (server stats only)";
    $("processed").textContent = String(s.processed || 0);
    const now = performance.now();
    if (state.lastStats && typeof s.processed === "number") {
      const dt = (now - state.lastStats.at) / 1000;
      if (dt > 0) $("throughput").textContent = fmt((s.processed - state.lastStats.processed) / dt, 1);
    }
    state.lastStats = { at: now, processed: s.processed || 0 };
    if (!state.latencies.length && typeof s.latency_ms === "number") $("latency").textContent = fmt(s.latency_ms, 1);
    if (typeof s.primary_task === "string" && s.primary_task !== state.primaryTask) {
      state.primaryTask = s.primary_task;
      renderCounts();
    }
    renderDrift(s.drift);
  }

  function renderDrift(d) {
    const flag = $("drift-flag");
    const body = $("drift").tBodies[0];
    if (!d) {
      flag.dataset.drifted = "unknown";
      flag.textContent = "drift: not monitored";
      body.replaceChildren();
      $("drift-note").textContent = "No drift monitor here: the stream worker measures drift " +
        "when its model's manifest has a reference_profile (sentistream profile).";
      return;
    }
    flag.dataset.drifted = String(Boolean(d.drifted));
    flag.textContent = d.drifted ? "DRIFT: " + (d.drifted_features || []).join(", ") : "drift: none";
    body.replaceChildren(...Object.entries(d.psi || {}).map(([feature, value]) => {
      const tr = el("tr");
      const over = typeof value === "number" && value > d.threshold;
      const stateCell = el("td", over ? "drifted" : null, d.samples < d.min_samples ? "warming up" : over ? "drifted" : "ok");
      tr.append(el("td", null, feature), el("td", null, fmt(value, 3)), stateCell);
      return tr;
    }));
    $("drift-note").textContent = "threshold " + fmt(d.threshold, 2) + ", window " + d.samples + "/" + d.window +
      " posts (flag from " + d.min_samples + "), mean confidence " + fmt(d.mean_confidence, 3) +
      " (reference " + fmt(d.reference_mean_confidence, 3) + ")";
  }

  // -- connection --------------------------------------------------------------------------
  function connect() {
    const source = new EventSource("dashboard/events");
    const status = $("status");
    source.addEventListener("open", () => { status.dataset.state = "live"; status.textContent = "live"; });
    source.addEventListener("error", () => {
      status.dataset.state = "error";
      status.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting";
    });
    source.addEventListener("record", (event) => {
      try { onRecord(JSON.parse(event.data)); } catch (err) { /* a bad record is skipped */ }
    });
    source.addEventListener("stats", (event) => {
      try { onStats(JSON.parse(event.data)); } catch (err) { /* keep the last stats */ }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("filter-text").addEventListener("input", applyFilters);
    $("filter-label").addEventListener("change", applyFilters);
    connect();
  });
})();
