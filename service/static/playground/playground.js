// The playground: draws, uploads and sliders in; the service's public HTTP API out. No framework, no build step.
"use strict";

const SIDE = 28; // MNIST images are 28x28
const STROKE_WIDTH = 22; // on the 280x280 pad: about 2 MNIST pixels once the digit is fitted into 20x20
const KEY_STORAGE = "vae-playground-api-key";
const INTERPOLATION_STEPS = 10;

const $ = (id) => document.getElementById(id);

const state = {
  strokes: [], // each a list of [x, y] points in pad pixels
  drawing: null, // the stroke under the pointer, with its pointerId
  request: 0, // the newest analysis; answers to older ones are dropped
  answered: 0, // the newest analysis shown (or explained, if it failed)
  lastInput: null, // {blob, name, query}: what to send again after an API key is entered
  mean: null, // posterior mean of the last drawing or upload
  latentSize: 16, // from /v1/model
  features: { score: true, interpolate: true }, // routes this service has (from its OpenAPI document)
  ends: { a: null, b: null }, // interpolation end points (latent vectors)
  animation: null,
  decode: { busy: false, again: false },
  last: null, // the last analysis as numbers, for a reader of the page (and its tests)
  loads: { samples: 0, decoded: 0, interpolations: 0 }, // pictures drawn so far, so a reader can tell a new one arrived
};
window.playground = state;

// ---- talking to the service ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch with the API key, the model identity noted, and every failure turned into an ApiError with the detail.
async function api(path, { method = "GET", body, json } = {}) {
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, body, headers });
  } catch (err) {
    throw new ApiError(0, `the service cannot be reached (${err.message})`);
  }
  const version = response.headers.get("X-Model-Version");
  if (version) $("model-version").value = version;
  if (response.ok) return response;
  let detail = `${response.status} ${response.statusText}`;
  try {
    const doc = await response.json();
    detail = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail ?? doc.error ?? doc);
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) askForKey();
  throw new ApiError(response.status, detail);
}

async function apiJson(path, options) {
  const doc = await (await api(path, options)).json();
  noteModel(doc);
  return doc;
}

function noteModel(doc) {
  if (doc && doc.model !== undefined) $("model-name").value = doc.model;
  if (doc && doc.version !== undefined) $("model-version").value = doc.version;
}

// ---- messages --------------------------------------------------------------------------------------------

function say(text, kind = "info") {
  const status = $("status");
  status.textContent = text;
  status.className = text ? kind : "";
}

function explain(err, what) {
  if (!(err instanceof ApiError)) {
    say(`Something went wrong in this page while ${what}: ${err.message}`, "error");
  } else if (err.status === 503) {
    say(`The service is not ready (${what}): ${err.message}. Try again in a moment.`, "error");
  } else if (err.status === 401) {
    say(`The service needs an API key (${what}): ${err.message}`, "error");
  } else if (err.status >= 400 && err.status < 500) {
    say(`The service rejected the input (${what}, ${err.status}): ${err.message}`, "error");
  } else if (err.status === 0) {
    say(`${err.message} (${what}).`, "error");
  } else {
    say(`The service failed (${what}, ${err.status}): ${err.message}`, "error");
  }
}

function askForKey() {
  const form = $("key-form");
  if (!form.hidden) return;
  form.hidden = false;
  $("api-key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-form").hidden = true;
  say("");
  start();
});

// ---- pictures --------------------------------------------------------------------------------------------

// rows: 28 rows of 28 values in [0, 1] -> grey pixels on a 28x28 canvas.
function paintDigit(canvas, rows) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  rows.flat().forEach((value, i) => {
    const grey = Math.round(Math.min(1, Math.max(0, value)) * 255);
    image.data.set([grey, grey, grey, 255], i * 4);
  });
  context.putImageData(image, 0, 0);
}

// images: several 28x28 digits -> side by side on one canvas.
function paintStrip(canvas, images) {
  canvas.width = SIDE * images.length;
  const scratch = document.createElement("canvas");
  scratch.width = scratch.height = SIDE;
  images.forEach((rows, i) => {
    paintDigit(scratch, rows);
    canvas.getContext("2d").drawImage(scratch, i * SIDE, 0);
  });
}

