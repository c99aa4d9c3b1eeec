// Submit: a job spec edited as JSON (the whole spec: anything the API takes), with inputs for the
// fields most runs change kept in step with the text. POST /jobs; a 422's problems are shown at
// the field they name (under its input, or listed under the editor with its path and a button
// that selects it in the text); invalid JSON is caught here with its line and column.
// ?from=JOB_ID starts from that job's spec, to run it again with changes.
import { h, render, start, api, ApiError, errorMessage } from "../ui.js";

/** A small spec that trains in seconds: what the editor holds when nothing else is asked for. */
const EXAMPLE = {
  name: "iris-mlp",
  dataset: { name: "iris", val_fraction: 0.15 },
  model: { arch: "mlp", hidden: [16] },
  training: { epochs: 10, batch_size: 16, optimizer: "adam", lr: 0.01 },
};

/**
 * The inputs kept in step with the text: each edits one spec path, and shows the API's problems
 * whose location is one of `owns` (the dataset's own checks blame `dataset`, an upload `dataset.id`).
 */
const FIELDS = [
  { path: "name", label: "Name", kind: "text", owns: ["name"], hint: "letters, digits, . _ -" },
  { path: "dataset.name", label: "Dataset", kind: "dataset", owns: ["dataset.name", "dataset.id", "dataset"] },
  { path: "model.arch", label: "Architecture", kind: "text", owns: ["model.arch"], hint: "mlp, cnn, resnet18, …" },
  { path: "training.epochs", label: "Epochs", kind: "integer", owns: ["training.epochs"] },
  { path: "training.batch_size", label: "Batch size", kind: "integer", owns: ["training.batch_size"] },
  { path: "training.lr", label: "Learning rate", kind: "number", owns: ["training.lr"] },
];

/** What to do about a refusal other than a 422, by HTTP status (the API's message says what). */
const REFUSALS = {
  400: "The API could not read the request.",
  403: "Submitting needs an API key with the jobs:write scope; if this key has it, reload the page (the session may have changed).",
  413: "Make the spec smaller.",
  415: "The API takes the spec as JSON.",
  429: "A limit was reached: try again once some of your jobs have finished.",
};

// ---- JSON with positions -------------------------------------------------------------------

/**
 * Where each path of a JSON text lies (path "a.b.0" → {key, start, end} offsets), or a
 * SyntaxError carrying `pos` when the text is not JSON. JSON.parse gives neither (its messages
 * differ between browsers), and the editor needs both: a line and column for a typo, and the
 * text of a field the API blamed.
 */
function locate(text) {
  let i = 0;
  const spans = new Map();
  const fail = (what) => {
    const err = new SyntaxError(what);
    err.pos = Math.min(i, text.length);
    throw err;
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const string = () => {
    const from = i++;
    for (;;) {
      const c = text[i];
      if (c === undefined) fail("a string is not closed (a missing \")");
      if (c === '"') return JSON.parse(text.slice(from, ++i));
      if (c < " ") fail("a line break inside a string (write it as \\n)");
      if (c === "\\") {
        const e = text[i + 1];
        if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6;
        else if (e !== undefined && "\"\\/bfnrt".includes(e)) i += 2;
        else { i++; fail("an unknown escape in a string"); }
      } else i++;
    }
  };
  const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const value = (path, key) => {
    ws();
    const start = i;
    const c = text[i];
    if (c === "{") object(path);
    else if (c === "[") array(path);
    else if (c === '"') string();
    else if (c === "-" || (c >= "0" && c <= "9")) {
      NUMBER.lastIndex = i;
      if (!NUMBER.exec(text)) fail("not a number");
      i = NUMBER.lastIndex;
    } else {
      const word = ["true", "false", "null"].find((w) => text.startsWith(w, i));
      if (!word) {
        if (c === undefined) fail("the text ends where a value should be");
        fail(c === "'" ? "strings take double quotes" : `unexpected ${JSON.stringify(c)} where a value should be`);
      }
      i += word.length;
    }
    spans.set(path.join("."), { key: key ?? start, start, end: i });
  };
  const object = (path) => {
    i++;
    ws();
    if (text[i] === "}") { i++; return; }
    for (;;) {
      ws();
      if (text[i] !== '"') fail(text[i] === "}" ? "a comma before '}' (JSON takes no trailing comma)" : "a property name must be in double quotes");
      const key = i;
      const name = string();
      ws();
      if (text[i] !== ":") fail(`expected ':' after "${name}"`);
      i++;
      value([...path, name], key);
      ws();
      if (text[i] === ",") { i++; continue; }
      if (text[i] === "}") { i++; return; }
      fail("expected ',' or '}' (a missing comma?)");
    }
  };
  const array = (path) => {
    i++;
    ws();
    if (text[i] === "]") { i++; return; }
    for (let n = 0; ; n++) {
      value([...path, n]);
      ws();
      if (text[i] === ",") {
        i++;
        ws();
        if (text[i] === "]") fail("a comma before ']' (JSON takes no trailing comma)");
        continue;
      }
      if (text[i] === "]") { i++; return; }
      fail("expected ',' or ']' (a missing comma?)");
    }
  };
  value([]);
  ws();
  if (i < text.length) fail("more text after the end of the spec");
  return spans;
}

function lineColumn(text, pos) {
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  return { line, column: pos - before.lastIndexOf("\n") };
}

/** The spec in the editor, or a SyntaxError with `line`, `column` and `pos`. */
function readSpec(text) {
  let spec;
  try {
    locate(text);
    spec = JSON.parse(text);
  } catch (err) {
    const pos = err.pos ?? 0;
    throw Object.assign(new SyntaxError(err.message), { pos, ...lineColumn(text, pos) });
  }
  if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
    throw Object.assign(new SyntaxError("the spec must be a JSON object: { … }"), { pos: 0, line: 1, column: 1 });
  }
  return spec;
}

