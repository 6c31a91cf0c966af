// scrapvision QA page: browse, filter and review audited decisions; purity and throughput charts.
// Plain browser JavaScript, no libraries and no network beyond this service: every request
// carries the API key the user typed (kept in localStorage) in the X-API-Key header.
"use strict";

const KEY_STORAGE = "scrapvision.apiKey";
const REVIEWER_STORAGE = "scrapvision.reviewer";
const PAGE_SIZE = 50;
const SVG_NS = "http://www.w3.org/2000/svg";
const SERIES = [
  ["total", "#1d2329"], ["eject", "#0b6bcb"], ["recirculate", "#b35900"],
  ["pass", "#1a7f37"], ["late", "#c62828"], ["overload", "#8e24aa"],
];

const state = {
  items: [], selected: -1, cursors: [null], pageIndex: 0, nextCursor: null,
  facets: null, frameUrl: null, saving: false,
};
const CLASS_KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== "") node.textContent = text;
  return node;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ---- API ------------------------------------------------------------------------------------

function askKey() {
  $("#key-input").value = localStorage.getItem(KEY_STORAGE) || "";
  if (!$("#key-dialog").open) $("#key-dialog").showModal();
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : validationMessages(body.detail);
  } catch (_) { /* body was not JSON: keep the status text */ }
  if (response.status === 401 || response.status === 403) askKey();
  throw new Error(`${response.status}: ${detail}`);
}

// FastAPI's 422 detail is a list of {loc, msg}: show the messages, not the JSON.
function validationMessages(detail) {
  if (!Array.isArray(detail)) return JSON.stringify(detail);
  return detail.map((error) => `${error.loc?.at(-1) ?? ""}: ${String(error.msg)
    .replace(/^Value error, /, "")}`).join("; ");
}

async function getJson(path) {
  return (await api(path)).json();
}

function report(error) {
  setStatus(error.message, true);
}

// ---- filters and the decision list ----------------------------------------------------------

function filterParams() {
  const params = new URLSearchParams();
  for (const field of $("#filters").elements) {
    if (!field.name || field.value === "") continue;
    if (field.name === "model") { // "name:version": a version alone is ambiguous across models
      const [name, version] = field.value.split(":");
      params.set("model_name", name);
      params.set("model_version", version);
      continue;
    }
    const value = field.type === "datetime-local" ? new Date(field.value).toISOString() : field.value;
    params.set(field.name, value);
  }
  return params;
}

function fillSelect(select, values) {
  const current = select.value;
  const keep = select.querySelector("option[value='']");
  select.replaceChildren(...(keep ? [keep] : []));
  for (const value of values) select.append(element("option", { value }, value));
  if (values.includes(current) || (keep && current === "")) select.value = current;
}

async function loadFacets() {
  state.facets = await getJson("/v1/audit/facets");
  fillSelect($("#filter-line"), state.facets.lines);
  fillClassFilter();
  fillSelect($("#filter-bin"), state.facets.bins);
  fillSelect($("#filter-model"), state.facets.models);
  fillSelect($("#chart-line"), state.facets.lines);
  $("#label-options").replaceChildren(
    ...state.facets.labels.map((label) => element("option", { value: label })));
}

// The classes of the line chosen, or of every line.
function fillClassFilter() {
  const line = $("#filter-line").value;
  fillSelect($("#filter-class"), line ? state.facets.classes_by_line[line] || [] : state.facets.classes);
}

async function loadPage() {
  const params = filterParams();
  params.set("limit", PAGE_SIZE);
  const cursor = state.cursors[state.pageIndex];
  if (cursor !== null) params.set("cursor", cursor);
  const page = await getJson(`/v1/audit/decisions?${params}`);
  state.items = page.items;
  state.nextCursor = page.next_cursor;
  $("#total").textContent = `${page.total} decisions · page ${state.pageIndex + 1}`;
  $("#next-page").disabled = page.next_cursor === null;
  $("#prev-page").disabled = state.pageIndex === 0;
  renderTable();
  await select(state.items.length ? 0 : -1);
  setStatus(`${page.total} decisions match`);
}

async function applyFilters() {
  state.cursors = [null];
  state.pageIndex = 0;
  await loadPage();
}

async function turnPage(step) {
  if (step > 0 && state.nextCursor === null) return;
  if (step < 0 && state.pageIndex === 0) return;
  if (step > 0) state.cursors[state.pageIndex + 1] = state.nextCursor;
  state.pageIndex += step;
  await loadPage();
}

