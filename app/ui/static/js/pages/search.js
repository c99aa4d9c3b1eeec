// The search page: one hyperparameter search (GET /searches/{id}): its status, objective, best
// trial and registered model; its trials (each an ordinary job, linked); the objective of each
// trial against its number (pruned trials marked apart, with the best so far); and one scatter
// per searched parameter, the parameter's value against the objective. A search has no event
// stream: while it runs, the page rereads it every POLL_MS and redraws what changed. Charts are
// made once, then only given new data.
import uPlot from "/ui/static/vendor/uplot/uPlot.esm.js";
import {
  api,
  fmtDuration,
  fmtNumber,
  fmtTime,
  h,
  parseTime,
  render,
  setTitle,
  showError,
  start,
  statusBadge,
  errorMessage,
} from "../ui.js";

const UPLOT_CSS = "/ui/static/vendor/uplot/uPlot.min.css";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;
const TRIAL_STATES = ["running", "complete", "pruned", "failed"];
const COLORS = { complete: "#1a7f37", pruned: "#bc4c00", best: "#1f6feb" };

const searchId = document.getElementById("page").dataset.id;

const state = {
  session: null,
  search: null,
  signature: null,
  objectiveChart: null,
  paramCharts: new Map(), // spec path -> ScatterChart
  timer: null,
};

const can = (scope) => state.session?.scopes?.includes(scope);

