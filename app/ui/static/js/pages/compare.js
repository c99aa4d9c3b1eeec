// Compare: two to ten jobs side by side. Their epoch curves overlaid on shared axes (one chart
// per metric key, one series per job, the same colour for a job on every chart), a summary row
// per job, and the spec fields whose values differ. The jobs are in the URL (?ids=a,b), so a
// comparison is a link that can be shared or bookmarked.
import uPlot from "/ui/static/vendor/uplot/uPlot.esm.js";
import { h, render, start, api, fmtNumber, fmtDuration, parseTime, statusBadge, errorMessage } from "../ui.js";

const MIN_JOBS = 2;
const MAX_JOBS = 10;
/** Points per curve at most: the server downsamples a longer epoch series (min/max kept). */
const MAX_POINTS = 1000;
/** Jobs offered in the add form's suggestions (newest first). */
const RECENT_JOBS = 50;
/** Ten colours told apart on white and by most colour-blind readers (Tableau 10). */
const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
/** Spec paths left out of the differences: the job's name heads every column already. */
const NOT_COMPARED = new Set(["name"]);
const ABSENT = Symbol("absent");
const CHART_HEIGHT = 240;
/** How often the page rereads jobs that have not finished. */
const POLL_MS = 3000;

function addStylesheet(href) {
  if (!document.querySelector(`link[href="${href}"]`)) document.head.append(h("link", { rel: "stylesheet", href }));
}

/** The ids in ?ids=a,b (comma-separated or repeated), in order, without blanks or repeats. */
function chosenIds() {
  const raw = new URLSearchParams(location.search).getAll("ids");
  return [...new Set(raw.flatMap((v) => v.split(",")).map((v) => v.trim()).filter(Boolean))];
}

function compareUrl(ids) {
  return ids.length ? `/ui/compare?ids=${ids.map(encodeURIComponent).join(",")}` : "/ui/compare";
}

const shortId = (id) => id.slice(0, 8);
const jobLabel = (job) => `${job.name} · ${shortId(job.id)}`;

function swatch(color) {
  return h("span", { class: "swatch", style: `background:${color}`, "aria-hidden": "true" });
}

function jobLink(job) {
  return h("a", { class: "compare-job", href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.name, " ", h("span", { class: "mono muted" }, shortId(job.id)));
}

/** The metric the job's checkpoints are judged by: the spec or the result names it; until then
 * the API's default read from the metrics (val_accuracy for classes, else val_loss, else
 * train_loss); null while the job has no metrics. */
function monitoredMetric(job) {
  const named = job.result?.weights?.metric ?? job.spec?.checkpoint?.monitor;
  if (named) return named;
  const row = job.best_metrics || job.latest_metrics || {};
  return ["val_accuracy", "val_loss", "train_loss"].find((k) => k in row) ?? null;
}

function durationSeconds(job) {
  const startedAt = parseTime(job.started_at);
  if (!startedAt) return null;
  const end = parseTime(job.finished_at) ?? (job.status === "running" ? new Date() : null);
  return end ? (end - startedAt) / 1000 : null;
}

/** The add form: an id (or the start of a recent job's id) appended to the URL's list. */
function addForm(ids, recent) {
  const message = h("p", { id: "compare-add-message", class: "field-error", "aria-live": "polite" });
  const input = h("input", {
    id: "compare-add", name: "id", list: "compare-recent", autocomplete: "off", size: 34,
    placeholder: "a job id", "aria-describedby": "compare-add-message",
  });
  const options = recent.filter((j) => !ids.includes(j.id)).map((j) => h("option", { value: j.id }, `${j.name} (${j.status})`));
  const form = h("form", { id: "compare-add-form", class: "row compare-add", novalidate: true },
    h("label", { for: "compare-add" }, "Add a job"), input,
    h("datalist", { id: "compare-recent" }, options),
    h("button", { type: "submit" }, "Add"), message);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const typed = input.value.trim();
    const matches = recent.filter((j) => j.id.startsWith(typed));
    const id = typed.length >= 4 && matches.length === 1 ? matches[0].id : typed;
    const problem = !id ? "type a job id"
      : ids.includes(id) ? "that job is compared already"
      : ids.length >= MAX_JOBS ? `at most ${MAX_JOBS} jobs: remove one first` : null;
    if (problem) {
      message.textContent = problem;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    location.assign(compareUrl([...ids, id]));
  });
  return form;
}