function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function reviewText(review) {
  if (!review) return "";
  return review.verdict === "confirm" ? "confirmed" : `→ ${review.label}`;
}

function renderRow(item) {
  const row = element("tr", { "data-id": item.id, class: "decision" });
  const cells = [item.id, formatTime(item.time), item.line, item.class_name ?? "–",
    item.confidence == null ? "–" : item.confidence.toFixed(3), item.action, item.bin ?? "–"];
  for (const value of cells) row.append(element("td", {}, String(value)));
  const review = element("td", {}, reviewText(item.review));
  if (item.review) review.className = `review-${item.review.verdict}`;
  row.append(review);
  row.addEventListener("click", () => select(state.items.indexOf(item)).catch(report));
  return row;
}

function renderTable() {
  $("#decisions tbody").replaceChildren(...state.items.map(renderRow));
}

// ---- the selected decision ------------------------------------------------------------------

function current() {
  return state.items[state.selected];
}

function classesFor(item) {
  const byLine = state.facets?.classes_by_line?.[item.line];
  return byLine && byLine.length ? byLine : state.facets?.classes || [];
}

async function select(index) {
  state.selected = index;
  document.querySelectorAll("#decisions tbody tr").forEach((row, i) => {
    row.classList.toggle("selected", i === index);
    if (i === index) row.scrollIntoView({ block: "nearest" });
  });
  const item = current();
  $("#detail").hidden = !item;
  if (!item) return;
  renderFields(item);
  renderClassKeys(item);
  $("#relabel-label").value = "";
  await showFrame(item);
}

function renderFields(item) {
  const fields = {
    decision: item.id, time: formatTime(item.time), line: item.line, frame: item.frame_id,
    item: item.item_id ?? "–", model: `${item.model_name}:${item.model_version}`,
    class: item.class_name ?? "–", confidence: item.confidence?.toFixed(4) ?? "–",
    margin: item.margin?.toFixed(4) ?? "–", action: item.action, bin: item.bin ?? "–",
    "in time": item.in_time ? "yes" : "no", latency: `${item.latency_ms.toFixed(1)} ms`,
    "kept because": item.frame_reason ?? "–",
    review: item.review ? `${reviewText(item.review)} by ${item.review.reviewer}` : "not reviewed",
  };
  $("#fields").replaceChildren(...Object.entries(fields).flatMap(
    ([name, value]) => [element("dt", {}, name), element("dd", {}, String(value))]));
  $("#topk").replaceChildren(...item.top_k.map(([name, probability]) => {
    const bar = element("div", { class: "bar" });
    const track = element("span");
    track.append(element("span", { class: "fill", style: `width:${(probability * 100).toFixed(1)}%` }));
    bar.append(element("span", {}, name), track, element("span", {}, probability.toFixed(3)));
    return bar;
  }));
}

function renderClassKeys(item) {
  $("#class-keys").replaceChildren(...classesFor(item).map((name, i) => {
    const key = element("li", { "data-label": name },
      i < CLASS_KEYS.length ? `${CLASS_KEYS[i]} ${name}` : name);
    key.addEventListener("click", () => pick(name));
    return key;
  }));
}

function pick(label) {
  $("#relabel-label").value = label;
  document.querySelectorAll("#class-keys li").forEach(
    (key) => key.classList.toggle("picked", key.dataset.label === label));
}

async function showFrame(item) {
  const image = $("#frame-img");
  const caption = $("#frame-caption");
  if (state.frameUrl) URL.revokeObjectURL(state.frameUrl);
  state.frameUrl = null;
  image.removeAttribute("src");
  image.hidden = true; // no broken-image icon while loading or without a frame
  if (!item.frame_hash) {
    caption.textContent = "no frame kept for this decision";
    return;
  }
  caption.textContent = "loading frame…";
  const blob = await (await api(`/v1/audit/frames/${item.frame_hash}`)).blob();
  if (current() !== item) return; // the user moved on while it loaded
  state.frameUrl = URL.createObjectURL(blob);
  image.src = state.frameUrl;
  image.hidden = false;
  caption.textContent = `${item.frame_reason} · ${item.frame_hash.slice(0, 12)}`;
}

function reviewer() {
  const name = $("#reviewer").value.trim();
  if (!name) {
    $("#reviewer").focus();
    throw new Error("type your name in the Reviewer box first");
  }
  localStorage.setItem(REVIEWER_STORAGE, name);
  return name;
}

