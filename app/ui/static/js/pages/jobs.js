// Jobs: the tenant's jobs as a table, filtered, sorted and paged by the API (GET /jobs with
// status, name, sort and cursor), so the page shows exactly what a client listing the same
// query would get, whatever the number of jobs. Everything the view depends on is in the URL
// (?status=&name=&sort=&cursor=): a view is a link, the filter form is a plain GET form, and the
// sort headers and paging are plain links. Queued and running rows follow their jobs live.
import { h, render, start, api, fmtNumber, fmtDuration, fmtTime, parseTime, statusBadge, errorMessage } from "../ui.js";

const PAGE_SIZE = 25;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["queued", "running"]);
/** How often the page rereads its unfinished rows. */
const POLL_MS = 2000;
/** One read of the tenant's unfinished jobs serves every live row on the page. */
const ACTIVE_LIMIT = 200;
const COMPARE_MIN = 2;
const COMPARE_MAX = 10;

/** The sortable columns: the API's sort key, and the direction a first click asks for. */
const SORTABLE = {
  status: { key: "status", first: "status" },
  name: { key: "name", first: "name" },
  created: { key: "created_at", first: "-created_at" },
  duration: { key: "duration", first: "-duration" },
};
const DEFAULT_SORT = "-created_at";

/** The view the URL asks for; blanks (an untouched form field) are absent. */
function viewFromUrl() {
  const q = new URLSearchParams(location.search);
  const get = (k) => (q.get(k) || "").trim() || null;
  return { status: get("status"), name: get("name"), sort: get("sort"), cursor: get("cursor") };
}

/** This page's URL for a view (blank parts left out, so links stay short). */
function viewUrl(view) {
  const q = new URLSearchParams();
  for (const k of ["status", "name", "sort", "cursor"]) if (view[k]) q.set(k, view[k]);
  const s = q.toString();
  return s ? `/ui/jobs?${s}` : "/ui/jobs";
}

function apiQuery(view) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const k of ["status", "name", "sort", "cursor"]) if (view[k]) q.set(k, view[k]);
  return `/jobs?${q}`;
}

// --- paging back ---------------------------------------------------------------------------
// A keyset cursor only goes forward; the page a "Next" link came from is remembered for this
// tab (sessionStorage, keyed by the filters and sort plus the cursor), so "Previous" can go back
// one page, also after a reload. A pasted link to a deep page offers "First page" only.

const BACK_KEY = "tas.jobs.previous";

function backMap() {
  try {
    return JSON.parse(sessionStorage.getItem(BACK_KEY) || "{}");
  } catch {
    return {};
  }
}

function listKey(view, cursor) {
  return JSON.stringify([view.status, view.name, view.sort || DEFAULT_SORT, cursor]);
}

function rememberBack(view, next) {
  const map = backMap();
  map[listKey(view, next)] = view.cursor || "";
  const keys = Object.keys(map);
  for (const k of keys.slice(0, Math.max(0, keys.length - 200))) delete map[k]; // bounded
  try {
    sessionStorage.setItem(BACK_KEY, JSON.stringify(map));
  } catch { /* storage full or off: Previous is simply not offered */ }
}

function previousCursor(view) {
  if (!view.cursor) return null;
  const prev = backMap()[listKey(view, view.cursor)];
  return prev === undefined ? null : prev;
}

// --- what a row shows ------------------------------------------------------------------------

/** The metric the job's checkpoints are judged by: the spec or the result names it; until then
 * the API's default read from the metrics (val_accuracy for classes, else val_loss, else
 * train_loss); null while the job has no metrics. */
function monitoredMetric(job) {
  const named = job.result?.weights?.metric ?? job.spec?.checkpoint?.monitor;
  if (named) return named;
  const row = job.best_metrics || job.latest_metrics || {};
  return ["val_accuracy", "val_loss", "train_loss"].find((k) => k in row) ?? null;
}

/** Run time: finished − started, or so far for a running job; null before it starts. */
function durationSeconds(job) {
  const startedAt = parseTime(job.started_at);
  if (!startedAt) return null;
  const end = job.finished_at ? parseTime(job.finished_at) : job.status === "running" ? new Date() : null;
  return end ? (end - startedAt) / 1000 : null;
}

function progressCell(job) {
  const p = job.progress;
  if (!p) {
    const text = job.status === "queued" ? "waiting" : job.status === "running" ? job.stage || "starting" : "–";
    return h("span", { class: "muted" }, text);
  }
  const fraction = Math.min(1, Math.max(0, p.fraction ?? 0));
  const label = `epoch ${p.epoch}/${p.epochs}`;
  return h("div", { class: "bar" },
    h("progress", { max: "1", value: String(fraction), "aria-label": `${job.name}: ${Math.round(fraction * 100)}%, ${label}` }),
    h("span", { class: "jobs-epoch" }, label));
}

