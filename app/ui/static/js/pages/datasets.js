// The datasets page: the tenant's uploads (newest first, paged by next_cursor) and the built-ins,
// each with its schema and class counts; an upload form (multipart POST /datasets, sent with
// XMLHttpRequest for its upload progress) and a delete button per upload.
import { ApiError, session, signIn } from "../api.js";
import { api, h, render, start, fmtNumber, fmtTime, showError } from "../ui.js";

/** Uploads a page asks for. */
const PAGE_SIZE = 50;
/** The form's `format` choices (the core's format registry; "" lets the server infer it). */
const FORMATS = [
  ["", "from the file"],
  ["csv", "CSV"],
  ["npz", "NPZ (arrays X, y)"],
  ["image_folder", "ZIP of class folders"],
  ["image_annotations", "ZIP with an annotations CSV"],
];
const TASKS = [["", "from the target"], ["classification", "classification"], ["regression", "regression"]];
/** Class counts listed in full up to this many classes; more fold into a disclosure. */
const INLINE_CLASSES = 10;
/** Columns of the table (for the group header rows). */
const COLUMNS = 8;

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** class → count pairs, whether the schema keeps a mapping or a list in class order. */
function classCounts(schema) {
  const counts = schema.class_counts;
  if (!counts) return null;
  if (Array.isArray(counts)) return counts.map((n, i) => [schema.class_names?.[i] ?? String(i), n]);
  return Object.entries(counts);
}

function classesCell(schema) {
  if (schema.task !== "classification") {
    return h("td", {}, h("span", { class: "muted" }, `regression, ${schema.target_dim} target${schema.target_dim === 1 ? "" : "s"}`));
  }
  const counts = classCounts(schema);
  const k = schema.num_classes ?? counts?.length ?? schema.class_names?.length;
  const items = counts
    ? counts.map(([c, n]) => h("li", {}, h("span", { class: "class-name" }, c), " ", h("span", { class: "num" }, fmtNumber(n))))
    : (schema.class_names || []).map((c) => h("li", {}, h("span", { class: "class-name" }, c)));
  const list = h("ul", { class: "class-counts" }, items);
  const note = counts ? null : h("span", { class: "muted" }, " (counts not recorded)");
  if (items.length <= INLINE_CLASSES) return h("td", { class: "classes" }, h("div", {}, `${k} classes`, note), list);
  return h("td", { class: "classes" },
    h("details", {}, h("summary", {}, `${k} classes`, note), list));
}

function schemaDetails(ds) {
  const s = ds.schema;
  const pairs = [
    ["id", h("code", {}, ds.id)],
    ["format", s.format],
    ["task", s.task],
    ["kind", s.kind],
    ["samples", s.samples != null ? fmtNumber(s.samples) : null],
    ["input shape", s.input_shape?.join(" × ")],
    ["features", s.feature_names?.length ? s.feature_names.join(", ") : null],
    ["classes", s.class_names?.length ? s.class_names.join(", ") : null],
    ["target", s.options?.target],
    ["image size", s.options?.size],
    ["test split", s.has_test_split === undefined ? null : s.has_test_split ? "official" : "held out from the data"],
    ["sha256", ds.sha256 ? h("code", { class: "hash" }, ds.sha256) : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  return h("details", { class: "ds-schema" }, h("summary", {}, "schema"),
    h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

function datasetRow(ds, onDelete) {
  const s = ds.schema;
  return h("tr", { "data-dataset-id": ds.id, "data-builtin": String(ds.builtin) },
    h("th", { scope: "row" }, h("div", { class: "ds-name" }, ds.name), schemaDetails(ds)),
    h("td", { class: "hide-narrow" }, s.kind, h("br"), h("span", { class: "muted" }, s.format)),
    h("td", { class: "num" }, s.samples != null ? fmtNumber(s.samples) : "–"),
    h("td", { class: "num hide-narrow" }, s.input_shape?.join(" × ") ?? "–"),
    classesCell(s),
    h("td", { class: "num hide-narrow" }, ds.builtin ? "–" : fmtBytes(ds.size_bytes)),
    h("td", { class: "hide-narrow" }, ds.builtin ? h("span", { class: "muted" }, "built-in") : fmtTime(ds.created_at)),
    h("td", {}, ds.builtin || !onDelete ? null : h("button", {
      type: "button", class: "danger delete-dataset", "data-dataset-id": ds.id,
      "aria-label": `Delete dataset ${ds.name}`, onclick: (e) => onDelete(ds, e.currentTarget),
    }, "Delete")),
  );
}

/**
 * POST the form as multipart with XMLHttpRequest: fetch cannot report upload progress. Same
 * rules as api.js: the session's CSRF token, a 401 sends the browser to sign in, an error keeps
 * the API's message (and a 422's field locations).
 */
async function uploadWithProgress(formData, onProgress) {
  const s = await session();
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/datasets");
    xhr.setRequestHeader("Accept", "application/json");
    if (s.csrf_token) xhr.setRequestHeader("X-CSRF-Token", s.csrf_token);
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : null));
    xhr.upload.addEventListener("load", () => onProgress(null, null));
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 401) {
        signIn();
        reject(new ApiError(401, "sign in first"));
      } else if (xhr.status >= 400) {
        reject(new ApiError(xhr.status, body?.detail ?? (xhr.statusText || `HTTP ${xhr.status}`)));
      } else {
        resolve({ status: xhr.status, dataset: body });
      }
    });
    xhr.addEventListener("error", () => reject(new Error(
      "the upload stopped: the connection closed (a file over the server's upload limit, TAS_MAX_UPLOAD_MB, can end it early)")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was stopped")));
    xhr.send(formData);
  });
}

