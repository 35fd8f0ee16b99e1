// The balancer's dashboard: polls the admin API every 2 s and draws what it answers.
// Everything from the API is data, written with textContent and DOM calls, never as HTML:
// backend names come from a config file and are treated as hostile.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const TOKEN_KEY = "balancer.admin.token"; // sessionStorage only: gone with the tab
  const ACTIONS = [["drain", "draining"], ["disable", "disabled"], ["enable", "enabled"]];
  const STATES = new Set(["healthy", "unhealthy", "draining", "disabled"]);
  const BREAKERS = new Set(["closed", "half-open", "open"]);
  const COLOURS = 8; // .line-0 ... .line-7 in style.css
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_S = 300; // what GET /series keeps
  const MIN_SPAN_S = 10; // the narrowest a chart's time axis gets
  const CHARTS = [
    { key: "rate", title: "requests per second", unit: " req/s", floor: 1, scale: 1 },
    { key: "error_ratio", title: "5xx ratio", unit: " %", floor: 1, scale: 100 },
    { key: "p95_ms", title: "p95 latency", unit: " ms", floor: 1, scale: 1 },
    { key: "p99_ms", title: "p99 latency", unit: " ms", floor: 1, scale: 1 },
  ];

  const byId = (id) => document.getElementById(id);
  const rows = new Map(); // backend name -> its table row's cells
  const colours = new Map(); // series name -> colour index, kept once given
  let token = readToken();
  let timer = null;
  let polling = false;
  let again = false; // a poll asked for while one is on its way (after an action)

  class Unauthorised extends Error {}

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function keepToken(value) {
    token = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // no storage (a sandboxed frame): the token lasts as long as the page
    }
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  // One admin call: {status, body}; throws Unauthorised on a 401, an Error when there is no
  // answer within TIMEOUT_MS.
  async function call(path, method = "GET") {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        method,
        headers,
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
        signal: controller.signal,
      });
      if (response.status === 401) throw new Unauthorised();
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      return { status: response.status, body };
    } finally {
      clearTimeout(timeout);
    }
  }

  function notice(text) {
    const node = byId("notice");
    node.textContent = text;
    node.hidden = !text;
  }

  // ---------------------------------------------------------------------------------------
  // The token form

  function askForToken() {
    const refused = token !== "";
    keepToken("");
    clearTimeout(timer);
    notice("");
    byId("token-error").textContent = refused ? "That token was refused: try again." : "";
    byId("token-form").hidden = false;
    byId("token-input").focus();
    if (rows.size === 0) byId("backends-empty").firstChild.textContent = "waiting for the token…";
  }

  function tokenGiven(event) {
    event.preventDefault(); // the form never submits: the token never goes in a URL
    const input = byId("token-input");
    const value = input.value.trim();
    if (!value) return;
    input.value = "";
    keepToken(value);
    byId("token-form").hidden = true;
    byId("token-error").textContent = "";
    poll();
  }

  // ---------------------------------------------------------------------------------------
  // Polling

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    clearTimeout(timer);
    try {
      const paths = ["status", "series", "alerts", "sticky"];
      const answers = await Promise.allSettled(paths.map((path) => call(path)));
      if (answers.some((a) => a.status === "rejected" && a.reason instanceof Unauthorised)) {
        askForToken(); // polling starts again once a token is given
        return;
      }
      const [status, series, alerts, sticky] = answers.map((a) =>
        a.status === "fulfilled" ? a.value : null
      );
      try {
        show(status, series, alerts, sticky);
      } catch (error) {
        notice("reconnecting… (an answer the page did not expect: " + error.message + ")");
      }
      schedule();
    } finally {
      polling = false;
      if (again) {
        again = false;
        if (byId("token-form").hidden) poll();
      }
    }
  }

  function show(status, series, alerts, sticky) {
    if (!status || status.status !== 200 || !status.body || !Array.isArray(status.body.backends)) {
      const why = status && status.body && typeof status.body.error === "string"
        ? status.body.error
        : status ? "GET /status answered " + status.status : "the admin API does not answer";
      notice("reconnecting… (" + why + ")");
      return; // what was shown stays until an answer comes
    }
    notice("");
    const counts = sticky && sticky.status === 200 && sticky.body ? sticky.body.by_backend : null;
    if (sticky && (sticky.status === 200 || sticky.status === 404)) {
      showSticky(sticky.status === 200);
    }
    showSummary(status.body);
    showBackends(status.body.backends, counts);
    if (alerts && (alerts.status === 200 || alerts.status === 404)) {
      showAlerts(alerts.status === 200 && alerts.body ? alerts.body.firing : null);
    }
    if (series && series.status === 200 && series.body && Array.isArray(series.body.times)) {
      showCharts(series.body);
    }
    byId("updated").textContent = new Date().toLocaleTimeString();
  }

  // ---------------------------------------------------------------------------------------
  // The summary and the backends

  function duration(seconds) {
    const s = Math.floor(Number(seconds) || 0);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function percent(fraction) {
    return typeof fraction === "number" ? (fraction * 100).toFixed(0) + " %" : "–";
  }

  function text(value) {
    return value === undefined || value === null ? "–" : String(value);
  }

  function showSummary(body) {
    byId("version").textContent = text(body.version);
    byId("strategy").textContent = text(body.strategy);
    const sticky = body.sticky || {};
    let stickyText = text(sticky.mode);
    if (sticky.mode && sticky.mode !== "off") {
      stickyText += ", store " + text(sticky.store);
      stickyText += sticky.available ? " (available)" : " (UNAVAILABLE)";
    }
    byId("sticky").textContent = stickyText;
    byId("sticky").className = sticky.available === false ? "bad" : "";
    byId("queued").textContent = text(body.queued);
    byId("uptime").textContent = duration(body.uptime_seconds);
    const workers = Array.isArray(body.workers) ? body.workers : null;
    byId("workers-item").hidden = !workers;
    if (workers) {
      const up = workers.filter((w) => w && w.up).length;
      byId("workers").textContent = up + " of " + workers.length + " up";
    }
  }

  function showSticky(shown) {
    for (const node of document.querySelectorAll(".sticky-column")) node.hidden = !shown;
  }

  function newRow(name) {
    const row = el("tr");
    row.dataset.backend = name;
    const cells = {};
    for (const key of ["name", "state", "breaker", "routable"]) {
      cells[key] = row.appendChild(el("td"));
    }
    for (const key of ["in_flight", "latency", "share", "cpu", "memory", "sticky"]) {
      cells[key] = row.appendChild(el("td", undefined, "number"));
    }
    cells.sticky.classList.add("sticky-column");
    const actions = row.appendChild(el("td", undefined, "actions"));
    cells.mode = actions.appendChild(el("span", undefined, "mode"));
    cells.buttons = {};
    for (const [action, mode] of ACTIONS) {
      const button = actions.appendChild(el("button", action));
      button.type = "button";
      button.dataset.action = action;
      button.addEventListener("click", () => act(name, action, button));
      cells.buttons[mode] = button;
    }
    return { row, cells };
  }

  function showBackends(backends, counts) {
    const body = byId("backends").tBodies[0];
    byId("backends-empty").hidden = backends.length > 0;
    byId("backends-empty").firstChild.textContent = "no backends";
    const total = backends.reduce((sum, b) => sum + (Number(b.requests_total) || 0), 0);
    const stickyShown = !document.querySelector("th.sticky-column").hidden;
    const seen = new Set();
    for (const backend of backends) {
      const name = String(backend.name);
      if (seen.has(name)) continue;
      seen.add(name);
      let entry = rows.get(name);
      if (!entry) {
        entry = newRow(name);
        rows.set(name, entry);
      }
      body.appendChild(entry.row); // in /status order; moving a row keeps it
      const c = entry.cells;
      c.name.textContent = name;
      c.name.title = text(backend.url);
      c.state.textContent = text(backend.state);
      c.state.className = STATES.has(backend.state) ? "state-" + backend.state : "";
      c.breaker.textContent = text(backend.breaker);
      if (backend.breaker === "open" && backend.breaker_retry_in_seconds > 0) {
        c.breaker.textContent += " (" + Math.ceil(backend.breaker_retry_in_seconds) + " s)";
      }
      c.breaker.className = BREAKERS.has(backend.breaker) ? "breaker-" + backend.breaker : "";
      c.routable.textContent = backend.routable ? "yes" : "no";
      c.routable.className = backend.routable ? "good" : "bad";
      c.in_flight.textContent = text(backend.in_flight);
      c.latency.textContent =
        typeof backend.latency_ewma_ms === "number" ? backend.latency_ewma_ms.toFixed(1) + " ms" : "–";
      c.share.textContent = total > 0 ? percent((Number(backend.requests_total) || 0) / total) : "–";
      const load = backend.load || {};
      c.cpu.textContent = percent(load.cpu);
      c.memory.textContent = percent(load.memory);
      c.sticky.hidden = !stickyShown;
      c.sticky.textContent =
        counts && typeof counts === "object" ? text(counts[name] === undefined ? 0 : counts[name]) : "–";
      c.mode.textContent = text(backend.mode);
      for (const [mode, button] of Object.entries(c.buttons)) {
        button.disabled = backend.mode === mode || button.classList.contains("busy");
      }
    }
    for (const [name, entry] of rows) {
      if (!seen.has(name)) {
        entry.row.remove();
        rows.delete(name);
      }
    }
  }

  async function act(name, action, button) {
    const message = byId("action-message");
    button.classList.add("busy");
    button.disabled = true;
    try {
      const path = "backends/" + encodeURIComponent(name) + "/" + encodeURIComponent(action);
      const answer = await call(path, "POST");
      if (answer.status === 200) {
        message.textContent = name + ": " + text(answer.body && answer.body.state);
        message.className = "";
      } else {
        const error = answer.body && answer.body.error ? answer.body.error : "HTTP " + answer.status;
        message.textContent = name + ": " + action + " refused: " + error;
        message.className = "bad";
      }
    } catch (error) {
      if (error instanceof Unauthorised) {
        askForToken();
        return;
      }
      message.textContent = name + ": " + action + " got no answer (" + error.message + ")";
      message.className = "bad";
    } finally {
      button.classList.remove("busy");
      button.disabled = false;
    }
    poll();
  }

  // ---------------------------------------------------------------------------------------
  // Alerts

  function describe(alert) {
    const item = el("li");
    if (alert === null || typeof alert !== "object") {
      item.textContent = text(alert);
      return item;
    }
    const label = alert.name || alert.alert || alert.rule || "alert";
    item.appendChild(el("strong", String(label)));
    const rest = Object.entries(alert).filter(([key]) => !["name", "alert", "rule"].includes(key));
    if (rest.length) {
      const details = rest.map(([key, value]) =>
        key + ": " + (typeof value === "object" && value !== null ? JSON.stringify(value) : text(value))
      );
      item.appendChild(el("span", " " + details.join(", ")));
    }
    return item;
  }

  function showAlerts(firing) {
    const shown = Array.isArray(firing);
    byId("alerts-section").hidden = !shown;
    if (!shown) return;
    byId("alerts-none").hidden = firing.length > 0;
    byId("alerts").replaceChildren(...firing.map(describe));
  }

  // ---------------------------------------------------------------------------------------
  // Charts: one polyline per backend per figure, over the window /series keeps

  function colourOf(name) {
    if (!colours.has(name)) colours.set(name, colours.size % COLOURS);
    return colours.get(name);
  }

  function label(name) {
    if (name === "*") return "all";
    if (name === "none") return "no backend";
    return name;
  }

  function niceCeiling(value) {
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (value <= m * step) return m * step;
    }
    return 10 * step;
  }

  function charted(series) {
    // The whole balancer first, then the backends; "none" only when it answered something.
    const names = Object.keys(series.backends || {});
    const ordered = names.includes("*") ? ["*", ...names.filter((n) => n !== "*")] : names;
    return ordered.filter((name) => {
      const points = series.backends[name];
      if (!Array.isArray(points)) return false;
      return name !== "none" || points.some((p) => p && p.rate > 0);
    });
  }

  function showCharts(series) {
    const names = charted(series);
    const times = series.times;
    const last = times.length ? times[times.length - 1] : 0;
    // The window /series keeps (5 min), or less while the balancer has not run that long.
    const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, times.length ? last - times[0] : 0));
    const legend = byId("legend");
    legend.replaceChildren();
    for (const name of names) {
      const key = legend.appendChild(el("span", undefined, "key"));
      key.appendChild(el("span", undefined, "swatch fill-" + colourOf(name)));
      key.appendChild(document.createTextNode(label(name)));
    }
    const charts = byId("charts");
    if (charts.children.length !== CHARTS.length) {
      charts.replaceChildren(...CHARTS.map((chart) => {
        const figure = el("figure", undefined, "chart");
        figure.dataset.chart = chart.key;
        const caption = figure.appendChild(el("figcaption"));
        caption.appendChild(el("span", chart.title, "title"));
        caption.appendChild(el("span", "", "now"));
        figure.appendChild(svg("svg", { viewBox: "0 0 400 150", role: "img" }));
        return figure;
      }));
    }
    CHARTS.forEach((chart, i) => drawChart(charts.children[i], chart, names, series, last, span));
  }

  function drawChart(figure, chart, names, series, last, span) {
    const W = 400, H = 150, left = 44, right = 6, top = 8, bottom = 18;
    const times = series.times;
    const value = (point) => {
      const v = point ? point[chart.key] : null;
      return typeof v === "number" && isFinite(v) ? v * chart.scale : null;
    };
    let max = 0;
    for (const name of names) {
      for (const point of series.backends[name]) {
        const v = value(point);
        if (v !== null && v > max) max = v;
      }
    }
    max = niceCeiling(Math.max(max, chart.floor));
    const x = (t) => left + ((W - left - right) * (t - (last - span))) / span;
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const image = figure.querySelector("svg");
    const parts = [];
    for (const fraction of [0, 0.5, 1]) {
      const at = y(max * fraction);
      parts.push(svg("line", { x1: left, x2: W - right, y1: at, y2: at, class: "grid" }));
      const tick = svg("text", { x: left - 4, y: at + 4, class: "axis", "text-anchor": "end" });
      tick.textContent = String(+(max * fraction).toFixed(2));
      parts.push(tick);
    }
    const from = svg("text", { x: left, y: H - 4, class: "axis" });
    from.textContent = span < 120 ? "−" + Math.round(span) + " s" : "−" + Math.round(span / 60) + " min";
    const to = svg("text", { x: W - right, y: H - 4, class: "axis", "text-anchor": "end" });
    to.textContent = "now";
    parts.push(from, to);
    for (const name of names) {
      const points = series.backends[name];
      const colour = "line-" + colourOf(name);
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          const [px, py] = run[0];
          parts.push(svg("circle", { cx: px, cy: py, r: 1.5, class: colour + " dot" }));
        } else if (run.length > 1) {
          const line = svg("polyline", { points: run.map((p) => p.join(",")).join(" "), class: colour });
          const title = svg("title");
          title.textContent = label(name);
          line.appendChild(title);
          parts.push(line);
        }
        run = [];
      };
      times.forEach((t, i) => {
        const v = value(points[i]);
        if (v === null || t < last - span) flush();
        else run.push([x(t).toFixed(1), y(v).toFixed(1)]);
      });
      flush();
    }
    image.replaceChildren(...parts);
    const everything = series.backends["*"];
    const latest = Array.isArray(everything) ? value(everything[everything.length - 1]) : null;
    figure.querySelector(".now").textContent =
      latest === null ? "" : "now " + +latest.toFixed(2) + chart.unit;
  }

  // ---------------------------------------------------------------------------------------

  byId("token-form").addEventListener("submit", tokenGiven);
  poll();
})();
