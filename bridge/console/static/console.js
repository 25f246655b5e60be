// The console page: polls /status every second and renders it. Plain DOM and SVG, no
// library; every figure is set with textContent, so nothing from the bridge is parsed as HTML.
"use strict";

const POLL_MS = 1000;
// the APIs clients speak: the columns of the requests table (/status has those it serves)
const SURFACES = ["openai", "ollama", "anthropic", "responses"];
let points = [];   // history points of the last 15 minutes, oldest first
let since = 0;     // the newest point's time: /status then sends only newer ones
let windowSeconds = 900;

const $ = (id) => document.getElementById(id);
const set = (id, text) => { const el = $(id); if (el) el.textContent = text; };

function count(n) {
  if (n === null || n === undefined) return "–";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1);
}
function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function percent(r) { return r === null || r === undefined ? "–" : (100 * r).toFixed(1) + " %"; }
function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + Math.floor(s % 60) + "s";
}

function cells(tr, texts) {
  for (const text of texts) {
    const td = document.createElement("td");
    if (text instanceof Node) td.append(text); else td.textContent = text;
    tr.append(td);
  }
  return tr;
}
function placeholder(tbodyId, columns, text) {
  const tr = document.createElement("tr"), td = document.createElement("td");
  td.colSpan = columns;
  td.className = "muted";
  td.textContent = text;
  tr.append(td);
  $(tbodyId).replaceChildren(tr);
}

function rows(tbodyId, items, format) {
  const body = $(tbodyId);
  body.replaceChildren(...items.map((item) =>
    cells(document.createElement("tr"), [item.name, format(item.value)])));
}

// Draws up to two series (functions of a point, null = no value) as polylines.
function chart(id, series) {
  const svg = $(id);
  // a young bridge's few minutes fill the width; after 15 minutes the window slides
  const now = Date.now() / 1000;
  const from = Math.max(now - windowSeconds, (points.length ? points[0].t : now) - 60);
  const span = now - from;
  const values = series.flatMap((pick) => points.map(pick)).filter((v) => v !== null && v !== undefined);
  const top = Math.max(1e-9, ...values) * 1.1;
  svg.replaceChildren(...series.map((pick, i) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", "s" + (i + 1));
    line.setAttribute("points", points.filter((p) => pick(p) !== null && pick(p) !== undefined)
      .map((p) => ((p.t - from) / span * 600).toFixed(1) + "," +
                  (78 - pick(p) / top * 74).toFixed(1)).join(" "));
    return line;
  }));
}

