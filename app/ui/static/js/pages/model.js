// One model: its versions (newest first, paged by GET /models/{name}'s Link header), its
// aliases with their history (GET /models/{name}/alias-history), a form to point an alias at a
// version (PUT /models/{name}/aliases/{alias}), the card of a version, and download links.
import { api, h, render, setTitle, start, fmtNumber, fmtTime, showError } from "../ui.js";
import { getPage } from "../paged.js";

const name = document.getElementById("page").dataset.id;
const base = `/models/${encodeURIComponent(name)}`;

/** The download formats GET .../download?format= takes (the route's `Format` choices). */
const FORMATS = [
  ["safetensors", "weights with the card in the header"],
  ["onnx", "ONNX export, the card in its metadata"],
];
/** Versions a page of the versions table asks for. */
const PAGE_SIZE = 50;
/** Alias changes the history shows. */
const HISTORY_LIMIT = 200;
/** How an alias-history event reads. */
const CHANGES = {
  set: (e) => (e.version ? `set to v${e.version}` : "set (version not recorded)"),
  deleted: (e) => (e.version ? `deleted (was v${e.version})` : "deleted"),
  version_deleted: (e) => `removed with v${e.version}`,
};

const state = { model: null, versions: [], next: null, canWrite: false };

const versionsPath = (limit) => `${base}?limit=${limit}`;
const aliasPath = (alias) => `${base}/aliases/${encodeURIComponent(alias)}`;

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** A version's size: its parameter count and, as float32, about how many bytes the weights are. */
function sizeCell(version) {
  const total = version.card?.parameters?.total;
  if (!Number.isFinite(total)) return h("td", { class: "num hide-narrow" }, "–");
  return h("td", { class: "num hide-narrow", title: `${total.toLocaleString("en")} parameters; about ${fmtBytes(total * 4)} as float32` },
    `${fmtNumber(total)} params`, h("br"), h("span", { class: "muted" }, `≈ ${fmtBytes(total * 4)}`));
}

/** The kept epoch's monitored metric, then the final epoch's validation numbers. */
function metricsCell(version) {
  const best = version.card?.metrics?.best;
  const m = version.metrics || {};
  const items = [];
  if (best?.metric) items.push([`${best.metric} (best, epoch ${best.epoch})`, best.value]);
  for (const key of ["val_accuracy", "val_loss", "val_mae", "val_rmse", "train_loss"]) {
    if (typeof m[key] === "number" && key !== best?.metric) items.push([key, m[key]]);
  }
  if (!items.length) return h("td", { class: "muted hide-narrow" }, "–");
  return h("td", { class: "hide-narrow" }, h("dl", { class: "kv model-metrics" },
    items.slice(0, 3).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, fmtNumber(v))])));
}

function downloadLinks(version) {
  return h("ul", { class: "downloads" }, FORMATS.map(([format, what]) => h("li", {},
    h("a", {
      href: `${base}/versions/${version.version}/download?format=${format}`,
      download: `${name}-v${version.version}.${format}`,
      title: what,
      "data-format": format,
    }, format))));
}

function versionRow(version) {
  const job = version.job_id;
  const aliases = Object.entries(state.model.aliases || {})
    .filter(([, v]) => v === version.version).map(([a]) => a).sort();
  return h("tr", { "data-version": String(version.version), id: `v${version.version}` },
    h("th", { scope: "row", class: "num" }, `v${version.version}`,
      aliases.length ? h("div", { class: "alias-list" }, aliases.map((a) => h("span", { class: "alias-chip" }, a))) : null),
    h("td", { class: "hide-narrow" }, h("time", { datetime: version.created_at }, fmtTime(version.created_at))),
    h("td", {}, h("a", { href: `/ui/jobs/${encodeURIComponent(job)}`, class: "mono", title: job }, job.slice(0, 8))),
    metricsCell(version),
    sizeCell(version),
    h("td", {}, downloadLinks(version)),
    h("td", {}, h("button", {
      type: "button", class: "show-card", "data-version": String(version.version),
      onclick: () => showCard(version.version),
    }, "Card")),
  );
}

function drawVersions() {
  const tbody = document.querySelector("#versions-table tbody");
  tbody.replaceChildren(...state.versions.map(versionRow));
  const more = document.getElementById("versions-more");
  more.hidden = !state.next;
  document.getElementById("versions-count").textContent = state.next
    ? `newest ${state.versions.length} shown`
    : `${state.versions.length}`;
}

