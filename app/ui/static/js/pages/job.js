// The job page: one job's spec, stages, progress, live curves, epochs, checkpoints, evaluation,
// registered model and log, drawn from the public API and kept live by the job's event stream.
//
// Live data flow: GET /jobs/{id} draws the page; for a job that has not finished, the event stream
// is opened and, once its first `job` event says the stream is watching (so every metric row
// written from then on will arrive on it), the metric history is read downsampled
// (max_points) and the rows the stream sent meanwhile are merged in without duplicates. Charts are
// created once and then only given new data, so a zoomed chart stays zoomed while it grows.
import uPlot from "/ui/static/vendor/uplot/uPlot.esm.js";
import { follow } from "../api.js";
import {
  api,
  errorMessage,
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
} from "../ui.js";

const UPLOT_CSS = "/ui/static/vendor/uplot/uPlot.min.css";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STAGES = ["collect", "preprocess", "train", "evaluate", "register"];
/** Points per series the history asks for: enough for a smooth curve, few enough to send fast. */
const MAX_POINTS = 1000;
/** Log lines kept on the page (a job's log holds at most TAS_JOB_LOG_MAX_LINES, 10,000 by default). */
const MAX_LOG_LINES = 2000;
/** Epoch-row keys that are not curves of the model's quality: shown as columns of their own. */
const BOOKKEEPING = new Set(["epoch", "step", "lr", "epoch_seconds", "samples_per_second", "bucket"]);
const PALETTE = ["#1a7f37", "#9a6700", "#bf3989", "#0a7f8c", "#57606a"];

/** A series' colour from its name, so a curve keeps its colour whichever row came first:
 * training blue (its per-step curve light), validation red, the learning rate violet. */
function seriesColor(label, index) {
  if (label.endsWith("(steps)")) return "#8fb8f0";
  if (label.startsWith("train")) return "#1f6feb";
  if (label.startsWith("val")) return "#cf222e";
  if (label === "lr") return "#8250df";
  return PALETTE[index % PALETTE.length];
}

const jobId = document.getElementById("page").dataset.id;

/** Everything the page keeps between updates. */
const state = {
  session: null,
  job: null,
  charts: [],
  epochRows: [],
  epochsDownsampled: false,
  lastEpoch: 0,
  lastStep: -1,
  pendingSteps: [], // step rows that came before steps_per_epoch was known
  history: "waiting", // waiting | loading | loaded
  buffered: [], // metric rows the stream sent while the history loads
  monitor: null,
  lastLogId: 0,
  evaluationDrawn: false,
  modelDrawn: null,
  stopStream: null,
  ticker: null,
  checkpointsTimer: null,
};

const can = (scope) => state.session?.scopes?.includes(scope);

start(async (session) => {
  state.session = session;
  linkStylesheet(UPLOT_CSS);
  const job = await api.get(`/jobs/${encodeURIComponent(jobId)}`);
  state.job = job;
  drawSkeleton(job);
  update(job);
  loadCheckpoints();
  loadLog(job).catch((err) => showError(document.getElementById("log-error"), err));
  if (FINISHED.has(job.status)) {
    state.history = "loading";
    await loadHistory();
  } else {
    goLive();
  }
});

