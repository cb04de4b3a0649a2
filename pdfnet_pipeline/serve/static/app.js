// The serve page: each photo is sent to POST /predict?output=all (a few at a time, retried while
// the server answers 503), and its depth map, mask and cut-out are shown at the photo's own size
// with download buttons. Everything stays on this origin (the page's CSP allows nothing else).
"use strict";

const MAX_UPLOAD = Number(document.body.dataset.maxUpload);
const MAX_UPLOAD_MB = document.body.dataset.maxUploadMb;
const PARALLEL = 4;
const OUTPUTS = [["depth", "depth map"], ["mask", "mask"], ["cutout", "cut-out"]];
const queue = [];
let running = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function pngBlob(base64) {
  const bin = atob(base64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: "image/png" });
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

function addCard(file) {
  const status = el("p", { class: "status" }, "waiting");
  const card = el("section", { class: "result", "data-state": "waiting" }, el("h2", {}, file.name), status);
  document.getElementById("results").prepend(card);
  return { card, status };
}

function fail(view, message) {
  view.card.dataset.state = "error";
  view.status.textContent = message;
}

function show(view, file, data, roundTripMs) {
  const t = data.timing_ms;
  view.status.textContent = `${data.width} x ${data.height} px: ${Math.round(t.total)} ms on the server ` +
    `(model ${Math.round(t.model)} ms, batch of ${data.batch_size}, queue ${Math.round(t.queue)} ms), ` +
    `${Math.round(roundTripMs)} ms in all`;
  const grid = el("div", { class: "grid" });
  for (const [key, label] of OUTPUTS) {
    const url = URL.createObjectURL(pngBlob(data[key]));
    const name = `${stem(file.name)}_${key}.png`;
    const img = el("img", { class: key, src: url, alt: `${label} of ${file.name}` });
    const link = el("a", { class: "download", href: url, download: name }, "download");
    grid.append(el("figure", { class: key }, img, el("figcaption", {}, el("span", {}, label), link)));
  }
  view.card.append(grid);
  view.card.dataset.state = "done";
}

async function send(file, view) {
  const started = performance.now();
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    form.append("image", file, file.name);
    view.status.textContent = attempt ? `server busy, retry ${attempt}` : "working";
    let response;
    try {
      response = await fetch("/predict?output=all", { method: "POST", body: form });
    } catch (err) {
      return fail(view, `the server cannot be reached (${err.message})`);
    }
    if (response.status === 503 && attempt < 10) {
      const wait = Number(response.headers.get("Retry-After") || 1);
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(wait, 10)));
      continue;
    }
    let data;
    try {
      data = await response.json();
    } catch (err) {
      return fail(view, `error ${response.status}: the answer is not JSON`);
    }
    if (!response.ok) return fail(view, `error ${response.status}: ${data.error}`);
    return show(view, file, data, performance.now() - started);
  }
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const [file, view] = queue.shift();
    running++;
    send(file, view).finally(() => { running--; pump(); });
  }
}

function add(files) {
  for (const file of files) {
    const view = addCard(file);
    if (file.size > MAX_UPLOAD) {
      fail(view, `${(file.size / 1048576).toFixed(1)} MB is over the server's limit of ${MAX_UPLOAD_MB} MB`);
      continue;
    }
    queue.push([file, view]);
  }
  pump();
}

async function describeModel() {
  const node = document.getElementById("model");
  try {
    const h = await (await fetch("/health")).json();
    node.textContent = `${h.checkpoint} on ${h.device} (${h.precision}, ${h.size} px network side; depth: DAM v2 ` +
      `${h.dam.arch}, ${h.dam.weights}); batches of up to ${h.max_batch}`;
  } catch (err) {
    node.textContent = "the server cannot be reached";
  }
}

const drop = document.getElementById("drop");
const input = document.getElementById("files");
input.addEventListener("change", () => { add(input.files); input.value = ""; });
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const kind of ["dragleave", "drop"]) {
  drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (event) => add(event.dataTransfer.files));
document.getElementById("origin").textContent = location.origin;
describeModel();