// A diverging colour: blue for -1, white for 0, red for +1.
function diverging(t) {
  const u = Math.min(1, Math.abs(t));
  const fade = Math.round(255 * (1 - u));
  return t < 0 ? [fade, fade, 255] : [255, fade, fade];
}

function paintCovariance(covariance) {
  const canvas = $("covariance");
  const n = covariance.length;
  canvas.width = canvas.height = n;
  const biggest = Math.max(...covariance.flat().map(Math.abs)) || 1;
  const context = canvas.getContext("2d");
  const image = context.createImageData(n, n);
  covariance.flat().forEach((value, i) => image.data.set([...diverging(value / biggest), 255], i * 4));
  context.putImageData(image, 0, 0);
  canvas.title = `covariance, colour scale ±${biggest.toPrecision(2)}`;
}

const SVG = $("bars").namespaceURI; // the SVG namespace, taken from the page's own <svg> element

function svg(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  Object.entries(attributes).forEach(([key, value]) => element.setAttribute(key, value));
  parent.appendChild(element);
  return element;
}

// One bar per latent coordinate from 0 to its mean, with a whisker of ±1 standard deviation.
function paintBars(mean, std) {
  const bars = $("bars");
  bars.replaceChildren();
  const width = 320, top = 6, bottom = 150, zero = (top + bottom) / 2;
  const range = Math.max(3, ...mean.map((m, i) => Math.abs(m) + std[i]));
  const y = (value) => zero - (value / range) * (zero - top);
  const column = width / mean.length;
  svg("line", { x1: 0, x2: width, y1: zero, y2: zero, class: "zero" }, bars);
  mean.forEach((m, i) => {
    const x = i * column + column / 2;
    const group = svg("g", { class: "latent-bar", "data-mean": m, "data-std": std[i] }, bars);
    svg("title", {}, group).textContent = `z${i + 1}: mean ${m.toFixed(3)}, sd ${std[i].toFixed(3)}`;
    svg("rect", { x: x - column * 0.3, width: column * 0.6, y: Math.min(y(m), zero),
                  height: Math.max(0.5, Math.abs(y(m) - zero)) }, group);
    for (const [y1, y2] of [[y(m - std[i]), y(m + std[i])]]) {
      svg("line", { x1: x, x2: x, y1, y2 }, group);
      svg("line", { x1: x - 3, x2: x + 3, y1, y2: y1 }, group);
      svg("line", { x1: x - 3, x2: x + 3, y1: y2, y2 }, group);
    }
    svg("text", { x, y: 164, "text-anchor": "middle" }, group).textContent = `z${i + 1}`;
  });
}

// ---- the drawing pad -------------------------------------------------------------------------------------

const pad = $("pad");
const ink = pad.getContext("2d");

function repaintPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = ink.fillStyle = "#fff";
  ink.lineWidth = STROKE_WIDTH;
  ink.lineCap = ink.lineJoin = "round";
  for (const stroke of state.strokes) {
    ink.beginPath();
    ink.moveTo(...stroke[0]);
    if (stroke.length === 1) ink.lineTo(stroke[0][0] + 0.1, stroke[0][1]); // a dot
    stroke.slice(1).forEach((point) => ink.lineTo(...point));
    ink.stroke();
  }
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || state.drawing) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  state.drawing = { id: event.pointerId, points: [padPoint(event)] };
  state.strokes.push(state.drawing.points);
  repaintPad();
});

pad.addEventListener("pointermove", (event) => {
  if (!state.drawing || event.pointerId !== state.drawing.id) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  (events.length ? events : [event]).forEach((e) => state.drawing.points.push(padPoint(e)));
  repaintPad();
});

function endStroke(event) {
  if (!state.drawing || event.pointerId !== state.drawing.id) return;
  state.drawing = null;
  analysePad();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  state.strokes.pop();
  repaintPad();
  if (state.strokes.length) analysePad();
}

function clearPad() {
  state.strokes = [];
  repaintPad();
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearPad);
pad.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") {
    event.preventDefault();
    undo();
  } else if (event.key === "Delete" || event.key === "Escape") {
    clearPad();
  }
});