function linkStylesheet(href) {
  if (!document.querySelector(`link[href="${href}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
}

// ---------------------------------------------------------------------------------------------
// Layout

function section(id, title, ...children) {
  return h("section", { class: "job-section", "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title), ...children);
}

function drawSkeleton(job) {
  setTitle(job.name);
  const charts = [
    { id: "chart-loss", title: "Loss", series: lossSeries },
    { id: "chart-metric", title: "Monitored metric", series: metricSeries },
    { id: "chart-lr", title: "Learning rate", series: lrSeries },
  ];
  const chartPanels = charts.map((c) => {
    // Not role=img: the chart's legend (values under the cursor, series toggles) stays reachable.
    const title = h("h3", { class: "chart-title", id: `${c.id}-title` }, c.title);
    const el = h("div", { id: c.id, class: "chart job-chart", "data-points": "0", role: "group",
      "aria-labelledby": `${c.id}-title` }, h("p", { class: "muted chart-empty" }, "No points yet."));
    state.charts.push(new LiveChart(el, title, c.series));
    return h("div", { class: "panel" }, title, el);
  });

  render(
    h("div", { class: "job-head" },
      h("div", { class: "row" },
        h("span", { id: "job-status-wrap", "aria-live": "polite" }, h("span", { id: "job-status" })),
        h("span", { id: "job-live", class: "muted", "aria-live": "polite" }),
      ),
      h("div", { class: "row job-actions", id: "job-actions" },
        h("button", { type: "button", id: "cancel-job", class: "danger", hidden: true, onclick: cancelJob }, "Cancel"),
        h("button", { type: "button", id: "rerun-job", hidden: true, onclick: rerunJob }, "Re-run with the same spec"),
        h("a", { href: `/ui/compare?ids=${encodeURIComponent(job.id)}`, class: "button" }, "Compare…"),
        h("span", { id: "actions-error", class: "action-error" }),
      ),
    ),
    h("div", { class: "grid job-summary" },
      h("div", { class: "panel" }, h("dl", { class: "kv", id: "job-facts" })),
      h("div", { class: "panel" },
        h("div", { id: "job-error" }),
        h("details", { id: "job-spec" },
          h("summary", {}, "Spec"),
          h("pre", {}, JSON.stringify(job.spec, null, 2))),
      ),
    ),
    section("stages-section", "Stages", h("div", { id: "stages", class: "timeline job-timeline", role: "list" })),
    section("progress-section", "Progress", h("div", { id: "progress" })),
    section("curves", "Curves",
      h("p", { class: "muted job-note" }, "Drag across a chart to zoom in, double-click to zoom out; a zoomed chart keeps its zoom while new points arrive."),
      h("div", { class: "grid job-charts" }, chartPanels)),
    section("epochs", "Epochs",
      h("p", { class: "muted job-note", id: "epochs-note" }),
      h("div", { class: "table-wrap" }, h("table", { id: "epochs-table" }))),
    section("evaluation", "Evaluation", h("div", { id: "evaluation" }, h("p", { class: "muted" }, "Not evaluated yet."))),
    section("model", "Registered model", h("div", { id: "model" }, h("p", { class: "muted" }, "Not registered yet."))),
    section("checkpoints", "Checkpoints",
      h("div", { id: "checkpoints-error" }),
      h("div", { class: "table-wrap" }, h("table", { id: "checkpoints-table" }))),
    section("log-section", "Log",
      h("div", { id: "log-error" }),
      h("pre", { id: "log", class: "log job-log", role: "log", tabindex: "0", "aria-label": "Job log" })),
  );
}

// ---------------------------------------------------------------------------------------------
// The job itself: header, stages, progress, evaluation, model

function update(job) {
  const before = state.job;
  state.job = job;
  drawHeader(job);
  drawStages(job);
  drawProgress(job);
  if (!state.evaluationDrawn && job.result?.evaluation) drawEvaluation(job);
  if (job.result?.model && state.modelDrawn !== `${job.result.model.name}:${job.result.model.version}`) {
    drawModel(job);
  }
  const steps = job.progress?.steps_per_epoch;
  if (steps && state.pendingSteps.length && state.history === "loaded") {
    const rows = state.pendingSteps.splice(0);
    rows.forEach(addRow);
    flushCharts();
  }
  if (before && before.stage !== job.stage) loadCheckpoints();
  if (before && before.best_metrics?.epoch !== job.best_metrics?.epoch && state.epochRows.length) drawEpochTable();
  tick();
}

/** Running jobs' clocks (duration, the running stage's width) move every second. */
function tick() {
  const running = !FINISHED.has(state.job.status);
  if (running && !state.ticker) {
    state.ticker = setInterval(() => {
      drawFacts(state.job);
      drawStages(state.job);
    }, 1000);
  } else if (!running && state.ticker) {
    clearInterval(state.ticker);
    state.ticker = null;
  }
}

function seconds(from, to) {
  const a = parseTime(from);
  if (!a) return null;
  const b = to ? parseTime(to) : new Date();
  return Math.max(0, (b - a) / 1000);
}

/** A metric value: as fmtNumber, but a huge one (a diverging loss) in exponent form, not as 23 digits. */
function fmtValue(v) {
  return typeof v === "number" && Math.abs(v) >= 1e6 ? v.toExponential(3) : fmtNumber(v);
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 10 ? `${s.toFixed(1)}s` : fmtDuration(s);
}

function drawHeader(job) {
  const old = document.getElementById("job-status");
  if (old.dataset.status !== job.status) {
    const badge = statusBadge(job.status);
    badge.id = "job-status";
    badge.dataset.status = job.status;
    old.replaceWith(badge);
  }
  drawFacts(job);

  const active = !FINISHED.has(job.status);
  const cancel = document.getElementById("cancel-job");
  cancel.hidden = !(active && can("jobs:write"));
  cancel.disabled = job.cancel_requested;
  cancel.textContent = job.cancel_requested ? "Cancel requested…" : "Cancel";
  document.getElementById("rerun-job").hidden = !can("jobs:write");

  const err = document.getElementById("job-error");
  if (job.error) {
    err.replaceChildren(h("div", { class: "job-failure", role: "status" },
      h("strong", {}, `${job.error.type}${job.error.stage ? ` in ${job.error.stage}` : ""}: `),
      job.error.message,
      job.error.hint ? h("p", { class: "muted" }, `Hint: ${job.error.hint}`) : null));
  } else {
    err.replaceChildren();
  }
}

function drawFacts(job) {
  const duration = job.started_at ? seconds(job.started_at, job.finished_at) : null;
  const tags = Object.entries(job.tags || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  const facts = [
    ["Id", h("code", {}, job.id)],
    ["Dataset", job.spec?.dataset?.name || job.spec?.dataset?.id || "–"],
    ["Model", job.spec?.model?.arch || "–"],
    ["Stage", job.stage || "–"],
    ["Created", fmtTime(job.created_at)],
    ["Started", fmtTime(job.started_at)],
    ["Finished", fmtTime(job.finished_at)],
    ["Duration", job.started_at ? fmtSeconds(duration) : `queued ${fmtSeconds(seconds(job.created_at, null))}`],
    ["Attempts", `${job.attempts} of ${job.max_attempts}${job.preemptions ? ` (+${job.preemptions} preempted)` : ""}`],
    ["Queue", job.queue],
  ];
  if (job.search_id) {
    facts.push(["Search", h("a", { href: `/ui/searches/${encodeURIComponent(job.search_id)}`, id: "job-search" },
      `trial ${job.trial_number ?? "?"} of search ${job.search_id.slice(0, 8)}`)]);
  }
  if (tags) facts.push(["Tags", tags]);
  if (job.waiting_for) facts.push(["Waiting for", JSON.stringify(job.waiting_for)]);
  document.getElementById("job-facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The latest run's entry of each stage (a resumed job has entries from several runs). */
function latestStages(job) {
  const by = new Map();
  for (const s of job.stages || []) {
    const cur = by.get(s.name);
    if (!cur || s.attempt > cur.attempt || (s.attempt === cur.attempt && s.started_at >= cur.started_at)) {
      by.set(s.name, s);
    }
  }
  return by;
}

const STAGE_MARK = { succeeded: "✓ done", running: "▶ running", failed: "✗ failed", cancelled: "■ cancelled", pending: "· pending" };

function drawStages(job) {
  const by = latestStages(job);
  const names = [...STAGES, ...[...by.keys()].filter((n) => !STAGES.includes(n))];
  const total = names.reduce((sum, n) => {
    const s = by.get(n);
    return sum + (s ? seconds(s.started_at, s.finished_at) || 0 : 0);
  }, 0);
  const items = names.map((name) => {
    const s = by.get(name);
    let status = s ? s.status : "pending";
    if (status === "running" && FINISHED.has(job.status)) status = job.status === "succeeded" ? "succeeded" : job.status;
    const dur = s ? seconds(s.started_at, status === "running" ? null : s.finished_at) : null;
    // Proportional to duration; a stage that took no time (or has not run) keeps its minimum width.
    const grow = total > 0 && dur ? Math.max(dur / total, 0.001) : 0.001;
    const text = `${STAGE_MARK[status] || status}${dur !== null ? ` · ${fmtSeconds(dur)}` : ""}`;
    return h("div", {
      class: `stage stage-${status}`,
      role: "listitem",
      // Each stage at least as wide as its text, the rest of the bar shared by duration.
      style: `flex: ${grow} 1 auto`,
      title: `${name}: ${status}${dur !== null ? `, ${fmtSeconds(dur)}` : ""}${s ? ` (run ${s.attempt})` : ""}`,
      "aria-current": status === "running" ? "step" : null,
      "data-stage": name,
      "data-status": status,
    }, h("span", { class: "stage-name" }, name), h("span", { class: "stage-state" }, text));
  });
  document.getElementById("stages").replaceChildren(...items);
}

function drawProgress(job) {
  const el = document.getElementById("progress");
  const p = job.progress;
  el.dataset.status = job.status;
  if (!p) {
    el.dataset.fraction = job.status === "succeeded" ? "1" : "0";
    const why = job.status === "queued"
      ? (job.waiting_for ? "Queued: no live worker takes this job's queue." : "Queued: waiting for a worker.")
      : FINISHED.has(job.status) ? `Finished (${job.status}) before training started.` : "Preparing the data…";
    el.replaceChildren(h("p", { class: "muted" }, why));
    return;
  }
  const fraction = job.status === "succeeded" ? 1 : Math.min(1, Math.max(0, p.fraction || 0));
  el.dataset.fraction = String(fraction);
  const parts = [
    `epoch ${p.epoch}/${p.epochs}`,
    `step ${p.step}/${p.steps_per_epoch}`,
    `${Math.round(fraction * 100)}%`,
  ];
  if (p.samples_per_second) parts.push(`${fmtNumber(Math.round(p.samples_per_second))} samples/s`);
  if (!FINISHED.has(job.status) && p.eta_seconds !== null && p.eta_seconds !== undefined) {
    parts.push(`ETA ${fmtDuration(p.eta_seconds)}`);
  }
  if (FINISHED.has(job.status)) parts.push(job.status);
  el.replaceChildren(
    h("progress", { max: "1", value: String(fraction), "aria-label": "Training progress" }),
    h("p", { class: "progress-text" }, parts.join(" · ")),
  );
}

function drawEvaluation(job) {
  const ev = job.result.evaluation;
  state.evaluationDrawn = true;
  const metrics = ev.metrics || {};
  const scalars = Object.entries(metrics).filter(([, v]) => typeof v === "number");
  const facts = [["Split", ev.split], ["Samples", fmtNumber(ev.samples)], ...scalars.map(([k, v]) => [k, fmtValue(v)])];
  for (const avg of ["macro", "weighted"]) {
    if (metrics[avg]?.f1 !== undefined) facts.push([`${avg} F1`, fmtNumber(metrics[avg].f1)]);
  }
  const left = [h("dl", { class: "kv" }, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))];
  if (metrics.per_class) left.push(perClassTable(metrics.per_class));
  const cm = metrics.confusion_matrix;
  let right = null;
  if (cm?.labels && cm?.matrix) right = confusionMatrix(cm);
  else if (metrics.per_class) right = h("p", { class: "muted" }, "Too many classes for a confusion matrix.");
  // Side by side where there is room (the per-class table beside its heat map), stacked on a phone.
  document.getElementById("evaluation").replaceChildren(
    h("div", { class: "grid job-evaluation" }, h("div", { class: "eval-numbers" }, left), right));
}

function perClassTable(perClass) {
  const cols = ["precision", "recall", "f1", "support"];
  return h("div", { class: "table-wrap" },
    h("table", { id: "per-class-table" },
      h("caption", { class: "muted" }, "Per class"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "class"), cols.map((c) => h("th", { scope: "col", class: "num" }, c)))),
      h("tbody", {}, Object.entries(perClass).map(([name, m]) =>
        h("tr", {}, h("th", { scope: "row" }, name), cols.map((c) => h("td", { class: "num" }, fmtNumber(m[c]))))))));
}

/** A CSS grid heat map: true class per row, predicted per column, each cell shaded by its share
 * of the row (the class's recall on the diagonal) and carrying its count as text. */
function confusionMatrix({ labels, matrix }) {
  const k = labels.length;
  const cells = [h("div", { class: "cm-corner", "aria-hidden": "true" }, "true ╲ pred")];
  for (const l of labels) cells.push(h("div", { class: "cm-label cm-col", title: `predicted ${l}` }, l));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    cells.push(h("div", { class: "cm-label cm-row", title: `true ${labels[i]}` }, labels[i]));
    row.forEach((count, j) => {
      const share = total ? count / total : 0;
      const hue = i === j ? "31, 111, 235" : "207, 34, 46";
      cells.push(h("div", {
        class: `cm-cell${i === j ? " cm-diag" : ""}${share > 0.55 ? " cm-dark" : ""}`,
        "data-testid": "cm-cell",
        style: `background: rgba(${hue}, ${count ? Math.max(share, 0.06).toFixed(3) : 0})`,
        title: `true ${labels[i]}, predicted ${labels[j]}: ${count} (${(share * 100).toFixed(1)}% of ${labels[i]})`,
      }, String(count)));
    });
  });
  return h("div", { class: "cm-wrap" },
    h("p", { class: "muted job-note" }, "Confusion matrix: rows are the true class, columns the predicted one; shade = share of the row."),
    h("div", { class: "table-wrap" },
      h("div", {
        id: "confusion", class: "heatmap confusion", role: "group",
        "aria-label": `Confusion matrix, ${k} classes`,
        // Cells of 1.8 to 2.6rem: ten classes fit a phone; a hundred scroll sideways.
        style: `grid-template-columns: max-content repeat(${k}, minmax(1.8rem, 1fr)); max-width: calc(${k} * 2.6rem + 5rem)`,
        "data-classes": String(k),
      }, cells)));
}

async function drawModel(job) {
  const { name, version } = job.result.model;
  state.modelDrawn = `${name}:${version}`;
  const el = document.getElementById("model");
  const link = h("a", { href: `/ui/models/${encodeURIComponent(name)}`, id: "model-link" }, `${name} v${version}`);
  const aliases = h("p", { id: "model-aliases", class: "muted" });
  const parts = [h("p", {}, "This job's model is registered as ", link, "."), aliases];
  if (can("models:write")) parts.push(aliasForm(name, version, aliases));
  el.replaceChildren(...parts);
  await drawAliases(name, version, aliases);
}

async function drawAliases(name, version, where) {
  if (!can("models:read") && !can("models:write")) return;
  try {
    const model = await api.get(`/models/${encodeURIComponent(name)}`);
    const entries = Object.entries(model.aliases || {});
    where.replaceChildren(entries.length
      ? `Aliases: ${entries.map(([a, v]) => `${a} → v${v}${v === version ? " (this job)" : ""}`).join(", ")}; latest version v${model.latest_version}.`
      : `No aliases yet; latest version v${model.latest_version}.`);
  } catch (err) {
    where.replaceChildren(h("span", { class: "error" }, errorMessage(err)));
  }
}

function aliasForm(name, version, aliasesEl) {
  const msg = h("span", { id: "alias-result", role: "status" });
  const input = h("input", {
    id: "alias-name", name: "alias", required: true, maxlength: "64", placeholder: "production",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}", autocomplete: "off",
  });
  const form = h("form", { id: "alias-form", class: "row" },
    h("label", { for: "alias-name" }, `Point an alias at v${version}:`),
    input,
    h("button", { type: "submit", class: "primary" }, "Set alias"),
    msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const alias = input.value.trim();
    const button = form.querySelector("button");
    button.disabled = true;
    msg.replaceChildren();
    input.removeAttribute("aria-invalid");
    try {
      const out = await api.put(`/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`, { version });
      msg.replaceChildren(h("span", { class: "job-ok" }, `${out.name}@${out.alias} → v${out.version}`));
      await drawAliases(name, version, aliasesEl);
    } catch (err) {
      input.setAttribute("aria-invalid", "true");
      showError(msg, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// ---------------------------------------------------------------------------------------------
// Actions

async function cancelJob(e) {
  const button = e.currentTarget;
  const where = document.getElementById("actions-error");
  where.replaceChildren();
  button.disabled = true;
  try {
    update(await api.post(`/jobs/${encodeURIComponent(jobId)}/cancel`));
  } catch (err) {
    showError(where, err);
    button.disabled = false;
  }
}

async function rerunJob(e) {
  const button = e.currentTarget;
  const where = document.getElementById("actions-error");
  where.replaceChildren();
  button.disabled = true;
  try {
    const job = await api.post(`/jobs/${encodeURIComponent(jobId)}/clone`);
    location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
  } catch (err) {
    showError(where, err);
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Live: the event stream

function goLive() {
  const live = document.getElementById("job-live");
  live.textContent = "connecting…";
  // The history waits for the stream's first event (so no row falls between the two); a stream
  // that does not open (refused, or too slow) must not keep the charts empty.
  const fallback = () => {
    if (state.history !== "waiting") return;
    state.history = "loading";
    loadHistory().catch((err) => console.warn(err));
  };
  setTimeout(fallback, 5000);
  state.stopStream = follow(jobId, {
    job(job) {
      live.textContent = "live";
      update(job);
      if (state.history === "waiting") {
        state.history = "loading";
        loadHistory().catch((err) => console.warn(err));
      }
    },
    metric(row) {
      if (state.history !== "loaded") state.buffered.push(row);
      else {
        addRow(row);
        flushCharts();
        if (row.step === null || row.step === undefined) scheduleCheckpoints();
      }
    },
    log(line) {
      appendLog([line]);
    },
    async end() {
      live.textContent = "";
      state.stopStream = null;
      try {
        update(await api.get(`/jobs/${encodeURIComponent(jobId)}`));
      } catch (err) {
        showError(document.getElementById("actions-error"), err);
      }
      loadCheckpoints();
      if (state.history === "waiting") {
        state.history = "loading";
        await loadHistory();
      }
    },
    error(source) {
      if (source.readyState === EventSource.CLOSED) {
        live.textContent = "live updates stopped: reload the page";
        fallback();
      } else {
        live.textContent = "reconnecting…";
      }
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Metrics: history, live rows, charts and the epoch table

async function loadHistory() {
  let rows = [];
  try {
    rows = await api.get(`/jobs/${encodeURIComponent(jobId)}/metrics?kind=all&max_points=${MAX_POINTS}`);
  } catch (err) {
    showError(document.getElementById("epochs-note"), err);
  }
  state.history = "loaded";
  for (const row of rows) {
    if (row.bucket && row.bucket.rows > 1 && row.step === null) state.epochsDownsampled = true;
    addRow(row);
  }
  for (const row of state.buffered.splice(0)) addRow(row);
  flushCharts();
}

/** One metric row (epoch row: step null; step row), from the history or the stream. */
function addRow(row) {
  const isEpoch = row.step === null || row.step === undefined;
  if (isEpoch) {
    if (row.epoch <= state.lastEpoch) return; // already have it (history and stream overlap)
    state.lastEpoch = row.epoch;
    state.epochRows.push(row);
    state.monitor ??= monitorKey(row);
    for (const c of state.charts) c.addRow(row, row.epoch);
    drawEpochTable();
    return;
  }
  const steps = state.job?.progress?.steps_per_epoch;
  if (!steps) {
    state.pendingSteps.push(row); // placed once the job says how many steps make an epoch
    return;
  }
  if (row.step <= state.lastStep) return;
  state.lastStep = row.step;
  for (const c of state.charts) c.addRow(row, row.step / steps);
}

/** The metric the checkpoints follow: the spec's, else the trainer's default for the task. */
function monitorKey(row) {
  const job = state.job;
  let key = job?.spec?.checkpoint?.monitor || job?.result?.weights?.metric
    || ("val_accuracy" in row ? "val_accuracy" : "val_loss");
  if (!(key in row) && key.startsWith("val_")) key = "train_loss"; // no validation split
  return key;
}

function lossSeries(row, isEpoch) {
  const out = [];
  for (const [k, v] of Object.entries(row)) {
    if (typeof v === "number" && k.endsWith("loss")) out.push([isEpoch ? k : `${k} (steps)`, v, !isEpoch]);
  }
  return out;
}

function metricSeries(row, isEpoch) {
  if (!isEpoch || !state.monitor) return [];
  const key = state.monitor;
  const out = [];
  if (typeof row[key] === "number") out.push([`${key} (monitored)`, row[key], false]);
  const twin = key.startsWith("val_") ? `train_${key.slice(4)}` : null;
  if (twin && typeof row[twin] === "number") out.push([twin, row[twin], false]);
  return out;
}

function lrSeries(row, isEpoch) {
  return typeof row.lr === "number" ? [["lr", row.lr, true]] : [];
}

function flushCharts() {
  for (const c of state.charts) c.scheduleDraw();
}

/**
 * A uPlot chart that grows: x in epochs (a step row at step / steps_per_epoch), one column per
 * series, points merged in x order. Made once, on its first point; afterwards only setData, so
 * the user's zoom survives (a zoomed chart keeps its x range, an unzoomed one follows the data).
 */
class LiveChart {
  constructor(el, titleEl, seriesOf) {
    this.el = el;
    this.titleEl = titleEl;
    this.seriesOf = seriesOf;
    this.xs = [];
    this.cols = new Map(); // label -> values aligned with xs
    this.styles = new Map(); // label -> {steps}
    this.plot = null;
    this.zoomed = false;
    this.queued = false;
    this.width = 0;
    new ResizeObserver(() => this.resize()).observe(el);
  }

  addRow(row, x) {
    const isEpoch = row.step === null || row.step === undefined;
    const values = this.seriesOf(row, isEpoch);
    if (!values.length) return;
    const i = this.slot(x);
    let added = false;
    for (const [label, v, steps] of values) {
      if (!this.cols.has(label)) {
        this.cols.set(label, new Array(this.xs.length).fill(null));
        this.styles.set(label, { steps });
        this.plot?.addSeries(this.seriesOpts(label, this.cols.size - 1), this.cols.size);
        added = true;
      }
      this.cols.get(label)[i] = Number.isFinite(v) ? v : null;
    }
    if (added && this.plot) this.draw(); // the new series' column must reach uPlot at once
    this.el.dataset.points = String(this.xs.length);
    this.el.dataset.series = [...this.cols.keys()].join(",");
  }

  /** The index of x in xs, inserting it (and a null in every column) where it is new. */
  slot(x) {
    const xs = this.xs;
    let lo = 0;
    let hi = xs.length;
    if (hi && xs[hi - 1] < x) lo = hi; // the usual case: appended at the end
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    if (lo < xs.length && Math.abs(xs[lo] - x) < 1e-9) return lo;
    xs.splice(lo, 0, x);
    for (const col of this.cols.values()) col.splice(lo, 0, null);
    return lo;
  }

  seriesOpts(label, index) {
    const steps = this.styles.get(label)?.steps;
    const color = seriesColor(label, index);
    return {
      label,
      stroke: color,
      width: steps ? 1 : 2,
      spanGaps: true,
      points: { show: !steps, size: 5 },
      value: (u, v) => (v === null || v === undefined ? "–" : fmtValue(v)),
    };
  }

  data() {
    return [this.xs, ...this.cols.values()];
  }

  scheduleDraw() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.draw();
    });
  }

  draw() {
    if (!this.cols.size) return;
    if (!this.plot) {
      this.create();
      return;
    }
    if (this.zoomed) {
      this.plot.setData(this.data(), false);
      this.plot.redraw();
    } else {
      this.plot.setData(this.data());
    }
  }

  size() {
    const width = Math.max(200, Math.floor(this.el.clientWidth));
    return { width, height: width < 480 ? 200 : 240 };
  }

  create() {
    this.el.replaceChildren();
    const self = this;
    this.plot = new uPlot({
      ...this.size(),
      scales: { x: { time: false } },
      legend: { live: true },
      cursor: { sync: { key: `job-${jobId}` }, drag: { x: true, y: false } },
      axes: [
        { label: "epoch", size: 40, labelSize: 18 },
        { size: 60, values: (u, vals) => vals.map(fmtTick) },
      ],
      series: [
        { label: "epoch", value: (u, v) => (v === null || v === undefined ? "–" : fmtNumber(v, 2)) },
        ...[...this.cols.keys()].map((label, i) => this.seriesOpts(label, i)),
      ],
      hooks: {
        setScale: [(u, key) => { if (key === "x") self.checkZoom(u); }],
      },
    }, this.data(), this.el);
    this.width = this.size().width;
  }

  /** Zoomed = the x scale shows less than all the data (a drag zooms; a double-click resets). */
  checkZoom(u) {
    const xs = this.xs;
    // The visible x range, for tests and for anyone reading the page's state.
    this.el.dataset.xMin = String(u.scales.x.min);
    this.el.dataset.xMax = String(u.scales.x.max);
    if (xs.length < 2) {
      this.zoomed = false;
      return;
    }
    const span = xs[xs.length - 1] - xs[0];
    const eps = span * 1e-6 + 1e-12;
    this.zoomed = u.scales.x.min > xs[0] + eps || u.scales.x.max < xs[xs.length - 1] - eps;
    this.el.dataset.zoomed = String(this.zoomed);
  }

  resize() {
    if (!this.plot) return;
    const size = this.size();
    if (size.width === this.width) return;
    this.width = size.width;
    this.plot.setSize(size);
  }
}

/** An axis tick: short enough for the axis' width at any magnitude (a learning rate's 7.5e-4). */
function fmtTick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return v.toExponential(1).replace(".0e", "e");
  return String(Number(v.toPrecision(4)));
}

function drawEpochTable() {
  const rows = state.epochRows;
  const table = document.getElementById("epochs-table");
  const keys = new Set();
  for (const r of rows) for (const [k, v] of Object.entries(r)) if (!BOOKKEEPING.has(k) && typeof v === "number") keys.add(k);
  const losses = [...keys].filter((k) => k.endsWith("loss")).sort((a, b) => (a.startsWith("train") ? -1 : 1) - (b.startsWith("train") ? -1 : 1));
  const others = [...keys].filter((k) => !k.endsWith("loss")).sort();
  const best = state.job?.best_metrics?.epoch ?? state.job?.result?.weights?.epoch;
  const cols = [
    ...losses.map((k) => [k, k, "", fmtValue]),
    ...others.map((k) => [k, k, "", fmtValue]),
    ["lr", "lr", "", fmtValue],
    ["epoch_seconds", "time", "", (v) => fmtSeconds(v)],
    ["samples_per_second", "samples/s", "hide-narrow", (v) => fmtNumber(Math.round(v))],
  ];
  table.replaceChildren(
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num" }, "epoch"),
      cols.map(([, title, cls]) => h("th", { scope: "col", class: `num ${cls}` }, title)))),
    h("tbody", {}, rows.map((r) => h("tr", { class: r.epoch === best ? "best" : null, "data-epoch": String(r.epoch) },
      h("th", { scope: "row", class: "num" }, String(r.epoch), r.epoch === best ? h("span", { class: "best-mark" }, " best") : null),
      cols.map(([k, , cls, fmt]) => h("td", { class: `num ${cls}` }, typeof r[k] === "number" ? fmt(r[k]) : "–"))))),
  );
  document.getElementById("epochs-note").textContent = state.epochsDownsampled
    ? `Downsampled to ${MAX_POINTS} rows (the API's max_points): each row is the last epoch of its bucket.`
    : "";
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/** Checkpoints are written at epoch ends: re-read them at most every two seconds while live. */
function scheduleCheckpoints() {
  if (state.checkpointsTimer) return;
  state.checkpointsTimer = setTimeout(() => {
    state.checkpointsTimer = null;
    loadCheckpoints();
  }, 2000);
}

async function loadCheckpoints() {
  const table = document.getElementById("checkpoints-table");
  const where = document.getElementById("checkpoints-error");
  let items;
  try {
    items = await api.get(`/jobs/${encodeURIComponent(jobId)}/checkpoints`);
    where.replaceChildren();
  } catch (err) {
    showError(where, err);
    return;
  }
  if (!items.length) {
    table.replaceChildren(h("tbody", {}, h("tr", {}, h("td", { class: "muted" }, "No checkpoints yet."))));
    return;
  }
  table.replaceChildren(
    h("thead", {}, h("tr", {},
      ["epoch", "step", "run", "metric", "value", "best", "sha256", "written"].map((c, i) =>
        h("th", { scope: "col", class: [i < 3 || i === 4 ? "num" : "", i >= 6 ? "hide-narrow" : ""].join(" ").trim() || null }, c)))),
    h("tbody", {}, items.map((c) => h("tr", { class: c.is_best ? "best" : null },
      h("td", { class: "num" }, String(c.epoch)),
      h("td", { class: "num" }, String(c.step)),
      h("td", { class: "num" }, String(c.attempt)),
      h("td", {}, c.metric_name || "–"),
      h("td", { class: "num" }, fmtValue(c.metric_value)),
      h("td", {}, c.is_best ? "best" : ""),
      h("td", { class: "hide-narrow" }, c.sha256 ? h("code", { title: c.sha256 }, c.sha256.slice(0, 12)) : "–"),
      h("td", { class: "hide-narrow" }, fmtTime(c.created_at))))),
  );
}

// ---------------------------------------------------------------------------------------------
// Log

async function loadLog(job) {
  // A finished job's whole log, page by page (the tail is what matters, the page keeps the
  // last MAX_LOG_LINES); a live job's first page, the stream sending the rest.
  let after = 0;
  for (let pages = 0; pages < 20; pages++) {
    const page = await api.get(`/jobs/${encodeURIComponent(jobId)}/logs?after=${after}`);
    appendLog(page.items);
    if (!FINISHED.has(job.status) || !page.items.length || page.next_after === null || page.next_after === after) break;
    after = page.next_after;
  }
  if (!state.lastLogId) {
    const el = document.getElementById("log");
    if (!el.childElementCount) el.textContent = "No log lines yet.";
  }
}

function appendLog(lines) {
  const el = document.getElementById("log");
  const fresh = lines.filter((l) => l.id > state.lastLogId);
  if (!fresh.length) return;
  if (!state.lastLogId) el.replaceChildren(); // the "no lines yet" note
  const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
  const frag = document.createDocumentFragment();
  for (const l of fresh) {
    const when = parseTime(l.created_at);
    const stamp = when ? when.toISOString().slice(11, 19) : "";
    frag.append(h("span", {
      class: `log-line log-${l.level}`,
      title: `run ${l.attempt}${l.worker ? ` on ${l.worker}` : ""} · ${l.source}`,
    }, `${stamp} ${l.level === "info" ? "" : `[${l.level}] `}${l.message}\n`));
  }
  state.lastLogId = fresh[fresh.length - 1].id;
  el.append(frag);
  while (el.childElementCount > MAX_LOG_LINES) el.firstElementChild.remove();
  el.dataset.lines = String(el.childElementCount);
  if (atBottom) el.scrollTop = el.scrollHeight;
}