function bestCell(job) {
  const metric = monitoredMetric(job);
  const value = metric ? job.best_metrics?.[metric] : undefined;
  if (value === undefined || value === null) return h("span", { class: "muted" }, "–");
  const epoch = job.best_metrics?.epoch;
  return h("span", { title: epoch ? `${metric}, best at epoch ${epoch}` : metric },
    h("span", { class: "jobs-metric muted" }, metric, " "), fmtNumber(value));
}

/** The cells that change while a job runs, by column: drawn at first and on every update. */
const LIVE_CELLS = {
  status: (job) => statusBadge(job.status),
  duration: (job) => fmtDuration(durationSeconds(job)),
  progress: progressCell,
  best: bestCell,
};

/** What a live cell shows, as text: a cell is redrawn only when this changes (no flicker). */
const LIVE_SIGNATURE = {
  status: (job) => job.status,
  duration: (job) => fmtDuration(durationSeconds(job)),
  progress: (job) => JSON.stringify([job.status, job.progress?.fraction, job.progress?.epoch, job.progress?.epochs]),
  best: (job) => JSON.stringify([monitoredMetric(job), job.best_metrics]),
};

function liveCell(column, job, attrs = {}) {
  const td = h("td", { "data-col": column, ...attrs }, LIVE_CELLS[column](job));
  td.dataset.sig = LIVE_SIGNATURE[column](job);
  return td;
}

function modelText(spec) {
  const m = spec?.model || {};
  if (!m.arch) return "–";
  return m.pretrained ? `${m.arch} (pretrained)` : m.arch;
}

// --- the table ---------------------------------------------------------------------------------

function sortHeader(label, column, view, attrs = {}) {
  const { key, first } = SORTABLE[column];
  const current = view.sort || DEFAULT_SORT;
  const on = current === key || current === `-${key}`;
  const descending = current.startsWith("-");
  const next = on ? (descending ? key : `-${key}`) : first;
  const arrow = on ? (descending ? "▼" : "▲") : "";
  const th = h("th", { scope: "col", "data-sort": key, ...attrs },
    h("a", {
      class: "jobs-sort",
      href: viewUrl({ ...view, sort: next === DEFAULT_SORT ? null : next, cursor: null }),
      "data-testid": `sort-${key}`,
      title: `Sort by ${label.toLowerCase()}, ${next.startsWith("-") ? "descending" : "ascending"}`,
    }, label, arrow ? h("span", { "aria-hidden": "true" }, ` ${arrow}`) : null));
  if (on) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  return th;
}

function jobRow(job, selection) {
  const box = h("input", {
    type: "checkbox",
    value: job.id,
    class: "jobs-select",
    "aria-label": `Select ${job.name} (${job.id.slice(0, 8)}) to compare`,
    checked: selection.has(job.id),
    onchange: (e) => selection.toggle(job.id, e.target.checked),
  });
  const dataset = job.spec?.dataset?.name ?? "–";
  return h("tr", { "data-job-id": job.id, "data-status": job.status },
    h("td", { class: "jobs-check" }, box),
    liveCell("status", job, { "data-testid": "status" }),
    h("th", { scope: "row", class: "jobs-name" },
      h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.name),
      h("span", { class: "mono muted jobs-id" }, job.id.slice(0, 8))),
    h("td", { class: "hide-narrow" }, dataset),
    h("td", { class: "hide-narrow" }, modelText(job.spec)),
    h("td", { class: "hide-narrow jobs-created" }, h("time", { datetime: job.created_at }, fmtTime(job.created_at))),
    liveCell("duration", job, { class: "num hide-narrow" }),
    liveCell("progress", job, { class: "jobs-progress" }),
    liveCell("best", job, { class: "num" }));
}

/** Redraw the live cells of a row whose job changed, and only the cells that did. */
function updateRow(tr, job) {
  tr.dataset.status = job.status;
  for (const td of tr.querySelectorAll("td[data-col]")) {
    const column = td.dataset.col;
    const sig = LIVE_SIGNATURE[column](job);
    if (td.dataset.sig === sig) continue;
    td.dataset.sig = sig;
    td.replaceChildren(LIVE_CELLS[column](job));
  }
}

