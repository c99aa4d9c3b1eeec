// The dashboard's only way to the data: the public JSON API, same origin, with the browser's
// session cookie. Writes carry the session's CSRF token; a 401 sends the browser to sign in;
// an error keeps the API's own message (and, for a 422, its field locations).

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : detailText(detail));
    this.status = status;
    this.detail = detail; // a string, or FastAPI's list of {loc, msg, type}
  }
  /** The 422 problems as [[loc path without "body"], message]. */
  problems() {
    if (!Array.isArray(this.detail)) return [];
    return this.detail.map((d) => [(d.loc || []).filter((p) => p !== "body"), d.msg]);
  }
}

function detailText(detail) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return String(detail);
}

let current = null;

/** Who is signed in (GET /session), read once per page. */
export function session() {
  current ??= request("GET", "/session");
  return current;
}

async function request(method, path, { json, body, headers = {}, signal } = {}) {
  const h = { Accept: "application/json", ...headers };
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  if (method !== "GET" && method !== "HEAD") {
    const s = await session();
    if (s.csrf_token) h["X-CSRF-Token"] = s.csrf_token;
  }
  const r = await checked(
    await fetch(path, { method, headers: h, body, credentials: "same-origin", signal }),
  );
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r.text();
}

/** `r` if it succeeded; else a 401 sends the browser to sign in, and any error throws an
 * ApiError carrying the API's `detail`. For callers that need more than the body (headers). */
export async function checked(r) {
  if (r.status === 401) {
    signIn();
    throw new ApiError(401, "sign in first");
  }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail ?? detail; } catch { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  return r;
}

export const api = {
  get: (path, opts) => request("GET", path, opts),
  post: (path, json, opts = {}) => request("POST", path, { json, ...opts }),
  put: (path, json, opts = {}) => request("PUT", path, { json, ...opts }),
  patch: (path, json, opts = {}) => request("PATCH", path, { json, ...opts }),
  delete: (path, opts) => request("DELETE", path, opts),
  /** A multipart upload (FormData): the browser sets the boundary. */
  upload: (path, form, opts = {}) => request("POST", path, { body: form, ...opts }),
};

export function signIn() {
  const next = location.pathname + location.search;
  location.assign("/ui/signin?next=" + encodeURIComponent(next));
}

/**
 * Follow a job's event stream (GET /jobs/{id}/events): `job`, `metric` and `log` events, then
 * `end` when the job has finished. EventSource reconnects by itself and sends Last-Event-ID, so
 * the server resumes after the last event seen: no gap, no duplicate. Returns a stop function.
 */
export function follow(jobId, handlers) {
  const source = new EventSource(`/jobs/${encodeURIComponent(jobId)}/events`);
  for (const name of ["job", "metric", "log"]) {
    if (handlers[name]) source.addEventListener(name, (e) => handlers[name](JSON.parse(e.data)));
  }
  // `error`: a reconnect is under way (readyState CONNECTING) or the server refused the stream
  // (CLOSED: EventSource gives up, e.g. on a 429); the page can say so.
  if (handlers.error) source.addEventListener("error", () => handlers.error(source));
  source.addEventListener("end", (e) => {
    source.close();
    handlers.end?.(JSON.parse(e.data));
  });
  return () => source.close();
}
