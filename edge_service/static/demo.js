// The demo page of the edge: no framework, no build step, no network beyond this edge.
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = [
  ["decode", "#7a8ba8"], ["preprocess", "#9aa9c2"], ["build", "#c9b37a"], ["head", "#2f6fde"],
  ["encode", "#5a93f0"], ["network", "#e39b3b"], ["tail", "#2e9d6a"],
];
const state = { info: null, cuts: null, file: null, busy: false, autoTimer: null };

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    // NOTE: styles through the CSSOM: the page's Content-Security-Policy refuses style attributes
    if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  if (text) node.textContent = text;
  return node;
}

function formatBytes(n) {
  if (n >= 1048576) return (n / 1048576).toFixed(2) + " MiB";
  if (n >= 1024) return (n / 1024).toFixed(1) + " KiB";
  return n + " B";
}

async function problemText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.title || ""}: ${body.detail || JSON.stringify(body)}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function fillCodecs() {
  const cut = $("cut").value || state.info.cut.name;
  const select = $("codec");
  select.replaceChildren();
  if (cut === "output") {
    select.append(el("option", { value: "" }, "none (the edge runs everything)"));
    select.disabled = true;
    return;
  }
  select.disabled = false;
  const names = cut === "input" ? state.cuts.image_codecs : state.cuts.activation_codecs;
  const current = $("cut").value === "" ? state.info.codec : null;
  select.append(el("option", { value: "" }, current ? `edge's choice (${current})` : "default"));
  for (const name of names) select.append(el("option", { value: name }, name));
}

function fillCuts() {
  const select = $("cut");
  select.replaceChildren(el("option", { value: "" }, `edge's choice (${state.info.cut.name})`));
  for (const cut of state.cuts.cuts) {
    select.append(el("option", { value: cut.name }, `${cut.index}: ${cut.name} (${formatBytes(cut.bytes_fp32)} fp32)`));
  }
  fillCodecs();
}

function describeServed(info) {
  const mode = info.cut_selection && info.cut_selection.mode === "auto" ? "auto, now " : "";
  $("served").textContent =
    `${info.model} (${info.weights} weights) on ${info.device}; cut ${mode}${info.cut.name}, codec ${info.codec}; ` +
    `cloud ${info.cloud_url}, fallback ${info.fallback}`;
  $("random-banner").hidden = info.weights !== "random";
}

function renderTop5(predictions) {
  const list = $("top5");
  list.replaceChildren();
  for (const p of predictions) {
    const item = el("li");
    const bar = el("span", { class: "bar", style: { width: `${Math.max(2, p.probability * 160)}px` } });
    item.append(bar, el("span", { class: "label" }, `${p.label} `), el("span", { class: "prob" }, (p.probability * 100).toFixed(1) + "%"));
    list.append(item);
  }
}

function renderSummary(body, uploadBytes) {
  const rows = [
    ["cut", body.cut], ["codec", body.codec],
    ["payload", body.completed_on === "edge" && body.payload_bytes === 0 ? "nothing sent (the edge ran the whole model)"
      : `${formatBytes(body.payload_bytes)} sent vs the ${formatBytes(uploadBytes)} image ` +
        `(${(body.payload_bytes / uploadBytes).toFixed(2)}x)`],
    ["finished on", body.completed_on + (body.cloud_instance ? ` (${body.cloud_instance})` : "")],
    ["total", body.timings_ms.total.toFixed(1) + " ms"],
  ];
  const list = $("summary");
  list.replaceChildren();
  for (const [k, v] of rows) list.append(el("dt", {}, k), el("dd", { "data-key": k }, v));
}

function stages(timings) {
  const out = {};
  for (const key of ["decode", "preprocess", "build", "head", "encode"]) if (key in timings) out[key] = timings[key];
  if ("cloud_round_trip" in timings) {
    const tail = timings.cloud_tail || 0;
    out.network = Math.max(0, timings.cloud_round_trip - tail);
    out.tail = tail;
  } else if ("tail" in timings) {
    out.tail = timings.tail;
  }
  return out;
}

function renderWaterfall(timings) {
  const parts = stages(timings);
  const total = Math.max(timings.total || 0, Object.values(parts).reduce((a, b) => a + b, 0), 0.001);
  const box = $("waterfall");
  box.replaceChildren();
  let start = 0;
  for (const [name, color] of STAGES) {
    if (!(name in parts)) continue;
    const ms = parts[name];
    const row = el("div", { class: "stage", "data-stage": name });
    const track = el("div", { class: "track" });
    track.append(el("div", { class: "seg", style: { left: `${(start / total) * 100}%`, width: `${Math.max(0.4, (ms / total) * 100)}%`, background: color } }));
    row.append(el("span", {}, name === "build" ? "build (first use)" : name), track, el("span", { class: "ms" }, ms.toFixed(1) + " ms"));
    box.append(row);
    start += ms;
  }
}

async function classify() {
  if (!state.file || state.busy) return;
  state.busy = true;
  showError("");
  const result = $("result");
  result.dataset.state = "busy";
  const params = new URLSearchParams({ top_k: "5" });
  if ($("cut").value) params.set("cut", $("cut").value);
  if ($("codec").value && !$("codec").disabled) params.set("codec", $("codec").value);
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  try {
    // NOTE: URLSearchParams encodes '+' as %2B, so int8+zstd arrives intact.
    const response = await fetch(`/v1/classify?${params}`, { method: "POST", body: form });
    if (!response.ok) {
      showError(await problemText(response));
      result.dataset.state = "error";
      return;
    }
    const body = await response.json();
    renderTop5(body.predictions);
    renderSummary(body, state.file.size);
    renderWaterfall(body.timings_ms);
    Object.assign(result.dataset, {
      state: "done", cut: body.cut, codec: body.codec, bytes: String(body.payload_bytes),
      count: String(Number(result.dataset.count) + 1), top: body.predictions[0].label,
    });
    $("again").disabled = false;
  } catch (err) {
    showError(`the edge did not answer: ${err}`);
    result.dataset.state = "error";
  } finally {
    state.busy = false;
  }
}

function useFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  classify();
}

function chart(points) {
  const width = 900, height = 240, left = 56, right = 56, top = 14, bottom = 90;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const n = points.length;
  const maxMs = Math.max(...points.map((p) => p.latency_ms), 1);
  const maxBytes = Math.max(...points.map((p) => p.bytes_per_image), 1);
  const x = (i) => left + (n === 1 ? 0 : (i * (width - left - right)) / (n - 1));
  const yMs = (v) => top + (1 - v / maxMs) * (height - top - bottom);
  const yBytes = (v) => top + (1 - v / maxBytes) * (height - top - bottom);
  const barWidth = Math.max(2, (width - left - right) / Math.max(n, 1) * 0.6);
  points.forEach((p, i) => {
    add("rect", { x: x(i) - barWidth / 2, y: yBytes(p.bytes_per_image), width: barWidth,
      height: height - bottom - yBytes(p.bytes_per_image), fill: "#e9c48a" });
    add("text", { x: x(i), y: height - bottom + 10, transform: `rotate(60 ${x(i)} ${height - bottom + 10})` }, p.cut);
  });
  add("polyline", { points: points.map((p, i) => `${x(i)},${yMs(p.latency_ms)}`).join(" "), fill: "none",
    stroke: "#2f6fde", "stroke-width": 2 });
  points.forEach((p, i) => {
    const dot = add("circle", { cx: x(i), cy: yMs(p.latency_ms), r: 3, fill: "#2f6fde" });
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${p.cut} (${p.codec}): ${p.latency_ms.toFixed(1)} ms, ${formatBytes(Math.round(p.bytes_per_image))}`;
    dot.append(tip);
  });
  add("text", { x: 4, y: top + 4 }, `${maxMs.toFixed(0)} ms`);
  add("text", { x: 4, y: height - bottom }, "0 ms");
  add("text", { x: width - right + 4, y: top + 4 }, formatBytes(Math.round(maxBytes)));
  return svg;
}

async function replan() {
  const params = new URLSearchParams({ bandwidth: $("bandwidth").value, rtt: $("rtt").value });
  const response = await fetch(`/v1/plan?${params}`);
  const box = $("plan-chart");
  if (!response.ok) {
    box.replaceChildren(el("p", { class: "error" }, await problemText(response)));
    return;
  }
  const body = await response.json();
  if (!body.available) {
    $("plan-missing").textContent = `No prediction: ${body.reason}.`;
    $("plan-missing").hidden = false;
    $("plan-controls").hidden = true;
    return;
  }
  $("plan-controls").hidden = false;
  const best = body.points.reduce((a, b) => (b.latency_ms < a.latency_ms ? b : a));
  box.replaceChildren(
    chart(body.points),
    el("p", { class: "legend" }, `line: predicted latency (best codec per cut); bars: bytes per image; ` +
      `cuts in execution order. Fastest: ${best.cut} with ${best.codec}, ${best.latency_ms.toFixed(1)} ms.`),
  );
}

function renderAuto(selection) {
  $("auto-panel").hidden = false;
  const link = selection.estimated_link || {};
  const rows = [
    ["current prediction", `${selection.predicted_latency_ms} ms (expected ${selection.expected_latency_ms} ms)`],
    ["estimated link", JSON.stringify(link)],
    ["switches", String(selection.switches)],
    ["exploring", selection.exploring ? `${selection.exploring.cut} / ${selection.exploring.codec}` : "no"],
  ];
  const list = $("auto-link");
  list.replaceChildren();
  for (const [k, v] of rows) list.append(el("dt", {}, k), el("dd", {}, v));
  const switches = $("auto-switches");
  switches.replaceChildren();
  for (const item of (selection.recent_switches || []).slice(-10).reverse()) {
    switches.append(el("li", {}, typeof item === "string" ? item : JSON.stringify(item)));
  }
}

async function refreshInfo() {
  const response = await fetch("/v1/info");
  if (!response.ok) {
    $("served").textContent = `the edge is not ready: ${await problemText(response)}`;
    return false;
  }
  state.info = await response.json();
  describeServed(state.info);
  if (state.info.cut_selection && state.info.cut_selection.mode === "auto") renderAuto(state.info.cut_selection);
  return true;
}

async function start() {
  if (!(await refreshInfo())) {
    setTimeout(start, 2000);
    return;
  }
  const response = await fetch("/v1/cuts");
  state.cuts = await response.json();
  fillCuts();
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    useFile(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  $("cut").addEventListener("change", () => { fillCodecs(); classify(); });
  $("codec").addEventListener("change", classify);
  $("again").addEventListener("click", classify);
  $("replan").addEventListener("click", replan);
  if (state.cuts.profiles) {
    await replan();
  } else {
    $("plan-missing").textContent =
      "No profiles loaded: start the edge with --edge-profile and --cloud-profile (written by `splitinfer profile`) " +
      "to see predicted latency and bytes for every cut.";
    $("plan-missing").hidden = false;
  }
  if (state.info.cut_selection && state.info.cut_selection.mode === "auto") {
    state.autoTimer = setInterval(refreshInfo, 3000);
  }
  document.body.dataset.ready = "true";
}

start();