/** The chosen ids, each with a link that drops it (shown when the jobs cannot be compared yet). */
function chosenList(ids) {
  if (!ids.length) return null;
  return h("ul", { class: "compare-chosen", "aria-label": "Chosen jobs" },
    ids.map((id) => h("li", {}, h("span", { class: "mono" }, id), " ",
      h("a", { href: compareUrl(ids.filter((x) => x !== id)), "aria-label": `Remove job ${id}` }, "remove"))));
}

/** A job and its epoch rows; a job that cannot be read comes back with its error instead. */
async function load(id) {
  const path = `/jobs/${encodeURIComponent(id)}`;
  try {
    const job = await api.get(path); // first: an unknown id is one 404, not two
    const rows = await api.get(`${path}/metrics?max_points=${MAX_POINTS}`);
    return { id, job, rows };
  } catch (err) {
    return { id, error: err };
  }
}

/** Chart order: losses, then each monitored metric, other validation metrics, the learning
 * rate, anything else, and the timing columns last. */
function metricKeys(runs) {
  const monitored = new Set(runs.map((r) => r.monitor));
  const keys = new Set();
  for (const r of runs) for (const row of r.rows) for (const [k, v] of Object.entries(row)) {
    if (typeof v === "number" && !["epoch", "step"].includes(k)) keys.add(k);
  }
  const rank = (k) => k === "train_loss" ? 0 : k === "val_loss" ? 1 : monitored.has(k) ? 2
    : k.startsWith("val_") ? 3 : k === "lr" ? 5 : ["epoch_seconds", "samples_per_second"].includes(k) ? 7 : 4;
  return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

/** `key` per epoch for every run that has it, aligned on the union of their epochs (uPlot
 * takes one x array per chart; a run without a value at an epoch has a gap there, bridged). */
function series(key, runs) {
  const has = (row) => Number.isFinite(row[key]);
  const drawn = runs.filter((r) => r.rows.some(has));
  const epochs = [...new Set(drawn.flatMap((r) => r.rows.filter(has).map((row) => row.epoch)))].sort((a, b) => a - b);
  const data = [epochs, ...drawn.map((r) => {
    const byEpoch = new Map(r.rows.filter(has).map((row) => [row.epoch, row[key]]));
    return epochs.map((e) => byEpoch.get(e) ?? null);
  })];
  return { drawn, data };
}

/** What the charts are made of: a change here rebuilds them, anything else only updates data. */
function chartsShape(runs) {
  return JSON.stringify([runs.map((r) => r.monitor), metricKeys(runs).map((k) => [k, series(k, runs).drawn.map((r) => r.id)])]);
}

/** One chart of `key`: its panel, and how to draw it once the panel is in the page. */
function chart(key, runs) {
  const { drawn, data } = series(key, runs);
  const monitoredBy = runs.filter((r) => r.monitor === key).length;
  const box = h("div", {
    class: "chart", "data-testid": "compare-chart", "data-key": key, "data-series": drawn.length,
    role: "figure", "aria-label": `${key} per epoch for ${drawn.map((r) => jobLabel(r.job)).join(", ")}`,
  });
  const panel = h("section", { class: "panel compare-panel", "aria-label": key },
    h("h3", {}, key, monitoredBy ? h("span", { class: "muted" }, " · monitored") : null), box);
  const opts = {
    width: 400, height: CHART_HEIGHT,
    scales: { x: { time: false } },
    cursor: { sync: { key: "tas-compare" } },
    axes: [
      { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000] },
      { size: 64, values: (u, ticks) => ticks.map((t) => fmtNumber(t, 3)) },
    ],
    series: [
      { label: "epoch" },
      ...drawn.map((r) => ({
        label: jobLabel(r.job), stroke: r.color, width: 2, spanGaps: true,
        points: { show: data[0].length <= 40, size: 5, fill: r.color },
        value: (u, v) => (v === null || v === undefined ? "–" : fmtNumber(v)),
      })),
    ],
  };
  return { key, box, panel, make: () => new uPlot({ ...opts, width: Math.floor(box.clientWidth) || opts.width }, data, box) };
}

/** The curves section: a chart per metric key, drawn, each following its box's width (uPlot
 * draws at a fixed size; the grid reflows on resize). `destroy()` frees them for a rebuild. */
