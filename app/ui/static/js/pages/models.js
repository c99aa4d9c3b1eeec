// The models page: the tenant's registered models (GET /models, in name order, paged by its
// Link header), each with its latest version, its aliases and when it last got a version.
import { h, render, start, fmtNumber, fmtTime, parseTime } from "../ui.js";
import { getPage } from "../paged.js";

/** Models a page asks for: each model's answer carries up to 100 versions with their cards. */
const PAGE_SIZE = 50;
/** GET /models lists at most this many versions of a model (its newest). */
const LISTED_VERSIONS = 100;

/** A version's headline number: the monitored metric at the kept epoch, else a val_ metric. */
function headline(version) {
  const best = version?.card?.metrics?.best;
  if (best && best.metric) return [best.metric, best.value];
  const m = version?.metrics || {};
  for (const key of ["val_accuracy", "val_loss", "val_mae", "train_loss"]) {
    if (typeof m[key] === "number") return [key, m[key]];
  }
  return null;
}

function aliasChips(model) {
  const entries = Object.entries(model.aliases || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("span", { class: "muted" }, "–");
  return h("ul", { class: "alias-chips" },
    entries.map(([alias, version]) =>
      h("li", { class: "alias-chip", "data-alias": alias }, `${alias} → v${version}`)));
}

function modelRow(model) {
  const latest = model.versions.find((v) => v.version === model.latest_version) || model.versions[0];
  const metric = headline(latest);
  const updated = model.versions
    .map((v) => v.created_at)
    .reduce((a, b) => (parseTime(b) > parseTime(a) ? b : a), model.versions[0]?.created_at);
  const count = model.versions.length >= LISTED_VERSIONS ? `${LISTED_VERSIONS}+` : model.versions.length;
  const href = `/ui/models/${encodeURIComponent(model.name)}`;
  return h("tr", { "data-model": model.name },
    h("th", { scope: "row" }, h("a", { href }, model.name)),
    h("td", { class: "num" }, `v${model.latest_version}`),
    h("td", {}, aliasChips(model)),
    h("td", { class: "hide-narrow" },
      metric ? [h("span", { class: "muted" }, `${metric[0]} `), fmtNumber(metric[1])] : "–"),
    h("td", { class: "num hide-narrow" }, count),
    h("td", {}, h("time", { datetime: updated || "" }, fmtTime(updated))),
  );
}

start(async () => {
  const tbody = h("tbody");
  const status = h("p", { class: "muted", id: "models-status", "aria-live": "polite" });
  const more = h("button", { type: "button", id: "models-more", hidden: true }, "Load more models");
  const table = h("div", { class: "table-wrap" },
    h("table", { id: "models-table" },
      h("caption", { class: "visually-hidden" }, "Registered models"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Model"),
        h("th", { scope: "col", class: "num" }, "Latest"),
        h("th", { scope: "col" }, "Aliases"),
        h("th", { scope: "col", class: "hide-narrow" }, "Latest version's metric"),
        h("th", { scope: "col", class: "num hide-narrow" }, "Versions"),
        h("th", { scope: "col" }, "Updated"))),
      tbody));
  const intro = h("p", { class: "muted" },
    "A job that succeeds registers its model as the next version of its name ",
    "(spec.model_name, else the job's name). Aliases such as production point at a version: ",
    h("code", {}, "/predict"), " with ", h("code", {}, "name@alias"), " uses it.");

  let next = `/models?limit=${PAGE_SIZE}`;
  let shown = 0;
  async function loadPage() {
    more.disabled = true;
    status.textContent = "Loading…";
    try {
      const { data, next: after } = await getPage(next);
      tbody.append(...data.map(modelRow));
      shown += data.length;
      next = after;
      more.hidden = !next;
      status.textContent = shown === 0
        ? "No models yet."
        : `${shown} model${shown === 1 ? "" : "s"}${next ? " so far" : ""}.`;
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener("click", () => {
    loadPage().catch((err) => {
      status.textContent = "";
      status.append(h("span", { class: "error", role: "alert" }, String(err.message || err)));
    });
  });

  render(intro, table, h("div", { class: "row" }, more, status));
  await loadPage();
  if (shown === 0) {
    table.hidden = true;
    status.replaceChildren("No models yet: ", h("a", { href: "/ui/submit" }, "submit a job"),
      " and its model appears here when it succeeds.");
  }
});