function filtersForm(view) {
  const status = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: view.status === s }, s)));
  const name = h("input", {
    id: "filter-name", name: "name", type: "search", maxlength: "64",
    value: view.name || "", placeholder: "e.g. digits-", autocomplete: "off",
  });
  return h("form", { id: "jobs-filters", class: "row jobs-filters", method: "get", action: "/ui/jobs", role: "search", "aria-label": "Filter jobs" },
    h("label", { for: "filter-status" }, "Status"), status,
    h("label", { for: "filter-name" }, "Name starts with"), name,
    view.sort ? h("input", { type: "hidden", name: "sort", value: view.sort }) : null,
    h("button", { type: "submit" }, "Filter"),
    view.status || view.name ? h("a", { href: viewUrl({ sort: view.sort }), id: "clear-filters" }, "Clear filters") : null);
}

const SELECTED_KEY = "tas.jobs.selected";

function loadSelected() {
  try {
    const ids = JSON.parse(sessionStorage.getItem(SELECTED_KEY) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string").slice(0, 50) : [];
  } catch {
    return [];
  }
}

/** The chosen jobs (2 to 10) and the Compare link that opens them. The choice is kept for this
 * tab (sessionStorage), so jobs can be picked from several pages, sorts and filters. */
function makeSelection(tbody) {
  const ids = loadSelected();
  const link = h("a", { id: "compare-selected", class: "button" }, "Compare");
  const hint = h("span", { id: "compare-hint", class: "muted", "aria-live": "polite" });
  const clear = h("button", { type: "button", id: "clear-selection", hidden: true, onclick: () => {
    ids.splice(0);
    for (const box of tbody().querySelectorAll(".jobs-select")) box.checked = false;
    refresh();
  } }, "Clear selection");
  const refresh = () => {
    const ok = ids.length >= COMPARE_MIN && ids.length <= COMPARE_MAX;
    link.textContent = ids.length ? `Compare ${ids.length} selected` : "Compare";
    if (ok) {
      link.setAttribute("href", `/ui/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
      link.removeAttribute("aria-disabled");
    } else {
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
    }
    const shown = new Set([...tbody().querySelectorAll("tr[data-job-id]")].map((tr) => tr.dataset.jobId));
    const elsewhere = ids.filter((id) => !shown.has(id)).length;
    hint.textContent = [
      ok ? "" : ids.length > COMPARE_MAX
        ? `at most ${COMPARE_MAX} jobs at once (${ids.length} selected)`
        : `select ${COMPARE_MIN} to ${COMPARE_MAX} jobs to compare`,
      elsewhere ? `${elsewhere} selected on other pages` : "",
    ].filter(Boolean).join("; ");
    clear.hidden = ids.length === 0;
    try {
      sessionStorage.setItem(SELECTED_KEY, JSON.stringify(ids));
    } catch { /* storage off: the choice lasts for this page only */ }
  };
  return {
    link, hint, clear, refresh,
    has: (id) => ids.includes(id),
    toggle(id, on) {
      const at = ids.indexOf(id);
      if (on && at < 0) ids.push(id);
      if (!on && at >= 0) ids.splice(at, 1);
      refresh();
    },
  };
}

function pager(view, nextCursor) {
  const prev = previousCursor(view);
  const links = [];
  if (view.cursor) {
    links.push(h("a", { href: viewUrl({ ...view, cursor: null }), id: "jobs-first", class: "button" }, "First page"));
    if (prev !== null) links.push(h("a", { href: viewUrl({ ...view, cursor: prev || null }), id: "jobs-prev", class: "button", rel: "prev" }, "Previous"));
  }
  if (nextCursor) {
    links.push(h("a", {
      href: viewUrl({ ...view, cursor: nextCursor }), id: "jobs-next", class: "button", rel: "next",
      onclick: () => rememberBack(view, nextCursor),
    }, "Next"));
  }
  return links.length ? h("nav", { class: "row jobs-pager", "aria-label": "Pages" }, links) : null;
}

// --- live rows -----------------------------------------------------------------------------------

/** Rereads the page's unfinished jobs every POLL_MS while there are any, updating their rows in
 * place; stops when none is left (a finished job's row keeps its last state). */
function followActive(tbody, live) {
  let timer = null;
  const activeRows = () => [...tbody.querySelectorAll("tr[data-job-id]")].filter((tr) => ACTIVE.has(tr.dataset.status));

  const say = (rows) => {
    const running = rows.filter((tr) => tr.dataset.status === "running").length;
    const queued = rows.length - running;
    live.textContent = rows.length ? `Updating live: ${running} running, ${queued} queued.` : "";
  };

  /** One job; null when it was deleted meanwhile (its row says so and is no longer followed). */
  async function readOne(tr) {
    try {
      return await api.get(`/jobs/${encodeURIComponent(tr.dataset.jobId)}`);
    } catch (err) {
      if (err?.status !== 404) throw err;
      tr.dataset.status = "deleted";
      const cell = tr.querySelector('[data-col="status"]');
      cell.dataset.sig = "deleted";
      cell.replaceChildren(statusBadge("deleted"));
      return null;
    }
  }

  async function tick() {
    timer = null;
    let rows = activeRows();
    if (!rows.length) return say(rows);
    if (!document.hidden) {
      try {
        const page = await api.get(`/jobs?status=queued,running&limit=${ACTIVE_LIMIT}`);
        const fresh = new Map(page.items.map((j) => [j.id, j]));
        for (const tr of rows) {
          // Not among the unfinished any more: it finished (or is past the first ACTIVE_LIMIT).
          const job = fresh.get(tr.dataset.jobId) ?? (await readOne(tr));
          if (job) updateRow(tr, job);
        }
        live.classList.remove("error");
      } catch (err) {
        if (err?.status === 401) return; // sent to sign in
        live.classList.add("error");
        live.textContent = `Live updates paused: ${errorMessage(err)}; retrying.`;
      }
    }
    rows = activeRows();
    if (!live.classList.contains("error")) say(rows);
    if (rows.length) timer = setTimeout(tick, POLL_MS);
  }

  say(activeRows());
  if (activeRows().length) timer = setTimeout(tick, POLL_MS);
  addEventListener("pagehide", () => timer && clearTimeout(timer));
}

// --- the page ----------------------------------------------------------------------------------

start(async () => {
  const view = viewFromUrl();
  const form = filtersForm(view);
  const submitLink = h("a", { href: "/ui/submit", id: "submit-job", class: "button primary" }, "Submit a job");
  const top = h("div", { class: "row jobs-top" }, form, submitLink);

  let page;
  try {
    page = await api.get(apiQuery(view));
  } catch (err) {
    if (err?.status !== 422) throw err;
    // A hand-edited URL: say which part is wrong and offer the unfiltered list.
    render(top, h("div", { class: "error", role: "alert", id: "jobs-error" },
      h("p", {}, `This view cannot be shown: ${errorMessage(err)}`),
      h("p", {}, h("a", { href: "/ui/jobs" }, "Show all jobs"))));
    return;
  }

  const filtered = Boolean(view.status || view.name);
  if (!page.items.length) {
    const empty = view.cursor
      ? h("p", { id: "jobs-empty" }, "No more jobs. ", h("a", { href: viewUrl({ ...view, cursor: null }) }, "First page"))
      : filtered
        ? h("p", { id: "jobs-empty" }, "No jobs match these filters. ", h("a", { href: viewUrl({ sort: view.sort }) }, "Clear filters"))
        : h("p", { id: "jobs-empty" }, "No jobs yet. ", h("a", { href: "/ui/submit" }, "Submit a job"), " to train a model; it will show here.");
    render(top, empty);
    return;
  }

  let tbody = null;
  const selection = makeSelection(() => tbody);
  tbody = h("tbody", {}, page.items.map((job) => jobRow(job, selection)));
  selection.refresh();
  const table = h("table", { id: "jobs-table" },
    h("caption", { class: "visually-hidden" }, "Jobs, ", describeSort(view.sort || DEFAULT_SORT)),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "jobs-check" }, h("span", { class: "visually-hidden" }, "Select")),
      sortHeader("Status", "status", view),
      sortHeader("Name", "name", view),
      h("th", { scope: "col", class: "hide-narrow" }, "Dataset"),
      h("th", { scope: "col", class: "hide-narrow" }, "Model"),
      sortHeader("Created", "created", view, { class: "hide-narrow" }),
      sortHeader("Duration", "duration", view, { class: "num hide-narrow" }),
      h("th", { scope: "col" }, "Progress"),
      h("th", { scope: "col", class: "num" }, "Best"))),
    tbody);
  const live = h("p", { id: "jobs-live", class: "muted jobs-live", "aria-live": "polite" });
  const actions = h("div", { class: "row jobs-actions" }, selection.link, selection.clear, selection.hint);
  render(top, actions, h("div", { class: "table-wrap" }, table), h("div", { class: "row jobs-bottom" }, pager(view, page.next_cursor), live));
  followActive(tbody, live);
});

function describeSort(sort) {
  const descending = sort.startsWith("-");
  const key = descending ? sort.slice(1) : sort;
  const names = { created_at: "creation time", name: "name", status: "status", duration: "duration" };
  return `sorted by ${names[key] || key}, ${descending ? "descending" : "ascending"}`;
}