function curves(runs) {
  const charts = metricKeys(runs).map((k) => chart(k, runs));
  const node = charts.length
    ? h("div", { class: "grid compare-charts" }, charts.map((c) => c.panel))
    : h("p", { class: "muted", id: "compare-no-metrics" }, "None of these jobs has finished an epoch yet.");
  const observer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const c = charts.find((x) => x.box === entry.target);
      const width = Math.floor(entry.contentRect.width);
      if (c?.plot && width > 0 && width !== c.width) {
        c.width = width;
        c.plot.setSize({ width, height: CHART_HEIGHT });
      }
    }
  });
  return {
    node,
    shape: chartsShape(runs),
    /** Call once `node` is in the page. */
    draw() {
      for (const c of charts) {
        c.plot = c.make();
        observer.observe(c.box);
      }
    },
    update(next) {
      for (const c of charts) c.plot.setData(series(c.key, next).data);
    },
    destroy() {
      observer.disconnect();
      for (const c of charts) c.plot?.destroy();
    },
  };
}

/** Every path of a spec as "a.b.c" → value; lists are values of their own (model.hidden). */
function flatten(value, prefix = "", out = new Map()) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (!keys.length && prefix) out.set(prefix, value);
    for (const k of keys) flatten(value[k], prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out.set(prefix, value);
  }
  return out;
}

function specValue(v) {
  if (v === ABSENT) return h("span", { class: "muted", title: "not in this job's spec" }, "—");
  if (v === null) return h("span", { class: "muted" }, "null");
  if (typeof v === "string") return v;
  if (typeof v === "number") return fmtNumber(v, 6);
  return h("code", {}, JSON.stringify(v));
}

function specDiff(runs) {
  const flat = runs.map((r) => flatten(r.job.spec || {}));
  const paths = [...new Set(flat.flatMap((f) => [...f.keys()]))].filter((p) => !NOT_COMPARED.has(p));
  const key = (v) => (v === ABSENT ? "\u0000absent" : JSON.stringify(v));
  const differing = paths.filter((p) => new Set(flat.map((f) => key(f.has(p) ? f.get(p) : ABSENT))).size > 1);
  const note = h("p", { id: "spec-diff-note", class: "muted" }, differing.length
    ? `${differing.length} spec ${differing.length === 1 ? "field differs" : "fields differ"}; the others are the same in every job.`
    : "The specs are the same apart from their names.");
  const table = h("table", { id: "spec-diff", "aria-describedby": "spec-diff-note" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "field"),
      runs.map((r) => h("th", { scope: "col" }, swatch(r.color), " ", jobLink(r.job))))),
    h("tbody", {}, differing.map((p) => h("tr", { "data-path": p },
      h("th", { scope: "row", class: "mono" }, p),
      flat.map((f) => h("td", {}, specValue(f.has(p) ? f.get(p) : ABSENT)))))));
  return [note, h("div", { class: "table-wrap" }, table)];
}

function summary(runs, ids) {
  return h("div", { class: "table-wrap" }, h("table", { id: "compare-summary" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "job"), h("th", { scope: "col" }, "status"),
      h("th", { scope: "col" }, "best monitored"), h("th", { scope: "col", class: "num hide-narrow" }, "epochs"),
      h("th", { scope: "col", class: "num" }, "duration"), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "remove")))),
    h("tbody", {}, runs.map((r) => {
      const best = r.monitor ? r.job.best_metrics?.[r.monitor] : null;
      const epochs = r.job.progress ? `${r.job.progress.epoch} / ${r.job.progress.epochs}` : "–";
      return h("tr", { "data-job": r.job.id },
        h("td", {}, swatch(r.color), " ", jobLink(r.job)),
        h("td", {}, statusBadge(r.job.status)),
        h("td", { class: "num-ish" }, h("strong", {}, fmtNumber(best)), " ",
          h("span", { class: "muted" }, r.monitor ?? "", r.job.best_metrics?.epoch ? ` @ epoch ${r.job.best_metrics.epoch}` : "")),
        h("td", { class: "num hide-narrow" }, epochs),
        h("td", { class: "num" }, fmtDuration(durationSeconds(r.job))),
        h("td", {}, h("a", { href: compareUrl(ids.filter((x) => x !== r.id)), "aria-label": `Remove ${jobLabel(r.job)} from the comparison` }, "remove")));
    }))));
}