// ---- the spec as a value -------------------------------------------------------------------

function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o !== null && typeof o === "object" ? o[k] : undefined), obj);
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) {
    if (o[k] === null || typeof o[k] !== "object" || Array.isArray(o[k])) o[k] = {};
    o = o[k];
  }
  if (value === undefined) delete o[keys.at(-1)];
  else o[keys.at(-1)] = value;
}

/** A stored spec without its null fields (null is every such field's default), for reading. */
function withoutNulls(value) {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null).map(([k, v]) => [k, withoutNulls(v)]));
}

const pretty = (spec) => JSON.stringify(spec, null, 2);

// ---- the page ------------------------------------------------------------------------------

function datasetOptions(datasets) {
  const builtins = datasets.filter((d) => d.builtin);
  const uploads = datasets.filter((d) => !d.builtin);
  const describe = (d) => {
    const s = d.schema || {};
    const classes = s.num_classes ? `, ${s.num_classes} classes` : "";
    return `${s.kind ?? d.format}, ${s.task ?? ""}${classes}`;
  };
  return [
    h("option", { value: "" }, "— choose a dataset —"),
    builtins.length ? h("optgroup", { label: "Built-in" },
      builtins.map((d) => h("option", { value: `name:${d.id}` }, `${d.name} (${describe(d)})`))) : null,
    uploads.length ? h("optgroup", { label: "Uploads" },
      uploads.map((d) => h("option", { value: `id:${d.id}` }, `${d.name} · ${d.id.slice(0, 8)} (${describe(d)})`))) : null,
  ];
}

function fieldInput(field, datasets) {
  const id = `f-${field.path}`;
  const common = { id, name: field.path, "data-path": field.path };
  if (field.kind === "dataset") return h("select", common, datasetOptions(datasets));
  if (field.kind === "text") return h("input", { ...common, type: "text", autocomplete: "off", spellcheck: "false" });
  return h("input", { ...common, type: "number", step: field.kind === "integer" ? "1" : "any", inputmode: field.kind === "integer" ? "numeric" : "decimal" });
}

/** The input's value as the spec holds it; undefined drops the key (the API's default). */
function inputValue(field, el) {
  const raw = el.value.trim();
  if (field.kind === "text") return raw;
  if (field.kind === "dataset") return raw;
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw;
}

function showValue(field, el, spec) {
  if (field.kind === "dataset") {
    const ds = spec.dataset;
    const value = ds?.id != null ? `id:${ds.id}` : ds?.name != null ? `name:${ds.name}` : "";
    if (value && ![...el.options].some((o) => o.value === value)) {
      el.append(h("option", { value, "data-extra": "" }, `${value.slice(value.indexOf(":") + 1)} (not in the list)`));
    }
    el.value = value;
    return;
  }
  const v = getPath(spec, field.path);
  el.value = v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
}

function setDataset(spec, value) {
  const ds = spec.dataset !== null && typeof spec.dataset === "object" && !Array.isArray(spec.dataset) ? { ...spec.dataset } : {};
  delete ds.name;
  delete ds.id;
  if (value.startsWith("name:")) ds.name = value.slice(5);
  else if (value.startsWith("id:")) ds.id = value.slice(3);
  spec.dataset = ds;
}