function field(id, label, control, hint) {
  return h("div", { class: "upload-field" },
    h("label", { for: id }, label),
    control,
    hint ? h("span", { class: "field-hint muted", id: `${id}-hint` }, hint) : null,
    h("span", { class: "field-error", id: `${id}-error`, role: "alert" }));
}

function uploadForm(onUploaded) {
  const status = h("p", { id: "upload-status", role: "status", "aria-live": "polite" });
  const inputs = {
    file: h("input", { id: "upload-file", name: "file", type: "file", required: true, accept: ".csv,.npz,.zip,text/csv,application/zip" }),
    name: h("input", { id: "upload-name", name: "name", maxlength: "255", placeholder: "the file's name", autocomplete: "off" }),
    format: h("select", { id: "upload-format", name: "format" }, FORMATS.map(([v, t]) => h("option", { value: v }, t))),
    target: h("input", { id: "upload-target", name: "target", placeholder: "target or label", autocomplete: "off" }),
    task: h("select", { id: "upload-task", name: "task" }, TASKS.map(([v, t]) => h("option", { value: v }, t))),
    size: h("input", { id: "upload-size", name: "size", placeholder: "e.g. 28 or 32x32", autocomplete: "off", size: "8" }),
  };
  for (const [key, input] of Object.entries(inputs)) input.setAttribute("aria-describedby", `upload-${key}-error`);
  const button = h("button", { type: "submit", class: "primary" }, "Upload");
  const form = h("form", { id: "upload-form", class: "upload-form", novalidate: true },
    h("div", { class: "upload-grid" },
      field("upload-file", "File (CSV, NPZ or ZIP of images)", inputs.file),
      field("upload-name", "Name", inputs.name),
      field("upload-format", "Format", inputs.format),
      field("upload-target", "Target column", inputs.target, "CSV: default target or label"),
      field("upload-task", "Task", inputs.task),
      field("upload-size", "Image size", inputs.size, "images only")),
    h("div", { class: "row" }, button, status));

  const clearErrors = () => {
    for (const [key, input] of Object.entries(inputs)) {
      input.removeAttribute("aria-invalid");
      document.getElementById(`upload-${key}-error`).textContent = "";
    }
    status.replaceChildren();
    status.className = "";
  };
  const blame = (key, msg) => {
    inputs[key].setAttribute("aria-invalid", "true");
    document.getElementById(`upload-${key}-error`).textContent = msg;
  };

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    const file = inputs.file.files[0];
    if (!file) {
      blame("file", "choose a file to upload");
      inputs.file.focus();
      return;
    }
    const data = new FormData();
    data.append("file", file, file.name);
    for (const key of ["name", "format", "target", "task", "size"]) {
      const value = inputs[key].value.trim();
      if (value) data.append(key, value);
    }
    button.disabled = true;
    const total = fmtBytes(file.size);
    status.textContent = `Uploading ${file.name} (${total})…`;
    try {
      const { status: code, dataset } = await uploadWithProgress(data, (loaded, size) => {
        status.textContent = loaded === null
          ? `Uploaded ${total}; reading the data…`
          : `Uploading ${file.name}: ${size ? Math.floor((100 * loaded) / size) : "?"}% (${fmtBytes(loaded)} of ${fmtBytes(size ?? file.size)})`;
      });
      const s = dataset.schema;
      status.className = "ok";
      status.textContent = code === 200
        ? `${dataset.name} was uploaded before with these options: the same dataset (${dataset.id}).`
        : `Uploaded ${dataset.name}: ${fmtNumber(s.samples)} samples, ${s.task}${s.num_classes ? `, ${s.num_classes} classes` : ""}.`;
      form.reset();
      onUploaded(dataset, code === 201);
    } catch (err) {
      status.replaceChildren();
      const problems = err instanceof ApiError ? err.problems() : [];
      let placed = false;
      for (const [loc, msg] of problems) {
        const key = loc.find((part) => part in inputs);
        if (key) { blame(key, msg); placed = true; }
      }
      if (!placed) {
        status.className = "error";
        showError(status, err);
      } else {
        status.className = "error";
        status.textContent = "The upload was refused: see the field marked above.";
      }
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

start(async (session_) => {
  const canWrite = (session_.scopes || []).includes("datasets:write");
  const uploadsBody = h("tbody", { id: "uploads-body" });
  const builtinsBody = h("tbody", { id: "builtins-body" });
  const tableStatus = h("div", { id: "datasets-status", "aria-live": "polite" });
  const more = h("button", { type: "button", id: "datasets-more", hidden: true }, "Load more uploads");
  const noUploads = h("tr", { class: "empty" }, h("td", { colspan: String(COLUMNS), class: "muted" }, "No uploads yet."));
  let cursor = null;
  // Without datasets:write the rows carry no delete button.
  const onDelete = canWrite ? deleteDataset : null;

  async function deleteDataset(ds, button) {
    if (!window.confirm(`Delete the dataset ${ds.name}? Jobs already finished keep their results.`)) return;
    button.disabled = true;
    tableStatus.replaceChildren();
    try {
      await api.delete(`/datasets/${encodeURIComponent(ds.id)}`);
      uploadsBody.querySelector(`tr[data-dataset-id="${CSS.escape(ds.id)}"]`)?.remove();
      if (!uploadsBody.querySelector("tr[data-dataset-id]")) uploadsBody.append(noUploads);
      tableStatus.replaceChildren(h("p", { class: "ok" }, `Deleted ${ds.name}.`));
    } catch (err) {
      button.disabled = false;
      showError(tableStatus, err);
    }
  }

  function addUploads(items, { first = false } = {}) {
    const rows = items.map((ds) => datasetRow(ds, onDelete));
    if (!rows.length) return;
    noUploads.remove();
    if (first) uploadsBody.prepend(...rows);
    else uploadsBody.append(...rows);
  }

  async function loadPage() {
    const page = await api.get(`/datasets?limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    const isFirst = cursor === null;
    const uploads = page.items.filter((d) => !d.builtin);
    if (isFirst) builtinsBody.append(...page.items.filter((d) => d.builtin).map((ds) => datasetRow(ds, onDelete)));
    addUploads(uploads);
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", async () => {
    more.disabled = true;
    try { await loadPage(); } catch (err) { showError(tableStatus, err); } finally { more.disabled = false; }
  });

  const group = (text) => h("tr", { class: "group" }, h("th", { colspan: String(COLUMNS), scope: "colgroup" }, text));
  uploadsBody.append(group("Your uploads"), noUploads);
  builtinsBody.append(group("Built-in"));

  const onUploaded = (ds, created) => {
    const existing = uploadsBody.querySelector(`tr[data-dataset-id="${CSS.escape(ds.id)}"]`);
    // A new dataset goes first (newest first); one uploaded before is redrawn where it is,
    // or put first when its page is not loaded.
    if (existing && !created) existing.replaceWith(datasetRow(ds, onDelete));
    else {
      noUploads.remove();
      uploadsBody.querySelector("tr.group").after(datasetRow(ds, onDelete));
    }
  };

  render(
    canWrite
      ? h("section", { class: "panel upload-panel", "aria-labelledby": "upload-h" },
        h("h2", { id: "upload-h" }, "Upload a dataset"),
        h("p", { class: "muted upload-help" },
          "A CSV (a target or label column), an NPZ with arrays X and y, or a ZIP of images in class ",
          "folders or with an annotations CSV. The schema is inferred; the same bytes and options ",
          "give the same dataset."),
        uploadForm(onUploaded))
      : h("p", { class: "muted", id: "upload-readonly" }, "Uploading needs a key with datasets:write."),
    h("section", { class: "datasets-section", "aria-labelledby": "datasets-h" },
      h("h2", { id: "datasets-h" }, "Datasets"),
      tableStatus,
      h("div", { class: "table-wrap" }, h("table", { id: "datasets-table" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"),
          h("th", { scope: "col", class: "hide-narrow" }, "Kind"),
          h("th", { scope: "col", class: "num" }, "Samples"),
          h("th", { scope: "col", class: "num hide-narrow" }, "Input shape"),
          h("th", { scope: "col" }, "Classes"),
          h("th", { scope: "col", class: "num hide-narrow" }, "Size"),
          h("th", { scope: "col", class: "hide-narrow" }, "Uploaded"),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
        uploadsBody, builtinsBody)),
      more),
  );
  await loadPage();
});
