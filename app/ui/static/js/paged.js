// The API's lists that page with a `Link: <next>; rel="next"` header (GET /models and GET
// /models/{name}) rather than a `next_cursor` field: the header is read here, since api.js
// answers bodies only. Reads only (no CSRF token needed); a 401 still sends the browser to sign in.
import { checked } from "./api.js";

/** GET `path`: `{ data, next }`, `next` the URL of the next page or null on the last one. */
export async function getPage(path) {
  const r = await checked(
    await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" }),
  );
  return { data: await r.json(), next: nextLink(r.headers.get("Link")) };
}

/** The rel="next" target of a Link header, or null. */
export function nextLink(header) {
  for (const part of (header || "").split(",")) {
    const m = part.match(/<([^>]+)>\s*;\s*rel="?next"?/);
    if (m) return m[1];
  }
  return null;
}
