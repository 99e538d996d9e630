// The hub's live page: choose streams, watch them merged through the browser's own
// EventSource, publish to topics. Plain JavaScript, no build step; every value that comes from
// the hub or its streams is written with textContent, never as HTML.
"use strict";

const ROOT = document.body.dataset.root || "";
const COOKIE = "hub_token";
const CONTROL = ["hub.gap", "hub.error", "hub.overflow", "hub.expired", "hub.shutdown", "hub.busy", "hub.end"];
const KEEP = 1000; // rows shown at most; older ones are removed
const RATE_WINDOW = 5; // seconds over which a stream's rate is measured

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
};

let catalog = []; // the streams the hub shows this caller
let source = null; // the open EventSource
let reconnects = 0;
let paused = false;
const held = []; // rows received while paused
const rates = new Map(); // stream -> {total, times: [seconds]}

// ---------------------------------------------------------------- signing in

function token() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === COOKIE) return decodeURIComponent(value.join("="));
  }
  return "";
}

function setToken(value) {
  const path = (ROOT || "") + "/";
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = value
    ? `${COOKIE}=${encodeURIComponent(value)}; path=${path}; SameSite=Strict${secure}`
    : `${COOKIE}=; path=${path}; max-age=0; SameSite=Strict${secure}`;
}

function showWho() {
  const current = token();
  $("signout-button").hidden = !current;
  $("token").hidden = $("signin-button").hidden = Boolean(current);
  let who = "";
  if (current) {
    try { // shown, never trusted: the hub verifies the token
      const claims = JSON.parse(atob(current.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      who = `signed in as ${claims.sub ?? "(no sub)"}`;
      if (claims.exp) who += `, until ${new Date(claims.exp * 1000).toLocaleTimeString()}`;
    } catch {
      who = "signed in (a token that is not a JWT)";
    }
  }
  $("who").textContent = who;
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  setToken(value);
  $("token").value = "";
  refresh();
});

$("signout-button").addEventListener("click", () => {
  setToken("");
  refresh();
});

async function refresh() {
  showWho();
  await loadCatalog(selectionFromUrl());
  if (source) watch();
}

// ---------------------------------------------------------------- the catalog and its forms

function errorText(body, status) {
  const error = body && body.error;
  if (!error) return `HTTP ${status}`;
  const { code, message, ...details } = error;
  let text = `${status} ${code}: ${message}`;
  if (Object.keys(details).length) text += "\n" + JSON.stringify(details, null, 2);
  return text;
}

async function fetchJson(path, options = {}) {
  const response = await fetch(ROOT + path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  return { response, body };
}

function resolve(schema, root) {
  // A property's own schema: follow a $ref into $defs, and take the non-null branch of an
  // Optional (anyOf [X, null]).
  for (let depth = 0; schema && depth < 8; depth++) {
    if (schema.$ref) {
      const name = schema.$ref.split("/").pop();
      schema = { ...((root.$defs || {})[name] || {}), ...schema, $ref: undefined };
    } else if (schema.anyOf || schema.oneOf) {
      const options = (schema.anyOf || schema.oneOf).filter((option) => option.type !== "null");
      if (options.length !== 1) return { ...schema, anyOf: undefined, oneOf: undefined, type: "json" };
      schema = { ...options[0], ...schema, anyOf: undefined, oneOf: undefined, nullable: true };
    } else {
      return schema;
    }
  }
  return schema || {};
}

function input(name, schema, prefill) {
  // One form control for a JSON Schema property: its type, default, bounds and enum.
  let control;
  const fallback = schema.default == null ? "" : schema.default;
  const value = prefill === undefined ? fallback : prefill;
  if (schema.enum) {
    control = el("select", { name });
    if (schema.default == null) control.append(el("option", { value: "", text: "" }));
    for (const option of schema.enum) control.append(el("option", { value: String(option), text: String(option) }));
    control.value = String(value);
  } else if (schema.type === "boolean") {
    control = el("input", { type: "checkbox", name });
    control.checked = prefill === undefined ? schema.default === true : String(prefill) === "true";
  } else if (schema.type === "integer" || schema.type === "number") {
    control = el("input", { type: "number", name, step: schema.type === "integer" ? "1" : "any" });
    for (const [bound, attribute] of [["minimum", "min"], ["maximum", "max"], ["exclusiveMinimum", "min"], ["exclusiveMaximum", "max"]]) {
      if (schema[bound] !== undefined) control.setAttribute(attribute, schema[bound]);
    }
    control.value = value === "" ? "" : String(value);
  } else if (schema.type === "string" || schema.type === undefined && !schema.properties) {
    control = el("input", { type: "text", name });
    if (schema.maxLength !== undefined) control.maxLength = schema.maxLength;
    if (schema.pattern) control.pattern = schema.pattern;
    control.value = String(value);
  } else { // objects and arrays: JSON
    control = el("input", { type: "text", name, placeholder: "JSON" });
    control.dataset.json = "1";
    control.value = value === "" ? "" : (typeof value === "string" ? value : JSON.stringify(value));
  }
  control.dataset.type = schema.type || "string";
  if (schema.default != null) control.dataset.default = JSON.stringify(schema.default);
  if (schema.title || schema.description) control.title = schema.description || schema.title;
  return control;
}

function hintOf(schema) {
  const parts = [];
  if (schema.description) parts.push(schema.description.replace(/\.$/, ""));
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) bounds.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) bounds.push(`≤ ${schema.maximum}`);
  if (schema.exclusiveMaximum !== undefined) bounds.push(`< ${schema.exclusiveMaximum}`);
  if (bounds.length) parts.push(bounds.join(", "));
  if (schema.default != null) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.join("; ");
}