function render(s) {
  set("version", "v" + s.version);
  set("uptime", duration(s.uptime_seconds));
  set("workers", s.workers);
  for (const surface of SURFACES) {
    const r = s.requests[surface];
    if (!r) continue;
    const last = points.length ? points[points.length - 1].rps[surface] : 0;
    set("req-" + surface, count(r.total));
    set("rps-" + surface, count(last));
    set("err-" + surface, count(r.errors));
    set("p50-" + surface, seconds(r.p50));
    set("p99-" + surface, seconds(r.p99));
    set("ttft-" + surface, seconds(r.ttft_p50));
  }
  const c = s.cache;
  for (const tier of ["memory", "disk", "flight", "semantic"]) {
    set("hits-" + tier, count(c.hits[tier] || 0));
    set("ratio-" + tier, percent(c.hit_ratio[tier] ?? (c.misses ? 0 : null)));
  }
  set("entries-memory", count(c.entries.memory));
  set("entries-disk", count(c.entries.disk));
  set("evict-memory", count(c.evictions.memory || 0));
  set("evict-disk", count(c.evictions.disk || 0));
  set("misses", count(c.misses));
  set("stores", count(c.stores));
  set("hot-threshold", c.enabled ? count(c.hot_threshold) + " /min" : "cache off");
  set("promotions", count(c.promotions));
  const hits = Object.values(c.hits).reduce((a, b) => a + b, 0);
  set("hit-ratio", hits + c.misses ? percent(hits / (hits + c.misses)) : "–");
  set("gpu-saved", seconds(s.saved.gpu_seconds));
  set("tokens-saved", count(s.saved.tokens));
  set("upstream-saved", seconds(s.saved.upstream_seconds));

  const t = s.traffic;
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  set("in-flight", count(t.in_flight));
  set("max-concurrency", t.max_concurrency ? count(t.max_concurrency) : "no limit");
  set("queued", count(t.queued));
  set("rate-limited", count(t.rate_limited));
  set("rate-delayed", count(t.rate_delayed));
  set("refused", count(sum(t.refused)));
  set("auth-refused", count(sum(t.auth_refused)));
  set("retries", count(t.retries));
  set("think-blocks", count(s.think.blocks_removed));

  rows("models-requests", s.models.by_requests, count);
  rows("models-tokens", s.models.by_tokens, count);
  $("keys-block").hidden = !s.settings["enable-shared-mode"];
  rows("client-keys", s.client_keys.map((k) => ({name: k.name || "(none)", value: k.value})), count);

  const errors = $("errors");
  if (s.errors.length) {
    errors.replaceChildren(...s.errors.map((e) => cells(document.createElement("tr"), [
      new Date(e.time * 1000).toLocaleTimeString(), e.status, e.path, e.message,
      e.request_id])));
  }
  renderUsage(s.usage);
  const settings = $("settings");
  settings.replaceChildren(...Object.entries(s.settings).flatMap(([name, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = "--" + name;
    dd.textContent = String(value);
    return [dt, dd];
  }));

  const both = (field, q) => (p) => {
    const v = SURFACES.map((name) => p[field][name]).filter((x) => x !== null && x !== undefined);
    return v.length ? Math.max(...v) : null;
  };
  chart("chart-saved", [(p) => p.gpu_seconds_saved]);
  chart("chart-rps", [(p) => p.rps.openai, (p) => p.rps.ollama]);
  chart("chart-latency", [both("p50"), both("p99")]);
  chart("chart-hits", [(p) => p.hit_ratio]);
  chart("chart-refused", [(p) => p.refused_per_s]);
}

// The usage panel: /status's `usage` list, one row per client key.
function renderUsage(usage) {
  if (!usage || !usage.length) {
    placeholder("usage", 7, "no usage figures yet");
    return;
  }
  $("usage").replaceChildren(...usage.map((u) => {
    const tr = document.createElement("tr");
    tr.dataset.key = u.key;
    const used = document.createElement("div");
    used.className = "used";
    const label = document.createElement("span");
    label.textContent = u.budget_tokens === null || u.budget_tokens === undefined
      ? count(u.used_tokens) + " (no budget)"
      : count(u.used_tokens) + " / " + count(u.budget_tokens) + " per " + u.budget_period;
    used.append(label);
    if (u.budget_tokens) {
      const bar = document.createElement("div"), fill = document.createElement("i");
      bar.className = "bar";
      const share = Math.min(1, u.used_tokens / u.budget_tokens);
      fill.style.width = (100 * share).toFixed(1) + "%";
      if (share >= 1) fill.className = "over";
      bar.title = count(u.remaining_tokens) + " tokens left";
      bar.append(fill);
      used.append(bar);
    }
    const models = (u.top_models || []).map((m) => m.model + " " + count(m.tokens)).join(", ");
    return cells(tr, [u.key, used, count(u.requests), count(u.cache_hits),
                      count(u.saved_tokens), seconds(u.saved_seconds), models || "–"]);
  }));
}

// The request log (/status/requests), filtered by key, model and status class.
let logged = {requests: [], size: 0};
let loggedText = "";
function renderRequests() {
  const key = $("filter-key").value.trim().toLowerCase();
  const model = $("filter-model").value.trim().toLowerCase();
  const status = $("filter-status").value;
  const shown = logged.requests.filter((r) =>
    (!key || (r.key || "").toLowerCase().includes(key)) &&
    (!model || (r.model || "").toLowerCase().includes(model)) &&
    (!status || String(r.status).startsWith(status)));
  set("requests-shown", logged.size
    ? shown.length + " of the last " + logged.requests.length + " requests"
      + (logged.bodies ? " · prompts and answers kept (--request-log-bodies)" : "")
    : "");
  if (!logged.size) { placeholder("requests", 10, "request log off (--request-log-size 0)"); return; }
  if (!shown.length) { placeholder("requests", 10, logged.requests.length ? "none matches" : "none yet"); return; }
  const tokens = (r) => r.prompt_tokens === null && r.completion_tokens === null ? "–"
    : count(r.prompt_tokens || 0) + " / " + count(r.completion_tokens || 0);
  $("requests").replaceChildren(...shown.flatMap((r) => {
    const tr = cells(document.createElement("tr"), [
      new Date(r.time * 1000).toLocaleTimeString(), r.key || "–", r.api, r.model || "–",
      r.status, tokens(r), r.cache || "–", seconds(r.latency_ms / 1000), r.upstream || "–",
      r.request_id]);
    tr.className = r.status >= 400 ? "failed" : "";
    if (!("prompt" in r)) return [tr];
    const body = document.createElement("tr"), td = document.createElement("td");
    body.className = "bodies";
    td.colSpan = 10;
    for (const [name, text] of [["prompt", r.prompt], ["answer", r.answer]]) {
      const pre = document.createElement("pre");
      pre.dataset.body = name;
      pre.textContent = name + ": " + text;
      td.append(pre);
    }
    body.append(td);
    return [tr, body];
  }));
}
for (const id of ["filter-key", "filter-model", "filter-status"]) {
  $(id).addEventListener("input", renderRequests);
}

async function pollRequests() {
  try {
    if (document.hidden) return;  // a tab in the background fetches no log
    const answer = await fetch("/status/requests", {cache: "no-store"});
    if (!answer.ok) throw new Error("/status/requests answered " + answer.status);
    const text = await answer.text();
    if (text !== loggedText) {  // redrawn only when it changed
      loggedText = text;
      logged = JSON.parse(text);
      renderRequests();
    }
  } catch (err) {
    set("problem", String(err.message || err));
  } finally {
    setTimeout(pollRequests, POLL_MS);
  }
}

async function poll() {
  try {
    const answer = await fetch("/status?since=" + since, {cache: "no-store"});
    if (!answer.ok) throw new Error("/status answered " + answer.status);
    const s = await answer.json();
    windowSeconds = s.history_window_seconds;
    points = points.concat(s.history).filter((p) => p.t >= s.time - windowSeconds);
    if (points.length) since = points[points.length - 1].t;
    render(s);
    $("live").classList.remove("stale");
    set("problem", "");
  } catch (err) {
    $("live").classList.add("stale");
    set("problem", String(err.message || err));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
pollRequests();