function analysePad() {
  // normalize=true: crop and centre the drawing the way MNIST digits were made (the pad is not MNIST-shaped).
  const request = ++state.request; // numbered now: the PNG is made asynchronously, and a later upload must win
  pad.toBlob((blob) => analyse({ blob, name: "drawing.png", query: "normalize=true" }, request), "image/png");
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (file) analyse({ blob: file, name: file.name, query: "" }); // the service's default preprocessing
  $("upload").value = "";
});

// ---- what the model makes of an image --------------------------------------------------------------------

function imageForm(input) {
  const form = new FormData();
  form.append("files", input.blob, input.name);
  return form;
}

function describeValue(key, value) {
  if (value === true) return "yes";
  if (value === false) return "no";
  if (value === null || value === undefined) return "none";
  if (key === "crop_box" && Array.isArray(value)) {
    const [top, left, bottom, right] = value;
    return `rows ${top}-${bottom}, columns ${left}-${right}`;
  }
  if (typeof value === "object" && "method" in value) {
    return typeof value.value === "number" ? `${value.method} ${value.value.toFixed(3)}` : value.method;
  }
  return typeof value === "object" ? JSON.stringify(value) : value;
}

function describePreprocessing(preprocessing) {
  const step = Array.isArray(preprocessing) ? preprocessing[0] : preprocessing;
  if (step === undefined || step === null) return "";
  if (typeof step !== "object") return `Preprocessing: ${step}`;
  const words = Object.entries(step).map(([key, value]) => `${key.replaceAll("_", " ")}: ${describeValue(key, value)}`);
  return `Preprocessing: ${words.join(", ")}`;
}

// The answer's per-image verdict ({"understood", "percentile", "nll_estimate", "threshold"}), if the service sends
// one: whether the model understood the picture as a digit.
function showVerdict(verdict) {
  const one = Array.isArray(verdict) ? verdict[0] : verdict;
  const shown = one !== undefined && one !== null && typeof one === "object";
  $("verdict").hidden = !shown;
  if (!shown) return;
  const percentile = typeof one.percentile === "number" ? ` (less likely than ${one.percentile.toFixed(1)}% of ` +
    `MNIST test digits${typeof one.threshold === "number" ? `; the limit is ${one.threshold}%` : ""})` : "";
  if (one.understood === true) {
    $("verdict").textContent = `Understood: the model reads this as a digit${percentile}.`;
    $("verdict").className = "inlier";
  } else if (one.understood === false) {
    $("verdict").textContent = `Not understood: the model finds this unlike the digits it knows${percentile}. ` +
      "Try a darker pen, more light, or a tighter photo.";
    $("verdict").className = "outlier";
  } else {
    $("verdict").textContent = "The model cannot tell whether it understood this (no calibration).";
    $("verdict").className = "hint";
  }
}

// The value of `key` for image `i`: the route answers per-image lists, or a list of per-image objects.
function perImage(doc, key, i = 0) {
  if (Array.isArray(doc[key])) return doc[key][i];
  for (const list of [doc.scores, doc.results, doc.images]) {
    if (Array.isArray(list) && list[i] && typeof list[i] === "object" && key in list[i]) return list[i][key];
  }
  return doc[key];
}

async function score(input, query) {
  if (!state.features.score) return null;
  try {
    return await apiJson(`/v1/score?${query}`, { method: "POST", body: imageForm(input) });
  } catch (err) {
    if (err.status === 404 || err.status === 405 || err.status === 409) {
      state.features.score = false; // this service has no scoring route, or its model no score signature
      return null;
    }
    throw err;
  }
}

function showScore(doc) {
  $("score").hidden = !doc;
  if (!doc) return;
  const nll = perImage(doc, "nll"), elbo = perImage(doc, "elbo");
  const percentile = perImage(doc, "percentile"), outlier = perImage(doc, "outlier");
  const number = (value, digits = 1) => (typeof value === "number" ? value.toFixed(digits) : "?");
  const verdict = outlier ? "Outlier: the model finds this unlike the digits it was trained on."
                          : "Not an outlier.";
  $("score-text").textContent = `ELBO ${number(elbo)} nats, NLL ${number(nll)} nats: a higher NLL than ` +
    `${number(percentile)}% of MNIST test digits. ${verdict}` +
    (doc.k !== undefined ? ` (importance samples k = ${doc.k}, seed ${doc.seed})` : "");
  $("score-text").className = outlier ? "outlier" : "inlier";
}