/** The spec to start from: the job named by ?from= (to run it again), or the example. */
async function initialSpec() {
  const from = new URLSearchParams(location.search).get("from");
  if (!from) return { spec: EXAMPLE };
  try {
    const job = await api.get(`/jobs/${encodeURIComponent(from)}`);
    const spec = withoutNulls(job.spec);
    if (job.tags && Object.keys(job.tags).length && !spec.tags) spec.tags = job.tags;
    return { spec, job };
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
    return { spec: EXAMPLE, fromError: `Could not read job ${from}'s spec (${errorMessage(err)}); the editor holds the example instead.` };
  }
}

start(async (session) => {
  const canRead = (scope) => session.scopes.includes(scope);
  const [{ spec: first, job: fromJob, fromError }, datasets] = await Promise.all([
    initialSpec(),
    canRead("datasets:read") ? api.get("/datasets?limit=200").then((p) => p.items, () => []) : Promise.resolve([]),
  ]);

  const textarea = h("textarea", {
    id: "spec", name: "spec", rows: 22, spellcheck: "false", autocomplete: "off", autocapitalize: "off",
    class: "mono", "aria-describedby": "spec-help",
  });
  textarea.value = pretty(first);
  const parseError = h("p", { id: "spec-parse-error", "data-testid": "spec-parse-error", class: "field-error", role: "alert" });
  const problemList = h("ul", { id: "spec-problems", class: "spec-problems", "aria-label": "Problems with the spec" });
  const status = h("p", { id: "submit-status", role: "status", "aria-live": "polite" });
  const button = h("button", { type: "submit", id: "submit-job", class: "primary" }, "Submit job");

  const inputs = new Map();
  const fieldBoxes = FIELDS.map((field) => {
    const el = fieldInput(field, datasets);
    inputs.set(field, el);
    const help = field.hint ? h("span", { class: "muted field-hint", id: `h-${field.path}` }, field.hint) : null;
    if (help) el.setAttribute("aria-describedby", help.id);
    return h("div", { class: "submit-field", "data-field": field.path },
      h("label", { for: el.id }, field.label, " ", h("code", { class: "muted" }, field.path)), el, help,
      h("div", { class: "field-errors", id: `e-${field.path}` }));
  });

  const showFields = (spec) => {
    for (const [field, el] of inputs) if (document.activeElement !== el) showValue(field, el, spec);
  };
  showFields(first);

  // An input edited: its path set in the spec, the text rewritten (only while the text is JSON).
  for (const [field, el] of inputs) {
    el.addEventListener(field.kind === "dataset" ? "change" : "input", () => {
      let spec;
      try {
        spec = readSpec(textarea.value);
      } catch (err) {
        showParseError(err, false); // the person is typing in the input: leave the focus there
        return;
      }
      if (field.kind === "dataset") setDataset(spec, el.value);
      else setPath(spec, field.path, inputValue(field, el));
      textarea.value = pretty(spec);
      clearParseError();
    });
  }
  // The text edited: the inputs follow once it is JSON again.
  let typing;
  textarea.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      try {
        showFields(readSpec(textarea.value));
        clearParseError();
      } catch {
        // Shown on submit, not while typing; nor on blur, where the message appearing would
        // move the button being clicked out from under the pointer.
      }
    }, 250);
  });
  textarea.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  function selectInText(start, end) {
    textarea.focus();
    textarea.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 18;
    textarea.scrollTop = Math.max(0, (lineColumn(textarea.value, start).line - 3) * lineHeight);
  }

  function showParseError(err, select = true) {
    parseError.textContent = `The spec is not valid JSON: line ${err.line}, column ${err.column}: ${err.message}.`;
    textarea.setAttribute("aria-invalid", "true");
    textarea.setAttribute("aria-describedby", "spec-help spec-parse-error");
    if (select) selectInText(err.pos, Math.min(err.pos + 1, textarea.value.length));
  }

  function clearParseError() {
    parseError.textContent = "";
    if (!problemList.children.length) {
      textarea.removeAttribute("aria-invalid");
      textarea.setAttribute("aria-describedby", "spec-help");
    }
  }

  function clearProblems() {
    status.textContent = "";
    status.className = "";
    problemList.replaceChildren();
    for (const [field, el] of inputs) {
      document.getElementById(`e-${field.path}`).replaceChildren();
      el.removeAttribute("aria-invalid");
      el.setAttribute("aria-describedby", field.hint ? `h-${field.path}` : "");
      if (!field.hint) el.removeAttribute("aria-describedby");
    }
    clearParseError();
  }

  /** Each problem once: under the input that edits its path, else in the list under the text. */
  function showProblems(problems) {
    const atInputs = [];
    problems.forEach(([loc, msg], n) => {
      const where = loc.join(".");
      const field = FIELDS.find((f) => f.owns.includes(where));
      const id = `problem-${n}`;
      if (field) {
        const el = inputs.get(field);
        document.getElementById(`e-${field.path}`).append(
          h("p", { class: "field-error", id, "data-testid": "field-error", "data-loc": where }, msg));
        el.setAttribute("aria-invalid", "true");
        el.setAttribute("aria-describedby", [el.getAttribute("aria-describedby"), id].filter(Boolean).join(" "));
        atInputs.push(el);
        return;
      }
      const show = h("button", { type: "button", class: "link" }, "show in the spec");
      show.addEventListener("click", () => {
        let spans;
        try { spans = locate(textarea.value); } catch { return; }
        // The nearest path the text has: a missing field is blamed at its parent.
        for (let k = loc.length; k >= 0; k--) {
          const span = spans.get(loc.slice(0, k).join("."));
          if (span) return selectInText(span.key, span.end);
        }
      });
      problemList.append(h("li", {},
        h("p", { class: "field-error", id, "data-testid": "field-error", "data-loc": where },
          h("code", {}, where || "(the whole spec)"), " ", msg), show));
    });
    if (problemList.children.length) {
      textarea.setAttribute("aria-invalid", "true");
      textarea.setAttribute("aria-describedby", "spec-help spec-problems");
    }
    const listed = problemList.children.length;
    const n = problems.length;
    status.className = "error";
    status.textContent = `The API refused the spec (422): ${n} problem${n === 1 ? "" : "s"}` +
      (atInputs.length && listed ? `, ${atInputs.length} at the fields above and ${listed} listed under the spec.`
        : atInputs.length ? ", shown at the fields above." : ", listed under the spec.");
    // Focus the first problem in reading order: the inputs come before the text.
    const firstInput = [...inputs.values()].find((el) => atInputs.includes(el));
    (firstInput ?? problemList.querySelector("button"))?.focus();
  }

  const form = h("form", { id: "submit-form", class: "stack submit-form", novalidate: true },
    h("fieldset", { class: "panel submit-fields" },
      h("legend", {}, "Common fields"),
      h("div", { class: "submit-grid" }, fieldBoxes)),
    h("div", { class: "stack" },
      h("label", { for: "spec" }, "Spec (JSON)"),
      h("p", { id: "spec-help", class: "muted" },
        "The whole job spec; the fields above edit it too. Every field and its default: ",
        h("a", { href: "/docs" }, "POST /jobs in the API reference"),
        ". Ctrl+Enter submits."),
      textarea,
      parseError,
      problemList),
    h("div", { class: "row" },
      button,
      h("button", { type: "button", id: "format-spec", onclick: () => {
        try {
          const spec = readSpec(textarea.value);
          textarea.value = pretty(spec);
          clearParseError();
        } catch (err) {
          showParseError(err);
        }
      } }, "Format"),
      h("button", { type: "button", id: "reset-spec", onclick: () => {
        textarea.value = pretty(first);
        clearProblems();
        showFields(first);
      } }, fromJob ? "Back to the job's spec" : "Back to the example")),
    status);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearProblems();
    let spec;
    try {
      spec = readSpec(textarea.value);
    } catch (err) {
      showParseError(err);
      status.className = "error";
      status.textContent = "Not submitted: the spec is not valid JSON (see under the text).";
      return;
    }
    showFields(spec); // the inputs show what is sent, even when the text changed a moment ago
    button.disabled = true;
    status.textContent = "Submitting…";
    try {
      const job = await api.post("/jobs", spec);
      status.textContent = `Submitted job ${job.id}; opening its page…`;
      location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      button.disabled = false;
      if (err instanceof ApiError && err.status === 422 && err.problems().length) {
        showProblems(err.problems());
      } else {
        status.className = "error";
        status.textContent = err instanceof ApiError
          ? `Not submitted (${err.status}): ${err.message}. ${REFUSALS[err.status] ?? ""}`.trim()
          : `Could not reach the API: ${errorMessage(err)}`;
      }
    }
  });

  const notes = [
    fromJob ? h("p", { id: "submit-from", class: "notice" }, "Starting from the spec of job ",
      h("a", { href: `/ui/jobs/${encodeURIComponent(fromJob.id)}` }, fromJob.name, " ", h("span", { class: "mono" }, fromJob.id.slice(0, 8))),
      ": change what you like and submit it as a new job.") : null,
    fromError ? h("p", { id: "submit-from", class: "notice error", role: "alert" }, fromError) : null,
    canRead("jobs:write") ? null : h("p", { class: "notice", id: "submit-scope" },
      "This session's API key lacks the jobs:write scope: the API will refuse a submit (403)."),
  ];
  render(...notes.filter(Boolean), form);
});
