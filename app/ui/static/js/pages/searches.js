// Searches: the tenant's hyperparameter searches, newest first, paged by the API (GET /searches
// with status and cursor, as GET /jobs). The view is in the URL (?status=&cursor=), so a view is
// a link. Queued and running rows follow their searches live (how many trials have finished,
// the best value so far) by rereading the unfinished ones every POLL_MS.
import { h, render, start, api, fmtNumber, fmtTime, statusBadge, errorMessage } from "../ui.js";

const PAGE_SIZE = 25;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["queued", "running"]);
const POLL_MS = 2000;
/** One read of the tenant's unfinished searches serves every live row on the page. */
const ACTIVE_LIMIT = 200;

function viewFromUrl() {
  const q = new URLSearchParams(location.search);
  const get = (k) => (q.get(k) || "").trim() || null;
  return { status: get("status"), cursor: get("cursor") };
}

function viewUrl(view) {
  const q = new URLSearchParams();
  for (const k of ["status", "cursor"]) if (view[k]) q.set(k, view[k]);
  const s = q.toString();
  return s ? `/ui/searches?${s}` : "/ui/searches";
}

function apiQuery(view) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const k of ["status", "cursor"]) if (view[k]) q.set(k, view[k]);
  return `/searches?${q}`;
}

/** Finished trials out of max_trials, and how many run now. */
function trialsText(search) {
  const c = search.counts || {};
  const done = (c.complete || 0) + (c.pruned || 0) + (c.failed || 0);
  const running = c.running || 0;
  return `${done} / ${search.max_trials}${running ? ` (${running} running)` : ""}`;
}

function bestCell(search) {
  const best = search.best;
  if (!best || best.value === null || best.value === undefined) return h("span", { class: "muted" }, "–");
  return h("span", { title: `trial ${best.number}` },
    h("span", { class: "muted searches-metric" }, `${search.objective?.metric ?? ""} `), fmtNumber(best.value));
}

const LIVE_CELLS = {
  status: (s) => statusBadge(s.status),
  trials: (s) => trialsText(s),
  best: bestCell,
};

const LIVE_SIGNATURE = {
  status: (s) => s.status,
  trials: (s) => trialsText(s),
  best: (s) => JSON.stringify([s.best?.number, s.best?.value]),
};

function liveCell(column, search, attrs = {}) {
  const td = h("td", { "data-col": column, ...attrs }, LIVE_CELLS[column](search));
  td.dataset.sig = LIVE_SIGNATURE[column](search);
  return td;
}

function updateRow(tr, search) {
  tr.dataset.status = search.status;
  for (const td of tr.querySelectorAll("td[data-col]")) {
    const sig = LIVE_SIGNATURE[td.dataset.col](search);
    if (td.dataset.sig === sig) continue;
    td.dataset.sig = sig;
    td.replaceChildren(LIVE_CELLS[td.dataset.col](search));
  }
}

function searchRow(search) {
  const objective = search.objective ? `${search.objective.direction} ${search.objective.metric}` : "–";
  const sampler = [search.sampler?.type, search.pruner?.type && search.pruner.type !== "none" ? `${search.pruner.type} pruning` : null]
    .filter(Boolean).join(", ");
  const model = search.model
    ? h("a", { href: `/ui/models/${encodeURIComponent(search.model.name)}` }, `${search.model.name} v${search.model.version}`)
    : h("span", { class: "muted" }, search.model_name || "–");
  return h("tr", { "data-search-id": search.id, "data-status": search.status },
    liveCell("status", search, { "data-testid": "status" }),
    h("th", { scope: "row", class: "searches-name" },
      h("a", { href: `/ui/searches/${encodeURIComponent(search.id)}` }, search.name),
      h("span", { class: "mono muted searches-id" }, search.id.slice(0, 8))),
    h("td", {}, objective),
    h("td", { class: "hide-narrow" }, sampler || "–"),
    liveCell("trials", search, { class: "num" }),
    liveCell("best", search, { class: "num" }),
    h("td", { class: "hide-narrow" }, model),
    h("td", { class: "hide-narrow searches-created" }, h("time", { datetime: search.created_at }, fmtTime(search.created_at))));
}