// One review at a time: a key pressed again while one is saved is ignored (it would review
// the same decision twice), and the answer updates that decision's own row, wherever the
// reviewer has moved meanwhile.
async function review(verdict) {
  const item = current();
  if (!item || state.saving) return;
  const body = { reviewer: reviewer(), verdict };
  if (verdict === "relabel") {
    body.label = $("#relabel-label").value.trim();
    if (!body.label) throw new Error("pick a class (1-9, 0) or type a label to relabel");
  }
  state.saving = true;
  setStatus(`saving the review of decision ${item.id}…`);
  let saved;
  try {
    const response = await api(`/v1/audit/decisions/${item.id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    saved = await response.json();
  } finally {
    state.saving = false;
  }
  item.review = { verdict: saved.verdict, label: saved.label, reviewer: saved.reviewer, time: saved.time };
  $(`#decisions tbody tr[data-id="${item.id}"]`)?.replaceWith(renderRow(item));
  setStatus(`decision ${item.id}: ${reviewText(item.review)}`);
  if (current() === item) { // still on it: move on to the next decision
    await select(Math.min(state.items.indexOf(item) + 1, state.items.length - 1));
  }
}

async function exportAs(format) {
  const params = filterParams();
  params.set("format", format);
  const blob = await (await api(`/v1/audit/decisions?${params}`)).blob();
  const link = element("a", { href: URL.createObjectURL(blob), download: `decisions.${format}` });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ---- charts (inline SVG) --------------------------------------------------------------------

function svg(tag, attributes, parent, text = "") {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== "") node.textContent = text;
  parent.append(node);
  return node;
}

function empty(container, text) {
  container.replaceChildren(element("p", { class: "empty" }, text));
}

// Every bucket of the window [since, until) is drawn, empty ones at 0, so a gap shows as
// a gap and a lone busy minute as a peak.
function windowBuckets(data, since, until) {
  const byTime = new Map(data.points.map((p) => [p.time, p]));
  const buckets = [];
  for (let t = Math.floor(since / data.bucket_s) * data.bucket_s; t < until; t += data.bucket_s) {
    buckets.push(byTime.get(t) || { time: t, total: 0 });
  }
  return buckets;
}

function throughputChart(container, data, since, until) {
  if (!data.points.length) return empty(container, "no decisions in this window");
  const width = 900, height = 260, left = 50, right = 110, top = 10, bottom = 30;
  const buckets = windowBuckets(data, since, until);
  const t0 = buckets[0].time, t1 = buckets.at(-1).time + data.bucket_s;
  const step = Math.max(1, Math.ceil(Math.max(...data.points.map((p) => p.total)) / 4));
  const yMax = step * 4; // whole-number ticks
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => height - bottom - (v / yMax) * (height - top - bottom);
  container.replaceChildren();
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `throughput of line ${data.line}` }, container);
  for (let i = 0; i <= 4; i++) {
    const value = step * i;
    svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }, chart);
    svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, chart, value);
  }
  svg("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "axis" }, chart);
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    svg("text", { x: x(t), y: height - 10, "text-anchor": "middle" }, chart,
      new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  }
  SERIES.forEach(([name, colour], i) => {
    const points = buckets.map((p) => `${x(p.time + data.bucket_s / 2)},${y(p[name] || 0)}`);
    svg("polyline", { points: points.join(" "), fill: "none", stroke: colour,
      "stroke-width": name === "total" ? 3 : 2, "stroke-dasharray": name === "total" ? "6 3" : "none",
      "data-series": name }, chart);
    svg("rect", { x: width - right + 12, y: top + i * 18, width: 10, height: 10, fill: colour }, chart);
    svg("text", { x: width - right + 28, y: top + i * 18 + 9 }, chart, name);
  });
}

function intervalChart(container, rows, labelOf) {
  if (!rows.length) return empty(container, "no reviewed decisions in this window yet");
  const width = 900, left = 260, right = 190, rowHeight = 22, top = 20;
  const height = top + rows.length * rowHeight + 10;
  const x = (share) => left + share * (width - left - right);
  container.replaceChildren();
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" }, container);
  for (const share of [0, 0.5, 0.8, 0.9, 1]) {
    svg("line", { x1: x(share), x2: x(share), y1: top - 5, y2: height - 5, class: "grid" }, chart);
    svg("text", { x: x(share), y: top - 8, "text-anchor": "middle" }, chart, `${share * 100}%`);
  }
  rows.forEach((row, i) => {
    const middle = top + i * rowHeight + rowHeight / 2;
    svg("text", { x: left - 8, y: middle + 4, "text-anchor": "end" }, chart, labelOf(row));
    svg("line", { x1: x(row.ci_low), x2: x(row.ci_high), y1: middle, y2: middle,
      stroke: "#6b7580", "stroke-width": 3 }, chart);
    svg("circle", { cx: x(row.share), cy: middle, r: 5, fill: "#0b6bcb" }, chart);
    svg("text", { x: width - right + 8, y: middle + 4 }, chart,
      `${(row.share * 100).toFixed(1)}% [${(row.ci_low * 100).toFixed(1)}–` +
      `${(row.ci_high * 100).toFixed(1)}] n=${row.n}`);
  });
}