async function loadOlder() {
  const more = document.getElementById("versions-more");
  more.disabled = true;
  try {
    const { data, next } = await getPage(state.next);
    state.versions.push(...data.versions);
    state.next = next;
    drawVersions();
  } catch (err) {
    showError(document.getElementById("versions-error"), err);
  } finally {
    more.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Aliases

function drawAliases() {
  const entries = Object.entries(state.model.aliases || {}).sort(([a], [b]) => a.localeCompare(b));
  const body = document.querySelector("#aliases-table tbody");
  document.getElementById("aliases-table").hidden = !entries.length;
  document.getElementById("aliases-empty").hidden = entries.length > 0;
  body.replaceChildren(...entries.map(([alias, version]) => h("tr", { "data-alias": alias },
    h("th", { scope: "row" }, h("code", {}, `${name}@${alias}`)),
    h("td", { class: "num" }, h("a", { href: `#v${version}` }, `v${version}`)),
    state.canWrite
      ? h("td", {}, h("button", {
        type: "button", class: "danger delete-alias", "data-alias": alias,
        "aria-label": `Delete alias ${alias}`, onclick: () => deleteAlias(alias),
      }, "Delete"))
      : null)));
}

function drawHistory(events) {
  const list = document.getElementById("alias-history");
  if (!events.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No alias changes recorded."));
    return;
  }
  list.replaceChildren(h("div", { class: "table-wrap" }, h("table", { id: "alias-history-table" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "When"), h("th", { scope: "col" }, "Alias"), h("th", { scope: "col" }, "Change"))),
    h("tbody", {}, events.map((e) => h("tr", { "data-alias": e.alias, "data-action": e.action },
      h("td", {}, h("time", { datetime: e.at }, fmtTime(e.at))),
      h("td", {}, e.alias),
      h("td", {}, (CHANGES[e.action] || (() => e.action))(e))))))));
}

/** Aliases and their history changed: read both again (the aliases from a one-version page). */
async function refreshAliases() {
  const [model, history] = await Promise.all([
    api.get(versionsPath(1)),
    api.get(`${base}/alias-history?limit=${HISTORY_LIMIT}`),
  ]);
  state.model.aliases = model.aliases;
  state.model.latest_version = model.latest_version;
  drawAliases();
  drawVersions();
  drawHistory(history);
}