function fields(schema, prefix, prefill, { skipReadOnly = false, omit = [] } = {}) {
  // Label and control pairs for an object schema's properties.
  const nodes = [];
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (omit.includes(name)) continue;
    const property = resolve(raw, schema);
    if (skipReadOnly && property.readOnly) continue;
    const control = input(prefix + name, property, prefill[prefix + name]);
    if (required.has(name) && control.type !== "checkbox") control.required = true;
    const id = `f-${prefix}${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
    control.id = id;
    nodes.push(el("label", { for: id, text: name + (required.has(name) ? " *" : "") }), control);
    const hint = hintOf(property);
    if (hint) nodes.push(el("span", { class: "hint", text: hint }));
  }
  return nodes;
}

function streamItem(info, selection) {
  const chosenKeys = selection.streams
    .filter((name) => name.startsWith(info.name + "/"))
    .map((name) => name.slice(info.name.length + 1));
  const checked = selection.streams.includes(info.name) || chosenKeys.length > 0;
  const box = el("input", { type: "checkbox", value: info.name, id: `s-${info.name}` });
  box.checked = checked;
  const item = el(
    "li",
    { "data-stream": info.name },
    box,
    " ",
    el("label", { for: box.id, class: "name", text: info.name }),
    " ",
    el("span", { class: "kind", text: info.keyed ? "keyed topic" : info.kind }),
    el("div", { class: "description", text: info.description || "" }),
  );
  if (info.keyed) {
    const key = el("input", {
      type: "text",
      class: "key-input",
      placeholder: "lobby, kitchen",
      value: chosenKeys.join(", "),
      "aria-label": `${info.name} key`,
    });
    key.addEventListener("input", () => { box.checked = key.value.trim() !== ""; });
    item.append(el("div", { class: "key" }, el("label", { text: "key" }), key));
  }
  // `count` is every stream's: the page has one field for it, below the list
  const own = fields(info.parameters, info.name + ".", selection.params, { omit: ["count"] });
  if (own.length) item.append(el("div", { class: "params" }, ...own));
  return item;
}

async function loadCatalog(selection) {
  const { response, body } = await fetchJson("/streams");
  const problem = $("catalog-error");
  if (!response.ok) {
    catalog = [];
    problem.textContent = errorText(body, response.status);
    problem.hidden = false;
  } else {
    catalog = body.streams;
    problem.hidden = true;
  }
  $("streams").replaceChildren(...catalog.map((info) => streamItem(info, selection)));
  if (selection.count) $("count").value = selection.count;
  const publishable = catalog.filter((info) => info.publishable);
  const topics = $("publish-topic");
  const before = topics.value;
  topics.replaceChildren(...publishable.map((info) => el("option", { value: info.name, text: info.name })));
  if (publishable.some((info) => info.name === before)) topics.value = before;
  publishForm();
}

// ---------------------------------------------------------------- the selection and the URL

function selectionFromUrl() {
  const query = new URLSearchParams(location.search);
  const streams = (query.get("streams") || "").split(",").map((name) => name.trim()).filter(Boolean);
  const params = {};
  for (const [name, value] of query) if (name.includes(".")) params[name] = value;
  return { streams, params, count: query.get("count") || "" };
}

function changed(control) {
  if (control.type === "checkbox") {
    const fallback = control.dataset.default ? JSON.parse(control.dataset.default) : false;
    return control.checked !== fallback ? String(control.checked) : null;
  }
  const value = control.value.trim();
  if (value === "") return null;
  if (control.dataset.default !== undefined) {
    const fallback = JSON.parse(control.dataset.default);
    if (value === (typeof fallback === "string" ? fallback : JSON.stringify(fallback))) return null;
    if (control.type === "number" && Number(value) === fallback) return null;
  }
  return value;
}

function selectionQuery() {
  // The query of GET /events for what is chosen on the page; also the page's own URL.
  const query = new URLSearchParams();
  const streams = [];
  for (const item of $("streams").children) {
    if (!item.querySelector("input[type=checkbox]").checked) continue;
    const name = item.dataset.stream;
    const key = item.querySelector(".key-input");
    if (key) {
      for (const one of key.value.split(",").map((part) => part.trim()).filter(Boolean)) streams.push(`${name}/${one}`);
    } else {
      streams.push(name);
    }
    for (const control of item.querySelectorAll(".params [name]")) {
      const value = changed(control);
      if (value !== null) query.append(control.name, value);
    }
  }
  query.set("streams", streams.join(","));
  const count = $("count").value.trim();
  if (count) query.set("count", count);
  // "streams" first, as people write it
  const ordered = new URLSearchParams([["streams", query.get("streams")]]);
  for (const [name, value] of query) if (name !== "streams") ordered.append(name, value);
  return { query: ordered, streams };
}

// ---------------------------------------------------------------- watching

function setState(state, text = state) {
  const pill = $("state");
  pill.className = `state ${state}`;
  pill.dataset.state = state;
  pill.textContent = text;
}

// Colours handed out in the order streams first appear, so that the first ten differ.
const PALETTE = ["#1f6fb2", "#c2410c", "#15803d", "#9333ea", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d7c0f", "#4338ca"];
const colours = new Map();
function colour(name) {
  if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
  return colours.get(name);
}

function pretty(data) {
  try { return JSON.stringify(JSON.parse(data), null, 2); } catch { return data; }
}

function row(name, data, cursor, control) {
  const when = new Date();
  const time = when.toTimeString().slice(0, 8) + "." + String(when.getMilliseconds()).padStart(3, "0");
  const item = el(
    "li",
    { class: control ? `control ${name.replace(".", "-")}` : "event", "data-stream": name },
    el("time", { text: time }),
    el("span", { class: "stream", text: name }),
    el("pre", { text: pretty(data) }),
  );
  if (cursor) item.append(el("span", { class: "cursor", text: `id ${cursor}` }));
  if (!control) item.style.setProperty("--c", colour(name));
  return item;
}

function show(item) {
  if (paused) {
    held.push(item);
    if (held.length > KEEP) held.shift();
    $("held").textContent = `${held.length} held`;
    return;
  }
  const list = $("events");
  list.prepend(item);
  while (list.children.length > KEEP) list.lastElementChild.remove();
}

function count(name) {
  let rate = rates.get(name);
  if (!rate) {
    rate = { total: 0, times: [], since: performance.now() / 1000, node: el("li", { "data-stream": name }) };
    rate.node.style.setProperty("--c", colour(name));
    rates.set(name, rate);
    $("rates").append(rate.node);
  }
  rate.total += 1;
  rate.times.push(performance.now() / 1000);
}

function showRates() {
  const now = performance.now() / 1000;
  for (const [name, rate] of rates) {
    while (rate.times.length && rate.times[0] < now - RATE_WINDOW) rate.times.shift();
    // over the window, or the time since its first event when that is shorter
    const perSecond = rate.times.length / Math.min(RATE_WINDOW, Math.max(1, now - rate.since));
    rate.node.textContent = `${name} ${perSecond.toFixed(1)}/s · ${rate.total}`;
  }
}
setInterval(showRates, 1000);

async function explain(url) {
  // An EventSource says nothing of why it gave up: ask again with fetch, and show the API's
  // own error. A stream that opens (200) is not read: the request is aborted at once.
  const controller = new AbortController();
  try {
    const response = await fetch(url, { credentials: "same-origin", signal: controller.signal, headers: { Accept: "application/json" } });
    if (response.ok) return "the connection was refused; it opens again now";
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    return errorText(body, response.status);
  } catch (problem) {
    return `the hub cannot be reached (${problem.message})`;
  } finally {
    controller.abort();
  }
}

function stop(state = "idle", text = state) {
  if (source) source.close();
  source = null;
  $("stop").disabled = true;
  setState(state, text);
}

function watch() {
  const problem = $("watch-error");
  const { query, streams } = selectionQuery();
  if (!streams.length) {
    problem.textContent = "choose at least one stream (a keyed topic needs a key)";
    problem.hidden = false;
    return;
  }
  problem.hidden = true;
  if (source) source.close();
  history.replaceState(null, "", `${location.pathname}?${query}`);
  const url = `${ROOT}/events?${query}`;
  setState("connecting");
  const events = new EventSource(url, { withCredentials: true });
  source = events;
  $("stop").disabled = false;
  let opened = false;
  events.addEventListener("open", () => {
    if (source !== events) return;
    if (opened) reconnects += 1;
    opened = true;
    $("reconnects").textContent = `reconnects: ${reconnects}`;
    setState("live");
  });
  events.addEventListener("error", async () => {
    if (source !== events) return;
    if (events.readyState === EventSource.CONNECTING) {
      setState("reconnecting");
      return;
    }
    stop("closed", "closed");
    problem.textContent = await explain(url);
    problem.hidden = false;
  });
  for (const name of new Set(streams)) {
    events.addEventListener(name, (event) => {
      count(name);
      show(row(name, event.data, event.lastEventId, false));
    });
  }
  for (const name of CONTROL) {
    events.addEventListener(name, (event) => {
      show(row(name, event.data, "", true));
      if (name === "hub.end") stop("ended", "ended: every stream is done");
    });
  }
}

$("watch").addEventListener("click", watch);
$("stop").addEventListener("click", () => stop());
$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const item of held.splice(0)) show(item);
    $("held").textContent = "";
  }
});
$("clear").addEventListener("click", () => {
  $("events").replaceChildren();
  held.length = 0;
  $("held").textContent = "";
  for (const rate of rates.values()) rate.node.remove();
  rates.clear();
});

// ---------------------------------------------------------------- publishing

function publishForm() {
  const name = $("publish-topic").value;
  const info = catalog.find((stream) => stream.name === name);
  $("publish-key-label").hidden = !(info && info.keyed);
  $("publish-fields").replaceChildren(...(info ? fields(info.event, "", {}, { skipReadOnly: true }) : []));
  $("publish-button").disabled = !info;
  $("publish-result").textContent = info ? "" : "no topic here takes events";
}
$("publish-topic").addEventListener("change", publishForm);

function eventFromForm() {
  const event = {};
  for (const control of $("publish-fields").querySelectorAll("[name]")) {
    if (control.type === "checkbox") {
      event[control.name] = control.checked;
      continue;
    }
    const value = control.value;
    if (value === "") continue; // left empty: not given (the hub names a required one)
    if (control.dataset.json) event[control.name] = JSON.parse(value);
    else if (control.dataset.type === "integer" || control.dataset.type === "number") event[control.name] = Number(value);
    else event[control.name] = value;
  }
  return event;
}

$("publish").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const result = $("publish-result");
  const name = $("publish-topic").value;
  const info = catalog.find((stream) => stream.name === name);
  let path = `/streams/${encodeURIComponent(name)}`;
  if (info && info.keyed) {
    const key = $("publish-key").value.trim();
    if (!key) {
      result.className = "error";
      result.textContent = `${name} is keyed: give the key of the topic to publish to`;
      return;
    }
    path += `/${encodeURIComponent(key)}`;
  }
  let event;
  try {
    event = eventFromForm();
  } catch (problem) {
    result.className = "error";
    result.textContent = `not JSON: ${problem.message}`;
    return;
  }
  const { response, body } = await fetchJson(`${path}/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(event),
  });
  if (response.ok) {
    result.className = "muted";
    result.textContent = `published at ${body.positions.join(", ")}`;
  } else {
    result.className = "error";
    result.textContent = errorText(body, response.status);
  }
});

// Publishing forms skip the browser's own validation, so the hub's answer is what is shown.
$("publish").noValidate = true;

// ---------------------------------------------------------------- start

(async () => {
  showWho();
  const selection = selectionFromUrl();
  await loadCatalog(selection);
  if (selection.streams.length) watch();
})();
