// Small DOM helpers shared by the pages: build elements, format values, show errors, draw the
// signed-in header. No framework: each page is one module that fetches and draws.
import { api, ApiError, session } from "./api.js";

/** h("a", {href: "/x", class: "c"}, "text", child): an element; null/false children skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replace the page's body (below its h1) with `nodes`. */
export function render(...nodes) {
  const page = document.getElementById("page");
  document.getElementById("loading")?.remove();
  const title = page.querySelector("h1");
  page.replaceChildren(...(title ? [title] : []), ...nodes.flat());
}

export function setTitle(text) {
  document.title = `${text} · tas`;
  const h1 = document.querySelector("#page h1");
  if (h1) h1.textContent = text;
}

export function fmtNumber(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  // A float that happens to be whole (a diverged loss of 1e22) is not a count: exponent form.
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return x.toLocaleString("en");
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(2) : x.toFixed(digits).replace(/\.?0+$/, "");
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** The API's datetimes are UTC ISO strings (without a zone when SQLite stored them). */
export function parseTime(iso) {
  if (!iso) return null;
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
}

export function fmtTime(iso) {
  const d = parseTime(iso);
  return d ? d.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" }) : "–";
}

export function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status);
}

export function errorMessage(err) {
  if (err instanceof ApiError) return `${err.status}: ${err.message}`;
  return String(err?.message || err);
}

/** An alert line for a failed action; `where` is an element to put it in (replacing its text). */
export function showError(where, err) {
  where.replaceChildren(h("p", { class: "error", role: "alert" }, errorMessage(err)));
}

/** The header's right side: the tenant, and a sign-out form (with the CSRF token) when signed in. */
export async function drawWho() {
  const who = document.getElementById("who");
  if (!who) return null;
  try {
    const s = await session();
    const parts = [h("span", { title: `scopes: ${s.scopes.join(", ")}` }, `tenant ${s.tenant}`)];
    if (s.csrf_token) {
      parts.push(
        h("form", { method: "post", action: "/ui/signout" },
          h("input", { type: "hidden", name: "csrf_token", value: s.csrf_token }),
          h("button", { type: "submit" }, "Sign out")),
      );
    }
    who.replaceChildren(...parts);
    return s;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) who.textContent = errorMessage(err);
    return null;
  }
}

/** Run a page: draw the header, then `draw()`; an error it throws is shown in the page. */
export async function start(draw) {
  const s = await drawWho();
  if (!s) return;
  try {
    await draw(s);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    console.warn(err);
    render(h("p", { class: "error", role: "alert" }, errorMessage(err)));
  }
}

export { api, ApiError };
