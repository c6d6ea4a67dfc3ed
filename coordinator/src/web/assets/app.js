// stylefarm's web monitor: routing, the API with its sign-in, and small DOM helpers the
// views share. No framework: the page is plain modules the coordinator embeds.

import { farmView, jobsView, jobView, submitView } from "/assets/views.js";

/** Thrown for an answer that is not 2xx: `message` is the coordinator's sentence. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Calls the JSON API. Changes (any method but GET) carry the X-Stylefarm header, which the
 * coordinator requires of every change so that no other site can make this browser act.
 */
export async function api(path, { method = "GET", json, body, headers = {} } = {}) {
  const h = { ...headers };
  if (method !== "GET") h["X-Stylefarm"] = "1";
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const res = await fetch(path, { method, body, headers: h, credentials: "same-origin" });
  if (res.status === 401) {
    askToken();
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      message = (await res.json()).error || message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, message);
  }
  if (res.status === 204) return null;
  return res.json();
}

/** Creates an element: `el("div.card#x", {onclick}, child, "text", ...)`. */
export function el(spec, attrs = {}, ...children) {
  const tag = spec.match(/^[a-z0-9]*/i)[0] || "div";
  const id = (spec.match(/#([\w-]+)/) || [])[1];
  const classes = [...spec.matchAll(/\.([\w-]+)/g)].map((m) => m[1]);
  const e = document.createElement(tag);
  if (id) e.id = id;
  if (classes.length) e.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function ago(unixMs) {
  const s = Math.max(0, (Date.now() - unixMs) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(unixMs).toLocaleDateString();
}

export function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** A state as a coloured badge. */
export function badge(state) {
  return el(`span.badge.s-${state}`, { dataset: { state } }, state.replace("_", " "));
}

/** A progress bar, 0..1. */
export function bar(fraction, label) {
  const fill = el("span.fill");
  fill.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  return el("span.bar", { title: label || "" }, fill);
}

/** Shows a short message in the corner. */
export function toast(message, kind = "info") {
  const t = el(`div.toast.${kind}`, {}, message);
  document.body.append(t);
  setTimeout(() => t.remove(), 5000);
}

/** The live-updates indicator in the header. */
export function setLive(state) {
  const live = document.getElementById("live");
  live.textContent = state;
  live.dataset.state = state;
}

// Sign-in: the token is asked once, sent once, and forgotten; the session cookie does the rest.
let loginOpen = false;
function askToken() {
  const dialog = document.getElementById("login");
  if (loginOpen) return;
  loginOpen = true;
  dialog.showModal();
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await api("/api/session", { method: "POST", json: { token: input.value } });
    input.value = "";
    loginOpen = false;
    document.getElementById("login").close();
    route();
  } catch (e) {
    input.value = "";
    error.textContent = e.message;
  }
}

// Routing: #/farm, #/jobs, #/job/<id>, #/submit. A view returns a function that stops its
// timers and streams when the page moves on.
let stopView = null;
function route() {
  if (stopView) { stopView(); stopView = null; }
  const [, name = "farm", arg] = location.hash.split("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === name || (name === "job" && a.dataset.nav === "jobs"));
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  const views = { farm: farmView, jobs: jobsView, job: jobView, submit: submitView };
  stopView = (views[name] || farmView)(view, arg ? decodeURIComponent(arg) : undefined);
}

async function start() {
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("login").addEventListener("cancel", (e) => e.preventDefault());
  window.addEventListener("hashchange", route);
  try {
    const s = await api("/api/session");
    if (s.token_required && !s.signed_in) { askToken(); return; }
  } catch (e) {
    toast(e.message, "error");
  }
  route();
}

start();