start(async (session) => {
  state.session = session;
  if (!document.querySelector(`link[href="${UPLOT_CSS}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href: UPLOT_CSS }));
  }
  const search = await api.get(`/searches/${encodeURIComponent(searchId)}`);
  drawSkeleton(search);
  update(search);
  if (!FINISHED.has(search.status)) schedule();
  addEventListener("pagehide", () => state.timer && clearTimeout(state.timer));
});

// ---------------------------------------------------------------------------------------------
// Live: reread the search while it runs

function schedule() {
  state.timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  state.timer = null;
  const live = document.getElementById("search-live");
  if (!document.hidden) {
    try {
      update(await api.get(`/searches/${encodeURIComponent(searchId)}`));
      live.classList.remove("error");
      live.textContent = FINISHED.has(state.search.status) ? "" : "live";
    } catch (err) {
      if (err?.status === 401) return; // sent to sign in
      live.classList.add("error");
      live.textContent = `live updates paused: ${errorMessage(err)}; retrying`;
    }
  }
  if (!FINISHED.has(state.search.status)) schedule();
}

// ---------------------------------------------------------------------------------------------
// Layout

function section(id, title, ...children) {
  return h("section", { class: "job-section", "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title), ...children);
}

/** The searched paths: the space's, then any a trial has that the space does not name. */
function paramPaths(search) {
  const paths = Object.keys(search.space || {});
  for (const t of search.trials || []) for (const k of Object.keys(t.params || {})) if (!paths.includes(k)) paths.push(k);
  return paths;
}

function drawSkeleton(search) {
  setTitle(search.name);
  const objectiveTitle = h("h3", { class: "chart-title", id: "chart-objective-title" },
    `${search.objective?.metric ?? "objective"} by trial`);
  const objectiveEl = h("div", {
    id: "chart-objective", class: "chart job-chart", "data-points": "0", role: "group",
    "aria-labelledby": "chart-objective-title",
  }, h("p", { class: "muted chart-empty" }, "No trial has reported yet."));
  state.objectiveChart = new ObjectiveChart(objectiveEl);

  const paramPanels = paramPaths(search).map((path, i) => {
    const id = `chart-param-${i}`;
    const title = h("h3", { class: "chart-title", id: `${id}-title` }, h("code", {}, path));
    const el = h("div", {
      id, class: "chart job-chart search-param-chart", "data-param": path, "data-points": "0",
      role: "group", "aria-labelledby": `${id}-title`,
    }, h("p", { class: "muted chart-empty" }, "No trial has reported yet."));
    state.paramCharts.set(path, new ScatterChart(el, path, search.space?.[path] || {}));
    return h("div", { class: "panel" }, title, el);
  });

  render(
    h("div", { class: "job-head" },
      h("div", { class: "row" },
        h("span", { id: "search-status" }),
        h("span", { id: "search-live", class: "muted", "aria-live": "polite" })),
      h("div", { class: "row job-actions", id: "search-actions" },
        h("button", { type: "button", id: "cancel-search", class: "danger", hidden: true, onclick: cancelSearch }, "Cancel search"),
        h("a", { href: "/ui/searches", class: "button" }, "All searches"),
        h("span", { id: "actions-error", class: "action-error" }))),
    h("div", { class: "grid job-summary" },
      h("div", { class: "panel" }, h("dl", { class: "kv", id: "search-facts" })),
      h("div", { class: "panel" },
        h("h3", { class: "chart-title" }, "Parameter importance"),
        h("div", { id: "importances" }),
        h("details", { id: "search-space" },
          h("summary", {}, "Space and base spec"),
          h("pre", {}, JSON.stringify({ space: search.space, spec: search.spec }, null, 2))))),
    section("trials", "Trials",
      h("p", { class: "muted job-note", id: "trials-note" }),
      h("div", { class: "table-wrap" }, h("table", { id: "trials-table" }))),
    section("objective", "Objective",
      h("p", { class: "muted job-note" },
        "Each finished trial's objective by trial number; a pruned trial (stopped early) is a hollow mark at its last epoch's value. The line is the best so far."),
      h("div", { class: "panel" }, objectiveTitle, objectiveEl)),
    section("params", "Parameters against the objective",
      paramPanels.length
        ? h("div", { class: "grid job-charts" }, paramPanels)
        : h("p", { class: "muted" }, "This search has no parameters.")),
  );
}

// ---------------------------------------------------------------------------------------------
// Drawing a read of the search

function update(search) {
  state.search = search;
  const signature = JSON.stringify(search);
  if (signature === state.signature) return;
  state.signature = signature;
  drawHeader(search);
  drawImportances(search);
  drawTrials(search);
  const points = trialPoints(search);
  state.objectiveChart.setTrials(points, search.objective?.direction);
  for (const chart of state.paramCharts.values()) chart.setTrials(points);
}

function drawHeader(search) {
  const old = document.getElementById("search-status");
  if (old.dataset.status !== search.status) {
    const badge = statusBadge(search.status);
    badge.id = "search-status";
    badge.dataset.status = search.status;
    old.replaceWith(badge);
  }
  const active = !FINISHED.has(search.status);
  const cancel = document.getElementById("cancel-search");
  cancel.hidden = !(active && can("jobs:write"));

  const c = search.counts || {};
  const counts = TRIAL_STATES.map((k) => `${c[k] || 0} ${k}`).join(", ");
  const sampler = search.sampler?.type
    ? `${search.sampler.type}${search.sampler.seed !== null && search.sampler.seed !== undefined ? ` (seed ${search.sampler.seed})` : ""}`
    : "–";
  const duration = search.created_at
    ? ((search.finished_at ? parseTime(search.finished_at) : new Date()) - parseTime(search.created_at)) / 1000
    : null;
  const facts = [
    ["Id", h("code", {}, search.id)],
    ["Objective", search.objective ? `${search.objective.direction} ${search.objective.metric}` : "–"],
    ["Sampler", sampler],
    ["Pruner", search.pruner?.type || "–"],
    ["Trials", h("span", { id: "search-counts" }, `${(c.complete || 0) + (c.pruned || 0) + (c.failed || 0)} of ${search.max_trials} finished: ${counts}`)],
    ["At once", `up to ${search.max_concurrent} trials`],
    ["Created", fmtTime(search.created_at)],
    ["Finished", fmtTime(search.finished_at)],
    ["Duration", fmtDuration(duration)],
    ["Best trial", bestFact(search)],
    ["Model", modelFact(search)],
  ];
  // Why no trial starts now (the tenant's job limit, say), and why a failed search failed.
  if (search.waiting_for && active) facts.push(["Waiting for", h("span", { id: "search-waiting" }, search.waiting_for)]);
  if (search.error) {
    facts.push(["Error", h("span", { class: "error", id: "search-error" }, `${search.error.type}: ${search.error.message}`)]);
  }
  document.getElementById("search-facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function bestFact(search) {
  const best = search.best;
  if (!best) return h("span", { id: "search-best", class: "muted" }, "none yet");
  return h("span", { id: "search-best", "data-trial": String(best.number) },
    `trial ${best.number}: ${search.objective?.metric ?? "value"} = ${fmtNumber(best.value)} `,
    best.job_id ? h("a", { href: `/ui/jobs/${encodeURIComponent(best.job_id)}`, id: "search-best-job" }, "its job") : null);
}

function modelFact(search) {
  if (search.model) {
    return h("a", { id: "search-model", href: `/ui/models/${encodeURIComponent(search.model.name)}` },
      `${search.model.name} v${search.model.version}`);
  }
  if (search.model_name) {
    return h("span", { class: "muted", id: "search-model" },
      search.status === "succeeded" ? search.model_name : `${search.model_name} (registered when the search succeeds)`);
  }
  return h("span", { class: "muted" }, "none asked for (model_name)");
}

function drawImportances(search) {
  const el = document.getElementById("importances");
  const entries = Object.entries(search.importances || {}).sort(([, a], [, b]) => b - a);
  if (!entries.length) {
    el.replaceChildren(h("p", { class: "muted" }, "Computed once enough trials have finished."));
    return;
  }
  const top = Math.max(...entries.map(([, v]) => v), 1e-12);
  el.replaceChildren(h("table", { id: "importances-table" },
    h("caption", { class: "visually-hidden" }, "How much each parameter explains the objective"),
    h("tbody", {}, entries.map(([path, v]) => h("tr", { "data-param": path },
      h("th", { scope: "row" }, h("code", {}, path)),
      h("td", { class: "search-importance" },
        h("span", { class: "search-importance-bar", style: `width: ${Math.round((v / top) * 100)}%` })),
      h("td", { class: "num" }, fmtNumber(v, 3)))))));
}

/** A parameter's value, short: numbers as the dashboard writes them, lists and the like as JSON. */
function fmtParam(v) {
  if (typeof v === "number") return fmtNumber(v);
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

/** What a trial reports: its final value, else (pruned, running) its last epoch's. */
function lastValue(trial) {
  if (typeof trial.value === "number") return trial.value;
  const epochs = Object.keys(trial.intermediate || {}).map(Number).filter(Number.isFinite);
  if (!epochs.length) return null;
  const v = trial.intermediate[String(Math.max(...epochs))];
  return typeof v === "number" ? v : null;
}

function drawTrials(search) {
  const paths = paramPaths(search);
  const trials = [...(search.trials || [])].sort((a, b) => a.number - b.number);
  const metric = search.objective?.metric ?? "value";
  const best = search.best?.number;
  const table = document.getElementById("trials-table");
  document.getElementById("trials-note").textContent = trials.length
    ? ""
    : "No trial yet: the search starts its first ones as soon as a worker is free.";
  table.replaceChildren(
    h("caption", { class: "visually-hidden" }, "Trials, by number"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num" }, "#"),
      h("th", { scope: "col" }, "State"),
      paths.map((p) => h("th", { scope: "col", "data-param": p }, h("code", {}, p))),
      h("th", { scope: "col", class: "num" }, metric),
      h("th", { scope: "col", class: "num" }, "Epochs"),
      h("th", { scope: "col" }, "Job"))),
    h("tbody", {}, trials.map((t) => {
      const value = lastValue(t);
      const final = typeof t.value === "number";
      return h("tr", {
        "data-trial": String(t.number), "data-state": t.state,
        class: t.number === best ? "best" : null,
      },
      h("th", { scope: "row", class: "num" }, String(t.number), t.number === best ? h("span", { class: "best-mark" }, " best") : null),
      h("td", {}, h("span", { class: `trial-state trial-${t.state}` }, t.state)),
      paths.map((p) => h("td", { class: "mono" }, p in (t.params || {}) ? fmtParam(t.params[p]) : "–")),
      h("td", { class: "num", title: final ? null : "the last epoch's value (not final)" },
        value === null ? "–" : final ? fmtNumber(value) : h("span", { class: "muted" }, fmtNumber(value))),
      h("td", { class: "num" }, String(t.epochs ?? 0)),
      h("td", {}, t.job_id
        ? h("a", { href: `/ui/jobs/${encodeURIComponent(t.job_id)}`, class: "mono", "data-testid": "trial-job" }, t.job_id.slice(0, 8))
        : "–"));
    })),
  );
}

/** The trials that have a value to plot: number, state, params, and the value. */
function trialPoints(search) {
  return (search.trials || [])
    .filter((t) => t.state === "complete" || t.state === "pruned")
    .map((t) => ({ number: t.number, state: t.state, params: t.params || {}, value: lastValue(t) }))
    .filter((p) => p.value !== null && Number.isFinite(p.value));
}

// ---------------------------------------------------------------------------------------------
// Charts (uPlot, points only; x sorted as uPlot needs, a null where a series has no point)

function pointSeries(label, color, hollow) {
  return {
    label,
    stroke: color,
    fill: color,
    width: 0,
    paths: () => null, // points only: no line between trials
    points: { show: true, size: hollow ? 8 : 7, width: 2, stroke: color, fill: hollow ? "#fff" : color },
    value: (u, v) => (v === null || v === undefined ? "–" : fmtNumber(v)),
  };
}

function fmtTick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return v.toExponential(1).replace(".0e", "e");
  return String(Number(v.toPrecision(4)));
}

/** [min, max] widened by 5% of the span each side (by 1 when all values are one). */
function padded(min, max) {
  const pad = max > min ? (max - min) * 0.05 : Math.abs(min) * 0.05 || 1;
  return [min - pad, max + pad];
}

/** A chart made on its first data, then only given data (setData), resized with its box. */
class Chart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.width = 0;
    new ResizeObserver(() => this.resize()).observe(el);
  }

  size() {
    const width = Math.max(200, Math.floor(this.el.clientWidth));
    return { width, height: width < 480 ? 200 : 240 };
  }

  show(data, options) {
    if (!this.plot) {
      this.el.replaceChildren();
      this.plot = new uPlot({ ...this.size(), ...options }, data, this.el);
      this.width = this.size().width;
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (!this.plot) return;
    const size = this.size();
    if (size.width === this.width) return;
    this.width = size.width;
    this.plot.setSize(size);
  }
}

/** The objective by trial number: complete and pruned trials as points, the best so far as a
 * stepped line over the complete ones. */
class ObjectiveChart extends Chart {
  setTrials(points, direction) {
    const sorted = [...points].sort((a, b) => a.number - b.number);
    this.el.dataset.points = String(sorted.length);
    this.el.dataset.pruned = String(sorted.filter((p) => p.state === "pruned").length);
    if (!sorted.length) return;
    const better = direction === "minimize" ? (a, b) => a < b : (a, b) => a > b;
    let best = null;
    const bestSoFar = sorted.map((p) => {
      if (p.state === "complete" && (best === null || better(p.value, best))) best = p.value;
      return best;
    });
    const data = [
      sorted.map((p) => p.number),
      sorted.map((p) => (p.state === "complete" ? p.value : null)),
      sorted.map((p) => (p.state === "pruned" ? p.value : null)),
      bestSoFar,
    ];
    this.show(data, {
      // Half a trial of room either side, so the first and last marks are not cut by the edge.
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] } },
      legend: { live: true },
      axes: [
        { label: "trial", size: 40, labelSize: 18, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
        { size: 60, values: (u, vals) => vals.map(fmtTick) },
      ],
      series: [
        { label: "trial", value: (u, v) => (v === null || v === undefined ? "–" : String(v)) },
        pointSeries("complete", COLORS.complete, false),
        pointSeries("pruned (last epoch)", COLORS.pruned, true),
        {
          label: "best so far", stroke: COLORS.best, width: 2, spanGaps: true,
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "–" : fmtNumber(v)),
        },
      ],
    });
  }
}

/** One searched parameter against the objective. A float or int parameter is its own axis (a
 * log one on a log axis); a categorical one is its choices, one tick each. */
class ScatterChart extends Chart {
  constructor(el, path, domain) {
    super(el);
    this.path = path;
    this.domain = domain;
    this.choices = domain.type === "categorical" ? (domain.choices || []).map((c) => JSON.stringify(c)) : null;
  }

  /** A trial's x: the value, or its choice's index (a value outside the choices is added). */
  x(value) {
    if (!this.choices) return typeof value === "number" ? value : null;
    const key = JSON.stringify(value);
    let i = this.choices.indexOf(key);
    if (i < 0) {
      this.choices.push(key);
      i = this.choices.length - 1;
    }
    return i;
  }

  setTrials(points) {
    const rows = points
      .filter((p) => this.path in p.params)
      .map((p) => ({ x: this.x(p.params[this.path]), state: p.state, value: p.value }))
      .filter((r) => r.x !== null && Number.isFinite(r.x))
      .sort((a, b) => a.x - b.x);
    this.el.dataset.points = String(rows.length);
    if (!rows.length) return;
    const data = [
      rows.map((r) => r.x),
      rows.map((r) => (r.state === "complete" ? r.value : null)),
      rows.map((r) => (r.state === "pruned" ? r.value : null)),
    ];
    const choices = this.choices;
    const log = !choices && this.domain.log === true;
    // Some room either side of the values, so no mark sits on the chart's edge.
    const x = choices
      ? { time: false, range: () => [-0.5, choices.length - 0.5] }
      : log
        ? { time: false, distr: 3, range: (u, min, max) => [min / 1.5, max * 1.5] }
        : { time: false, range: (u, min, max) => padded(min, max) };
    const label = (i) => {
      const text = choices?.[i];
      if (text === undefined) return "";
      const shown = fmtParam(JSON.parse(text));
      return shown.length > 14 ? `${shown.slice(0, 13)}…` : shown;
    };
    this.show(data, {
      scales: { x },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      axes: [
        choices
          ? { size: 40, splits: () => choices.map((_, i) => i), values: (u, vals) => vals.map(label) }
          : { size: 40, values: (u, vals) => vals.map(fmtTick) },
        { size: 60, values: (u, vals) => vals.map(fmtTick) },
      ],
      series: [
        { label: this.path, value: (u, v) => (v === null || v === undefined ? "–" : choices ? label(v) : fmtNumber(v)) },
        pointSeries("complete", COLORS.complete, false),
        pointSeries("pruned", COLORS.pruned, true),
      ],
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Actions

async function cancelSearch(e) {
  const button = e.currentTarget;
  const where = document.getElementById("actions-error");
  where.replaceChildren();
  button.disabled = true;
  try {
    update(await api.post(`/searches/${encodeURIComponent(searchId)}/cancel`));
    if (!state.timer && !FINISHED.has(state.search.status)) schedule();
  } catch (err) {
    showError(where, err);
  } finally {
    button.disabled = false;
  }
}
