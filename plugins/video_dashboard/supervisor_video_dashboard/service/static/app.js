// The dashboard: plain DOM, no build step. Every value from the API goes in as text, never
// as HTML, since descriptions come from a model reading camera images.
"use strict";

const $ = (id) => document.getElementById(id);
const THREAT = ["normal", "worth a look", "likely threat"];
let selected = null;
let camerasSeen = "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const when = (t) => new Date(t * 1000).toLocaleString();
const badge = (level) => el("span", { class: `badge threat-${level}`, text: `threat ${level}`, title: THREAT[level] });

function cameraCard(cam) {
  const event = cam.event;
  const picture = cam.last_frame
    ? el("img", { src: `/api/cameras/${encodeURIComponent(cam.name)}/latest.jpg?t=${cam.last_frame}`, alt: `latest frame from ${cam.name}` })
    : el("div", { class: "noframe", text: "no frame yet" });
  const body = el("div", { class: "body" },
    el("div", { class: "name" }, el("span", { text: cam.name }),
      el("span", { class: `status-${cam.status}`, text: cam.status, title: cam.error || "" })),
    el("div", { class: "muted", text: cam.last_frame ? `frame ${when(cam.last_frame)}` : cam.kind }),
    event ? el("div", { class: "desc" }, badge(event.threat), " ", el("span", { text: event.summary || event.title })) :
      el("div", { class: "muted", text: "no events yet" }));
  return el("div", { class: "camera", "data-camera": cam.name }, picture, body);
}

async function loadCameras() {
  const { cameras } = await getJSON("/api/cameras");
  $("cameras").replaceChildren(...(cameras.length ? cameras.map(cameraCard) : [el("p", { class: "muted", text: "No cameras configured." })]));
  const names = cameras.map((c) => c.name).join(",");
  if (names !== camerasSeen) {
    camerasSeen = names;
    const select = $("f-camera");
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "all" }), ...cameras.map((c) => el("option", { value: c.name, text: c.name })));
    select.value = current;
  }
}

function query() {
  const params = new URLSearchParams();
  for (const [id, key] of [["f-camera", "camera"], ["f-category", "category"], ["f-threat", "threat"], ["f-hours", "hours"], ["f-search", "q"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  if ($("f-hide").checked) params.set("hide_no_activity", "1");
  return params.toString();
}

function eventRow(e) {
  const thumb = e.frames.length ? el("img", { src: e.frames[Math.floor(e.frames.length / 2)].url, alt: "" }) : el("span");
  const tags = el("div", {}, ...e.categories.map((c) => el("span", { class: "tag", text: c })),
    el("span", { class: `tag source-${e.source}`, text: e.source === "detector" ? "detector" : `model: ${e.analyser}` }),
    e.test_run ? el("span", { class: "tag", text: "test run" }) : null,
    e.activity ? null : el("span", { class: "tag muted", text: "no activity" }));
  const row = el("li", { class: "event", "data-id": String(e.id), onclick: () => showEvent(e.id) },
    thumb,
    el("div", {}, el("div", { class: e.error ? "title error" : "title", text: e.title }),
      el("div", { class: "summary", text: e.summary }),
      el("div", { class: "meta", text: `${e.camera} · ${when(e.started)}` }), tags),
    badge(e.threat));
  if (e.id === selected) row.classList.add("selected");
  return row;
}

let eventsRequest = 0;
async function loadEvents() {
  const mine = ++eventsRequest;
  const { events } = await getJSON(`/api/events?${query()}`);
  if (mine !== eventsRequest) return; // a newer filter change already answered
  $("events").replaceChildren(...(events.length ? events.map(eventRow) : [el("li", { class: "muted empty", text: "No events match." })]));
}

async function showEvent(id) {
  selected = id;
  const e = await getJSON(`/api/events/${id}`);
  $("detail-section").hidden = false;
  $("detail-title").replaceChildren(el("span", { text: `${e.title} · ${e.camera} ` }), badge(e.threat));
  $("detail-frames").replaceChildren(...e.frames.map((f) =>
    el("figure", {}, el("img", { src: f.url, alt: `frame ${f.n}` }), el("figcaption", { text: `+${f.t.toFixed(1)} s` }))));
  $("detail-json").textContent = JSON.stringify(e.analysis, null, 2);
  for (const row of document.querySelectorAll(".event")) row.classList.toggle("selected", row.dataset.id === String(id));
}

function benchTable(bench) {
  const rows = [];
  // A key's value spans the columns of the widest per-level table, so it is not squeezed.
  const widest = Math.max(2, ...Object.values(bench).map((v) => (Array.isArray(v) && v.length && typeof v[0] === "object" ? Object.keys(v[0]).length : 0)));
  const span = String(widest - 1);
  for (const [key, value] of Object.entries(bench)) {
    if (Array.isArray(value) && value.length && typeof value[0] === "object") {
      const columns = Object.keys(value[0]);
      rows.push(el("tr", {}, el("th", { colspan: String(columns.length), text: key })));
      // Spaced names wrap, so a level's columns fit the narrow panel.
      rows.push(el("tr", {}, ...columns.map((c) => el("th", { text: c.replaceAll("_", " ") }))));
      for (const item of value) rows.push(el("tr", {}, ...columns.map((c) => el("td", { text: String(item[c] ?? "") }))));
    } else if (value === null || typeof value !== "object") {
      rows.push(el("tr", {}, el("th", { text: key }), el("td", { colspan: span, text: String(value) })));
    } else {
      for (const [k, v] of Object.entries(value)) rows.push(el("tr", {}, el("th", { text: `${key}.${k}` }), el("td", { colspan: span, text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
    }
  }
  return rows;
}

async function loadHealth() {
  const health = await getJSON("/health");
  $("mode").textContent = health.mode === "model" ? `vision model: ${health.inference.model}${health.inference.test_run ? " (test run)" : ""}` : "CPU path: people detector";
  const facts = [["status", health.status], ["analyser", health.analyser], ["events", health.events],
    ["analyses", health.analysis.analyses], ["failures", health.analysis.failures], ["uptime", `${Math.round(health.uptime_s)} s`]];
  if (health.cameras_offline.length) facts.push(["offline", health.cameras_offline.join(", ")]);
  if (health.inference && !health.inference.reachable) facts.push(["model server", health.inference.error]);
  $("health").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  const { bench } = await getJSON("/api/bench");
  if (bench) $("bench").replaceChildren(el("tbody", {}, ...benchTable(bench)));
}

async function refresh() {
  try {
    await Promise.all([loadCameras(), loadEvents(), loadHealth()]);
    document.body.dataset.loaded = "1";
  } catch (error) {
    console.error(error);
  }
}

let typing = null;
$("filters").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(loadEvents, 200);
});
$("filters").addEventListener("change", loadEvents);
refresh();
setInterval(refresh, 5000);