/** Keep the page current while a job runs: reread the unfinished jobs every POLL_MS (polling,
 * since a browser opens at most six connections to a host and ten event streams would take
 * them all), redraw the summary, and give the charts their new points (rebuilt only when a key
 * or a job's series appears). Stops once every job has finished. */
function keepCurrent(runs, ids, parts) {
  const active = (r) => ["queued", "running"].includes(r.job.status);
  const tick = async () => {
    if (!document.hidden) try {
      const fresh = await Promise.all(runs.map((r) => (active(r) ? load(r.id) : r)));
      fresh.forEach((f, i) => {
        if (!f.error) runs[i] = { ...runs[i], job: f.job, rows: f.rows, monitor: monitoredMetric(f.job) };
      });
      parts.summary.replaceChildren(summary(runs, ids));
      if (chartsShape(runs) === parts.curves.shape) {
        parts.curves.update(runs);
      } else {
        parts.curves.destroy();
        parts.curves = curves(runs);
        parts.curvesBox.replaceChildren(parts.curves.node);
        parts.curves.draw();
      }
    } catch (err) {
      console.warn("compare: could not update", err); // the next tick tries again
    }
    if (runs.some(active)) setTimeout(tick, POLL_MS);
    else parts.live.textContent = "";
  };
  if (runs.some(active)) {
    parts.live.textContent = `Some of these jobs have not finished: the page updates every ${POLL_MS / 1000} s.`;
    setTimeout(tick, POLL_MS);
  }
}

start(async () => {
  addStylesheet("/ui/static/vendor/uplot/uPlot.min.css");
  const ids = chosenIds();
  const recent = await api.get(`/jobs?limit=${RECENT_JOBS}`).then((p) => p.items, () => []);
  const form = addForm(ids, recent);
  if (ids.length < MIN_JOBS || ids.length > MAX_JOBS) {
    const text = ids.length > MAX_JOBS
      ? `Compare takes at most ${MAX_JOBS} jobs; ${ids.length} are chosen. Remove ${ids.length - MAX_JOBS} of them.`
      : `Compare needs ${MIN_JOBS} to ${MAX_JOBS} jobs; ${ids.length ? "only 1 is" : "none are"} chosen. Add a job by its id, or open /ui/compare?ids=ID1,ID2.`;
    render(...[h("p", { id: "compare-message", class: "notice", role: "status" }, text), chosenList(ids), form].filter(Boolean));
    return;
  }
  const loaded = await Promise.all(ids.map(load));
  const failed = loaded.filter((r) => r.error);
  const runs = loaded.filter((r) => !r.error).map((r, i) => ({ ...r, color: COLORS[i % COLORS.length], monitor: monitoredMetric(r.job) }));
  const problems = failed.length
    ? h("ul", { id: "compare-errors", class: "error", role: "alert" }, failed.map((r) =>
      h("li", {}, `Job ${r.id}: ${errorMessage(r.error)} `, h("a", { href: compareUrl(ids.filter((x) => x !== r.id)) }, "remove it"))))
    : null;
  if (runs.length < MIN_JOBS) {
    render(...[problems, h("p", { id: "compare-message", class: "notice", role: "status" },
      `Compare needs ${MIN_JOBS} jobs that can be read; ${runs.length} can.`), chosenList(ids), form].filter(Boolean));
    return;
  }
  document.title = `Compare ${runs.map((r) => r.job.name).join(", ")} · tas`;
  const legend = h("ul", { class: "compare-legend", "aria-label": "Jobs on the charts" },
    runs.map((r) => h("li", {}, swatch(r.color), " ", jobLink(r.job))));
  const parts = {
    summary: h("div", { id: "compare-summary-box" }, summary(runs, ids)),
    curvesBox: h("div", { id: "compare-curves" }),
    live: h("p", { id: "compare-live", class: "muted", "aria-live": "polite" }),
    curves: curves(runs),
  };
  parts.curvesBox.append(parts.curves.node);
  render(...[
    problems,
    parts.summary,
    parts.live,
    form,
    h("h2", {}, "Curves"),
    legend,
    parts.curvesBox,
    h("h2", {}, "Spec differences"),
    specDiff(runs),
  ].filter(Boolean));
  parts.curves.draw();
  keepCurrent(runs, ids, parts);
});