function shiftLabel(shift) {
  return new Date(shift).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit" });
}

async function loadCharts() {
  const line = $("#chart-line").value;
  if (!line) return empty($("#throughput-chart"), "no lines recorded yet");
  const hours = Number($("#chart-hours").value) || 8;
  const until = Date.now() / 1000, since = until - hours * 3600;
  const bucket = Math.max(60, Math.ceil((hours * 3600) / 120 / 60) * 60);
  const query = new URLSearchParams({ line, since: new Date(since * 1000).toISOString(),
    until: new Date(until * 1000).toISOString() });
  const [throughput, purity] = await Promise.all([
    getJson(`/v1/audit/throughput?${query}&bucket_s=${bucket}`),
    getJson(`/v1/audit/purity?${query}`),
  ]);
  throughputChart($("#throughput-chart"), throughput, since, until);
  intervalChart($("#purity-chart"), purity.bins, (row) => `${row.bin} · ${shiftLabel(row.shift)}`);
  intervalChart($("#accuracy-chart"), purity.accuracy, (row) => `${shiftLabel(row.shift)}`);
}

// ---- wiring ---------------------------------------------------------------------------------

function showTab(name) {
  document.querySelectorAll(".tab").forEach((tab) => tab.classList.toggle("active", tab.dataset.tab === name));
  document.querySelectorAll(".panel").forEach((panel) => panel.classList.toggle("active", panel.id === name));
  if (name === "charts") loadCharts().then(() => setStatus("")).catch(report);
}

const KEYS = {
  j: () => select(Math.min(state.selected + 1, state.items.length - 1)),
  k: () => select(Math.max(state.selected - 1, 0)),
  n: () => turnPage(1),
  p: () => turnPage(-1),
  c: () => review("confirm"),
  r: () => review("relabel"),
};

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || $("#key-dialog").open) return;
  if (event.target.closest("input, select, textarea")) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (!$("#review").classList.contains("active")) return;
  const item = current();
  if (CLASS_KEYS.includes(event.key) && item) {
    const label = classesFor(item)[CLASS_KEYS.indexOf(event.key)];
    if (label) pick(label);
  } else if (KEYS[event.key]) {
    Promise.resolve().then(KEYS[event.key]).catch(report);
  } else {
    return;
  }
  event.preventDefault();
}

async function start() {
  $("#reviewer").value = localStorage.getItem(REVIEWER_STORAGE) || "";
  $("#reviewer").addEventListener("change", () =>
    localStorage.setItem(REVIEWER_STORAGE, $("#reviewer").value.trim()));
  $("#key-button").addEventListener("click", askKey);
  $("#key-cancel").addEventListener("click", () => $("#key-dialog").close());
  $("#key-form").addEventListener("submit", () => {
    localStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
    loadFacets().then(applyFilters).catch(report);
  });
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters().catch(report);
  });
  $("#filter-line").addEventListener("change", () => state.facets && fillClassFilter());
  $("#prev-page").addEventListener("click", () => turnPage(-1).catch(report));
  $("#next-page").addEventListener("click", () => turnPage(1).catch(report));
  $("#confirm").addEventListener("click", () => review("confirm").catch(report));
  $("#relabel").addEventListener("click", () => review("relabel").catch(report));
  $("#relabel-label").addEventListener("keydown", (event) => {
    if (event.key === "Enter") review("relabel").catch(report);
  });
  $("#export-csv").addEventListener("click", () => exportAs("csv").catch(report));
  $("#export-jsonl").addEventListener("click", () => exportAs("jsonl").catch(report));
  $("#chart-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCharts().catch(report);
  });
  document.querySelectorAll(".tab").forEach((tab) =>
    tab.addEventListener("click", () => showTab(tab.dataset.tab)));
  document.addEventListener("keydown", onKey);
  await loadFacets();
  await applyFilters();
}

start().catch(report);