function aliasForm() {
  const status = h("p", { id: "alias-status", class: "form-status", role: "status", "aria-live": "polite" });
  const aliasError = h("span", { id: "alias-error", class: "field-error" });
  const versionError = h("span", { id: "version-error", class: "field-error" });
  const aliasInput = h("input", {
    id: "alias-input", name: "alias", required: true, maxlength: "64", placeholder: "production",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}", autocomplete: "off",
    "aria-describedby": "alias-error", list: "alias-names",
  });
  const versionInput = h("input", {
    id: "version-input", name: "version", type: "number", required: true, min: "1", step: "1",
    value: String(state.model.latest_version), "aria-describedby": "version-error", inputmode: "numeric",
  });
  const form = h("form", { id: "alias-form", class: "alias-form", novalidate: true },
    h("div", { class: "alias-field" }, h("label", { for: "alias-input" }, "Alias"), aliasInput, aliasError),
    h("div", { class: "alias-field" }, h("label", { for: "version-input" }, "Version"), versionInput, versionError),
    h("div", { class: "alias-field alias-submit" }, h("button", { type: "submit", class: "primary" }, "Set alias")),
    status,
    h("datalist", { id: "alias-names" },
      Object.keys(state.model.aliases || {}).map((a) => h("option", { value: a }))));
  const fields = { alias: [aliasInput, aliasError], version: [versionInput, versionError] };

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const [input, error] of Object.values(fields)) {
      input.removeAttribute("aria-invalid");
      error.textContent = "";
    }
    status.replaceChildren();
    const alias = aliasInput.value.trim();
    const version = Number(versionInput.value);
    // The browser's own checks first, shown in the same places as the API's.
    const local = [];
    if (!aliasInput.checkValidity() || !alias) local.push(["alias", "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"]);
    if (!Number.isInteger(version) || version < 1) local.push(["version", "a version number, 1 or more"]);
    if (local.length) {
      for (const [field, msg] of local) markField(fields[field], msg);
      fields[local[0][0]][0].focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.replaceChildren(h("span", { class: "muted" }, "Saving…"));
    try {
      const out = await api.put(aliasPath(alias), { version });
      status.replaceChildren(h("span", { class: "ok" }, `${out.name}@${out.alias} → v${out.version}`));
      await refreshAliases();
    } catch (err) {
      status.replaceChildren();
      // A 422 names its field: the body's `version`, or the path's alias.
      const problems = err.problems ? err.problems() : [];
      let placed = false;
      for (const [loc, msg] of problems) {
        const key = loc.includes("alias") ? "alias" : loc.includes("version") ? "version" : null;
        if (key) { markField(fields[key], msg); placed = true; }
      }
      if (!placed) {
        // A 404 (no such version) belongs to the version field; anything else to the form.
        if (err.status === 404 && /version/i.test(err.message)) markField(fields.version, err.message);
        else showError(status, err);
      }
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function markField([input, error], msg) {
  input.setAttribute("aria-invalid", "true");
  error.textContent = msg;
}

async function deleteAlias(alias) {
  const where = document.getElementById("alias-status");
  if (!window.confirm(`Delete ${name}@${alias}? /predict with it answers 404 from then on.`)) return;
  try {
    await api.delete(aliasPath(alias));
    where.replaceChildren(h("span", { class: "ok" }, `Deleted ${name}@${alias}.`));
    await refreshAliases();
  } catch (err) {
    showError(where, err);
  }
}

// ---------------------------------------------------------------------------------------------
// The card

function kv(pairs) {
  const items = pairs.filter(([, v]) => v !== null && v !== undefined && v !== "");
  return h("dl", { class: "kv" }, items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

const shape = (s) => (Array.isArray(s) ? s.join(" × ") : null);
const list = (xs, max = 20) => (Array.isArray(xs) && xs.length
  ? `${xs.slice(0, max).join(", ")}${xs.length > max ? `, … (${xs.length} in all)` : ""}` : null);
const plain = (v) => (v === null || v === undefined ? null
  : typeof v === "number" ? fmtNumber(v)
    : Array.isArray(v) ? v.map(plain).join(", ")
      : typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k}: ${plain(x)}`).join("; ")
        : String(v));

function perClassTable(perClass) {
  const rows = Object.entries(perClass || {});
  if (!rows.length) return null;
  return h("div", { class: "table-wrap" }, h("table", { class: "card-per-class" },
    h("caption", {}, "Per class (validation)"),
    h("thead", {}, h("tr", {}, ["class", "precision", "recall", "f1", "support"].map((c, i) =>
      h("th", { scope: "col", class: i ? "num" : null }, c)))),
    h("tbody", {}, rows.map(([cls, m]) => h("tr", {},
      h("th", { scope: "row" }, cls),
      ["precision", "recall", "f1", "support"].map((k) => h("td", { class: "num" }, fmtNumber(m[k]))))))));
}

function drawCard(card) {
  const metrics = card.metrics || {};
  const arch = Object.entries(card.arch || {}).filter(([, v]) => v !== null && v !== undefined);
  const pre = card.preprocessing || {};
  const norm = pre.normalization;
  const cardUrl = `${base}/versions/${card.version}/card`;
  return [
    h("div", { class: "grid card-grid" },
      h("section", { class: "card-part" }, h("h3", {}, "What it is"), kv([
        ["model", `${card.name} v${card.version}`],
        ["trained by", h("a", { href: `/ui/jobs/${encodeURIComponent(card.job_id)}`, class: "mono" }, card.job_id)],
        ["task", card.task],
        ["dataset", card.dataset],
        ["input shape", shape(card.input_shape)],
        ["classes", card.num_classes ? `${card.num_classes}: ${list(card.class_names) || ""}` : null],
        ["features", list(card.feature_names)],
        ["output", card.output ? `${card.output} (${card.out_dim} value${card.out_dim === 1 ? "" : "s"})` : null],
        ["loss", card.loss],
        ["parameters", plain(card.parameters)],
        ["weights", card.weights ? plain(card.weights) : null],
        ["torch", card.torch_version],
        ["created", card.created_at ? fmtTime(card.created_at) : null],
        ["weights sha256", card.weights_sha256 ? h("code", { class: "hash" }, card.weights_sha256) : null],
      ])),
      h("section", { class: "card-part" }, h("h3", {}, "Architecture"),
        kv(arch.map(([k, v]) => [k, plain(v)]))),
      h("section", { class: "card-part" }, h("h3", {}, "Preprocessing"), kv([
        ["input", pre.input_dtype && pre.input_shape ? `${pre.input_dtype}, ${pre.input_shape.join(" × ")}` : null],
        ["images", card.kind === "image" || (card.input_shape || []).length === 3 ? pre.images : null],
        ["normalization", norm ? `${norm.formula} (${norm.kind})` : "none"],
        ["mean", norm ? plain(norm.mean) : null],
        ["std", norm ? plain(norm.std) : null],
        ["outputs", pre.outputs],
        ["target scaling", card.target_scaling ? plain(card.target_scaling) : null],
        ["pretrained", card.pretrained ? plain(card.pretrained) : null],
      ])),
      h("section", { class: "card-part" }, h("h3", {}, "Metrics"), kv([
        ["best", metrics.best ? `${metrics.best.metric} ${fmtNumber(metrics.best.value)} at epoch ${metrics.best.epoch}` : null],
        ...Object.entries(metrics)
          .filter(([k, v]) => typeof v === "number")
          .map(([k, v]) => [k, fmtNumber(v)]),
        ["macro avg", metrics.val_macro ? plain(metrics.val_macro) : null],
        ["final epoch", metrics.final ? plain(metrics.final) : null],
      ]), perClassTable(metrics.val_per_class))),
    h("details", { class: "card-json" },
      h("summary", {}, "The card as JSON (", h("a", { href: cardUrl }, "open"), ")"),
      h("pre", {}, JSON.stringify(card, null, 2))),
  ];
}

async function showCard(version) {
  const panel = document.getElementById("card-panel");
  const body = document.getElementById("card-body");
  document.getElementById("card-title").textContent = `Card · v${version}`;
  panel.dataset.version = String(version);
  body.replaceChildren(h("p", { class: "muted" }, "Loading the card…"));
  try {
    const card = await api.get(`${base}/versions/${version}/card`);
    if (panel.dataset.version !== String(version)) return; // another card was asked for since
    body.replaceChildren(...drawCard(card));
  } catch (err) {
    showError(body, err);
  }
}

// ---------------------------------------------------------------------------------------------

start(async (session) => {
  setTitle(`Model ${name}`);
  state.canWrite = (session.scopes || []).includes("models:write");
  const [{ data: model, next }, history] = await Promise.all([
    getPage(versionsPath(PAGE_SIZE)),
    api.get(`${base}/alias-history?limit=${HISTORY_LIMIT}`),
  ]);
  state.model = model;
  state.versions = model.versions;
  state.next = next;

  const aliasTable = h("div", { class: "table-wrap" }, h("table", { id: "aliases-table" },
    h("caption", { class: "visually-hidden" }, "Current aliases"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Alias"), h("th", { scope: "col", class: "num" }, "Version"),
      state.canWrite ? h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")) : null)),
    h("tbody")));

  render(
    h("p", { class: "muted model-summary" },
      `Latest version v${model.latest_version}. Predict with `, h("code", {}, name),
      " (the latest), ", h("code", {}, `${name}:N`), " or ", h("code", {}, `${name}@alias`), "."),
    h("div", { class: "grid model-top" },
      h("section", { class: "panel", id: "aliases-panel", "aria-labelledby": "aliases-h" },
        h("h2", { id: "aliases-h" }, "Aliases"),
        h("p", { id: "aliases-empty", class: "muted" }, "No aliases yet."),
        aliasTable,
        state.canWrite
          ? aliasForm()
          : h("p", { class: "muted", id: "alias-readonly" }, "Moving an alias needs a key with models:write."),
      ),
      h("section", { class: "panel", id: "history-panel", "aria-labelledby": "history-h" },
        h("h2", { id: "history-h" }, "Alias history"),
        h("div", { id: "alias-history" }))),
    h("section", { "aria-labelledby": "versions-h", class: "model-section" },
      h("h2", { id: "versions-h" }, "Versions (", h("span", { id: "versions-count" }), ")"),
      h("div", { class: "table-wrap" }, h("table", { id: "versions-table" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num" }, "Version"),
          h("th", { scope: "col", class: "hide-narrow" }, "Created"),
          h("th", { scope: "col" }, "Source job"),
          h("th", { scope: "col", class: "hide-narrow" }, "Metrics"),
          h("th", { scope: "col", class: "num hide-narrow" }, "Size"),
          h("th", { scope: "col" }, "Download"),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Card")))),
        h("tbody"))),
      h("div", { class: "row" },
        h("button", { type: "button", id: "versions-more", hidden: true, onclick: loadOlder }, "Load older versions"),
        h("div", { id: "versions-error" }))),
    h("section", { class: "model-section", id: "card-panel", "aria-labelledby": "card-title" },
      h("h2", { id: "card-title" }, "Card"),
      h("div", { id: "card-body", "aria-live": "polite" })),
  );
  drawAliases();
  drawHistory(history);
  drawVersions();
  await showCard(model.latest_version);
});