async function analyse(input, request = ++state.request) {
  if (request === state.request) state.lastInput = input;
  const query = [input.query, "include_input=true"].filter(Boolean).join("&");
  $("result-panel").setAttribute("aria-busy", "true");
  try {
    const [reconstruction, encoding, scored] = await Promise.all([
      apiJson(`/v1/reconstruct?format=json&output=probs&${query}`, { method: "POST", body: imageForm(input) }),
      apiJson(`/v1/encode?${query}`, { method: "POST", body: imageForm(input) }),
      score(input, input.query || ""), // the score needs no copy of the input
    ]);
    if (request !== state.request) return; // a newer stroke has been sent meanwhile
    say("");
    showAnalysis(reconstruction, encoding, scored);
  } catch (err) {
    if (request === state.request) explain(err, `analysing ${input.name}`);
  } finally {
    if (request === state.request) {
      $("result-panel").removeAttribute("aria-busy");
      state.answered = request;
    }
  }
}

function showAnalysis(reconstruction, encoding, scored) {
  const probs = reconstruction.images[0];
  const inputs = reconstruction.inputs || encoding.inputs;
  $("input-figure").hidden = !inputs;
  if (inputs) paintDigit($("input"), inputs[0]);
  paintDigit($("recon-probs"), probs);
  // The decoder is a Bernoulli per pixel: its mode is 1 where the probability is above one half.
  paintDigit($("recon-mode"), probs.map((row) => row.map((p) => (p > 0.5 ? 1 : 0))));
  $("preprocessing").textContent = describePreprocessing(encoding.preprocessing ?? reconstruction.preprocessing);
  showVerdict(reconstruction.verdict ?? encoding.verdict);
  const mean = encoding.mean[0];
  const covariance = encoding.covariance[0];
  const std = covariance.map((row, i) => Math.sqrt(Math.max(0, row[i])));
  paintBars(mean, std);
  paintCovariance(covariance);
  showScore(scored);
  state.mean = mean;
  state.last = { probs, inputs: inputs ? inputs[0] : null, mean, std, covariance, score: scored };
  setSliders(mean);
  $("set-a").disabled = $("set-b").disabled = false;
}

// ---- latent sliders --------------------------------------------------------------------------------------

function buildSliders(size) {
  const sliders = $("sliders");
  sliders.replaceChildren();
  for (let i = 0; i < size; i++) {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"),
      { type: "range", min: -4, max: 4, step: 0.01, value: 0, id: `z${i}` });
    const output = document.createElement("output");
    output.htmlFor = input.id;
    output.value = "0.00";
    label.append(`z${i + 1}`, input, output);
    input.addEventListener("input", () => {
      output.value = Number(input.value).toFixed(2);
      decodeSliders();
    });
    sliders.appendChild(label);
  }
}

function sliderValues() {
  return [...$("sliders").querySelectorAll("input")].map((input) => Number(input.value));
}

function setSliders(values) {
  if ($("sliders").children.length !== values.length) buildSliders(values.length);
  $("sliders").querySelectorAll("label").forEach((label, i) => {
    label.querySelector("input").value = values[i];
    label.querySelector("output").value = values[i].toFixed(2);
  });
  decodeSliders();
}

// One decode in flight at a time; moves made meanwhile are sent together once it answers.
async function decodeSliders() {
  if (state.decode.busy) {
    state.decode.again = true;
    return;
  }
  state.decode.busy = true;
  try {
    const doc = await apiJson("/v1/decode?format=json", { method: "POST",
                                                           json: { latents: [sliderValues()], output: "probs" } });
    paintDigit($("decoded"), doc.images[0]);
    state.loads.decoded++;
  } catch (err) {
    explain(err, "decoding the sliders");
  } finally {
    state.decode.busy = false;
    if (state.decode.again) {
      state.decode.again = false;
      decodeSliders();
    }
  }
}

$("reset-sliders").addEventListener("click", () => setSliders(state.mean || sliderValues().map(() => 0)));

// ---- samples from the prior ------------------------------------------------------------------------------