function filtersForm(view) {
  const status = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: view.status === s }, s)));
  return h("form", { id: "searches-filters", class: "row", method: "get", action: "/ui/searches", role: "search", "aria-label": "Filter searches" },
    h("label", { for: "filter-status" }, "Status"), status,
    h("button", { type: "submit" }, "Filter"),
    view.status ? h("a", { href: "/ui/searches", id: "clear-filters" }, "Clear filter") : null);
}

function pager(view, nextCursor) {
  const links = [];
  if (view.cursor) links.push(h("a", { href: viewUrl({ ...view, cursor: null }), id: "searches-first", class: "button" }, "First page"));
  if (nextCursor) links.push(h("a", { href: viewUrl({ ...view, cursor: nextCursor }), id: "searches-next", class: "button", rel: "next" }, "Next"));
  return links.length ? h("nav", { class: "row", "aria-label": "Pages" }, links) : null;
}

/** Rereads the page's unfinished searches while there are any; a finished one keeps its row. */
function followActive(tbody, live) {
  let timer = null;
  const activeRows = () => [...tbody.querySelectorAll("tr[data-search-id]")].filter((tr) => ACTIVE.has(tr.dataset.status));
  const say = (rows) => {
    live.textContent = rows.length ? `Updating live: ${rows.length} unfinished.` : "";
  };

  async function tick() {
    timer = null;
    let rows = activeRows();
    if (!rows.length) return say(rows);
    if (!document.hidden) {
      try {
        const page = await api.get(`/searches?status=queued&status=running&limit=${ACTIVE_LIMIT}`);
        const fresh = new Map(page.items.map((s) => [s.id, s]));
        for (const tr of rows) {
          // Not among the unfinished any more: it finished; read it for its final state.
          const search = fresh.get(tr.dataset.searchId)
            ?? (await api.get(`/searches/${encodeURIComponent(tr.dataset.searchId)}`));
          updateRow(tr, search);
        }
        live.classList.remove("error");
      } catch (err) {
        if (err?.status === 401) return;
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

start(async () => {
  const view = viewFromUrl();
  const intro = h("p", { class: "muted" },
    "A search trains one job per trial, each with parameters its sampler picks from the search's ",
    "space, stops the unpromising ones early (its pruner) and registers the best trial's model. ",
    "Start one with ", h("code", {}, "tas searches create SEARCH.yaml"), " or ", h("code", {}, "POST /searches"), ".");
  const form = filtersForm(view);
  let page;
  try {
    page = await api.get(apiQuery(view));
  } catch (err) {
    if (err?.status !== 422) throw err;
    render(intro, form, h("div", { class: "error", role: "alert", id: "searches-error" },
      h("p", {}, `This view cannot be shown: ${errorMessage(err)}`),
      h("p", {}, h("a", { href: "/ui/searches" }, "Show all searches"))));
    return;
  }
  if (!page.items.length) {
    const empty = view.cursor
      ? h("p", { id: "searches-empty" }, "No more searches. ", h("a", { href: viewUrl({ ...view, cursor: null }) }, "First page"))
      : view.status
        ? h("p", { id: "searches-empty" }, "No searches match this filter. ", h("a", { href: "/ui/searches" }, "Clear filter"))
        : h("p", { id: "searches-empty" }, "No searches yet.");
    render(intro, form, empty);
    return;
  }
  const tbody = h("tbody", {}, page.items.map(searchRow));
  const table = h("table", { id: "searches-table" },
    h("caption", { class: "visually-hidden" }, "Searches, newest first"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Name"),
      h("th", { scope: "col" }, "Objective"),
      h("th", { scope: "col", class: "hide-narrow" }, "Sampler"),
      h("th", { scope: "col", class: "num" }, "Trials"),
      h("th", { scope: "col", class: "num" }, "Best"),
      h("th", { scope: "col", class: "hide-narrow" }, "Model"),
      h("th", { scope: "col", class: "hide-narrow" }, "Created"))),
    tbody);
  const live = h("p", { id: "searches-live", class: "muted jobs-live", "aria-live": "polite" });
  render(intro, form, h("div", { class: "table-wrap" }, table), h("div", { class: "row jobs-bottom" }, pager(view, page.next_cursor), live));
  followActive(tbody, live);
});