async function showSamples() {
  const field = $("seed");
  const seed = Number(field.value);
  if (field.value === "" || !Number.isInteger(seed) || seed < 0) {
    say("The seed must be a whole number, 0 or more.", "error");
    return;
  }
  try {
    const response = await api(`/v1/samples?n=16&seed=${seed}&format=png`);
    const bitmap = await createImageBitmap(await response.blob());
    const canvas = $("samples");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    canvas.dataset.seed = String(seed);
    state.loads.samples++;
    canvas.setAttribute("aria-label", `16 digits generated from the prior with seed ${seed}`);
  } catch (err) {
    explain(err, "loading samples");
  }
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] % 2 ** 31;
}

$("seed-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showSamples();
});
$("new-seed").addEventListener("click", () => {
  $("seed").value = randomSeed();
  showSamples();
});

// ---- interpolation ---------------------------------------------------------------------------------------

function describeEnds() {
  const name = (end) => (end ? end.label : "none");
  $("interp-ends").textContent = `A: ${name(state.ends.a)}, B: ${name(state.ends.b)}`;
}

function setEnd(which, latent, label) {
  state.ends[which] = { latent, label };
  describeEnds();
  if (state.ends.a && state.ends.b) interpolate();
}

async function interpolate() {
  try {
    const doc = await apiJson(`/v1/interpolate?format=json&output=probs&steps=${INTERPOLATION_STEPS}`, {
      method: "POST", json: { latents: [state.ends.a.latent, state.ends.b.latent] } });
    paintStrip($("interp-strip"), doc.images);
    state.loads.interpolations++;
    animate(doc.images);
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      state.features.interpolate = false;
      $("interp-panel").hidden = true;
    }
    explain(err, "interpolating");
  }
}

// Plays the strip back and forth, unless the reader asked for less motion.
function animate(images) {
  clearInterval(state.animation);
  const frames = [...images, ...images.slice(1, -1).reverse()];
  let frame = 0;
  paintDigit($("interp-frame"), images[0]);
  if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) return;
  state.animation = setInterval(() => paintDigit($("interp-frame"), frames[frame++ % frames.length]), 120);
}

$("set-a").addEventListener("click", () => setEnd("a", state.mean, "the drawing"));
$("set-b").addEventListener("click", () => setEnd("b", state.mean, "the drawing"));
$("sample-ab").addEventListener("click", async () => {
  const seed = randomSeed();
  try {
    const doc = await apiJson(`/v1/samples?n=2&seed=${seed}&format=json`);
    state.ends.a = { latent: doc.latents[0], label: `sample 1 of seed ${seed}` };
    setEnd("b", doc.latents[1], `sample 2 of seed ${seed}`);
  } catch (err) {
    explain(err, "sampling end points");
  }
});

// ---- start -----------------------------------------------------------------------------------------------

// Which optional routes this service has, from its OpenAPI document (kept as they are if it cannot be read).
async function detectFeatures() {
  try {
    const response = await fetch("/openapi.json", { headers: authHeaders() });
    if (!response.ok) return;
    const paths = (await response.json()).paths || {};
    state.features.score = "/v1/score" in paths;
    state.features.interpolate = "/v1/interpolate" in paths;
  } catch {
    // keep the defaults: a missing route is noticed by its 404
  }
}

async function waitUntilReady() {
  for (;;) {
    let response = null;
    try {
      response = await fetch("/readyz");
    } catch {
      // not reachable yet
    }
    if (response && response.ok) return;
    let detail = "the service cannot be reached";
    if (response) {
      try {
        detail = (await response.json()).detail || detail;
      } catch {
        detail = `${response.status} ${response.statusText}`;
      }
    }
    say(`The service is not ready yet: ${detail}. Waiting…`, "error");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function start() {
  await waitUntilReady();
  say("");
  let info = null;
  try {
    info = await apiJson("/v1/model");
    state.latentSize = info.latent_size || state.latentSize;
  } catch (err) {
    explain(err, "reading the model's name");
    if (err.status === 401) return;
  }
  await detectFeatures();
  // The route exists for every model, but only a model with a `score` signature (schema 2) can answer it.
  if (info && info.signatures && !("score" in info.signatures)) state.features.score = false;
  $("interp-panel").hidden = !state.features.interpolate;
  await showSamples();
  if (state.lastInput) analyse(state.lastInput);
  else setSliders(state.mean || new Array(state.latentSize).fill(0));
}

repaintPad();
$("set-a").disabled = $("set-b").disabled = true;
describeEnds();
start();
