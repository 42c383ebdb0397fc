// mixopt dashboard: draws the server's plotly figures, runs the what-if panel, starts fits
// and refreshes online runs. No framework; every figure comes ready-made from the server.
"use strict";

const PLOT_CONFIG = { responsive: true, displaylogo: false, toImageButtonOptions: { format: "png", scale: 2 } };
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function figures() {
  const node = document.getElementById("figures");
  return node ? JSON.parse(node.textContent) : {};
}

function paint(el, fig) {
  // A chart with a long legend asks for more room (charts.readable sets layout.height).
  const { height, ...layout } = fig.layout;
  if (height > el.clientHeight) el.style.height = `${height}px`;
  Plotly.react(el, fig.data, layout, PLOT_CONFIG);
}

// Charts are drawn when they come near the viewport: the page is usable at once, and a chart
// below the fold (512 runs in parallel coordinates take about 2 s to draw without a GPU) waits
// until someone scrolls to it. A chart already drawn is updated in place.
const waiting = new Map();
let observer = null;

function draw(all) {
  for (const el of document.querySelectorAll("[data-figure]")) {
    const fig = all[el.dataset.figure];
    if (!fig) continue;
    if (el.classList.contains("js-plotly-plot") || !("IntersectionObserver" in window)) {
      paint(el, fig);
      continue;
    }
    waiting.set(el, fig);
    observer ??= new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting || !waiting.has(entry.target)) continue;
        observer.unobserve(entry.target);
        paint(entry.target, waiting.get(entry.target));
        waiting.delete(entry.target);
      }
    }, { rootMargin: "200px" });
    observer.observe(el);
  }
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

// --- what-if ---------------------------------------------------------------------------------

// Move one domain to `value` and spread the difference over the others in proportion to their
// room within [min, max], so the mixture stays on the simplex and inside every bound.
function rebalance(weights, bounds, domain, value) {
  const b = bounds[domain];
  value = Math.min(b.max, Math.max(b.min, value));
  const others = Object.keys(weights).filter((d) => d !== domain);
  let rest = 1 - value;
  const lowSum = others.reduce((s, d) => s + bounds[d].min, 0);
  const highSum = others.reduce((s, d) => s + bounds[d].max, 0);
  rest = Math.min(highSum, Math.max(lowSum, rest));
  value = 1 - rest;
  const out = { [domain]: value };
  const current = others.reduce((s, d) => s + weights[d], 0);
  // Scale the others towards `rest`, then clip to bounds and redistribute what clipping moved.
  let free = others.slice();
  let target = rest;
  for (let pass = 0; pass < others.length + 1 && free.length; pass++) {
    const base = free.reduce((s, d) => s + (current > 0 ? weights[d] : 1), 0) || free.length;
    const fixedSum = others.filter((d) => !free.includes(d)).reduce((s, d) => s + out[d], 0);
    const want = target - fixedSum;
    let clipped = false;
    for (const d of free) out[d] = want * ((current > 0 ? weights[d] : 1) / base);
    for (const d of free.slice()) {
      const { min, max } = bounds[d];
      if (out[d] < min || out[d] > max) {
        out[d] = Math.min(max, Math.max(min, out[d]));
        free = free.filter((x) => x !== d);
        clipped = true;
      }
    }
    if (!clipped) break;
  }
  return out;
}

function setupWhatIf() {
  const panel = document.getElementById("whatif");
  const sliders = panel ? [...panel.querySelectorAll("input[type=range][data-domain]")] : [];
  if (!sliders.length) return;
  const experiment = panel.dataset.experiment;
  const bounds = Object.fromEntries(sliders.map((s) => [s.dataset.domain, { min: +s.dataset.min, max: +s.dataset.max }]));
  const text = document.getElementById("whatif-json");
  const error = document.getElementById("whatif-error");
  const reset = document.getElementById("whatif-reset");
  // Start from the exact mixture the page was rendered with: a slider's value is rounded to its
  // step (0.001), which would predict a different mixture than the recommendation beside it.
  const start = JSON.parse(reset.dataset.start);
  const fromStart = () => normalise(Object.fromEntries(sliders.map((s) => [s.dataset.domain, start[s.dataset.domain] || 0])));
  let weights = fromStart();
  let timer = null;
  let asked = 0;

  function normalise(w) {
    const total = Object.values(w).reduce((a, b) => a + b, 0);
    return Object.fromEntries(Object.entries(w).map(([d, v]) => [d, total > 0 ? v / total : 1 / Object.keys(w).length]));
  }
  function show() {
    for (const s of sliders) {
      s.value = weights[s.dataset.domain];
      panel.querySelector(`output[data-for="${CSS.escape(s.dataset.domain)}"]`).textContent = weights[s.dataset.domain].toFixed(3);
    }
    text.value = JSON.stringify(Object.fromEntries(Object.entries(weights).map(([d, v]) => [d, +v.toFixed(4)])), null, 1);
  }
  async function predict() {
    const ticket = ++asked;
    try {
      const answer = await postJSON(`/ui/experiments/${encodeURIComponent(experiment)}/predict`, { mixtures: [{ weights }] });
      if (ticket !== asked) return; // a newer drag has been asked meanwhile
      const p = answer.items[0];
      document.getElementById("whatif-prediction").textContent = p.value.toFixed(4);
      document.getElementById("whatif-interval").textContent = `80 % interval ${p.low.toFixed(4)} – ${p.high.toFixed(4)}`;
      error.textContent = "";
    } catch (e) {
      if (ticket === asked) error.textContent = e.message;
    }
  }
  function soon() { clearTimeout(timer); timer = setTimeout(predict, 120); }
  for (const s of sliders) {
    s.addEventListener("input", () => { weights = rebalance(weights, bounds, s.dataset.domain, +s.value); show(); soon(); });
  }
  document.getElementById("whatif-apply").addEventListener("click", () => {
    let typed;
    try { typed = JSON.parse(text.value); } catch (e) { error.textContent = `not JSON: ${e.message}`; return; }
    const unknown = Object.keys(typed).filter((d) => !(d in bounds));
    if (unknown.length) { error.textContent = `unknown domain ${unknown.join(", ")}`; return; }
    if (Object.values(typed).some((v) => typeof v !== "number" || !(v >= 0))) { error.textContent = "weights must be numbers >= 0"; return; }
    weights = normalise(Object.fromEntries(Object.keys(bounds).map((d) => [d, typed[d] || 0])));
    show(); predict();
  });
  reset.addEventListener("click", () => { weights = fromStart(); show(); predict(); });
  show(); predict();
}

// --- start a fit -----------------------------------------------------------------------------

function setupFit() {
  const form = document.getElementById("fit-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    const progress = document.getElementById("fit-progress");
    const started = Date.now();
    button.disabled = true;
    const tick = setInterval(() => { progress.textContent = `fitting… ${Math.round((Date.now() - started) / 1000)} s`; }, 250);
    try {
      const fit = await postJSON(`/ui/experiments/${encodeURIComponent(form.dataset.experiment)}/fits`, { model: form.model.value });
      clearInterval(tick);
      progress.textContent = `fit ${fit.id} done (${fit.model}); reloading`;
      window.location.reload();
    } catch (e) {
      clearInterval(tick);
      progress.textContent = e.message;
      progress.classList.add("error");
      button.disabled = false;
    }
  });
}

// --- online runs refresh themselves ----------------------------------------------------------

function setupOnline() {
  const status = document.getElementById("online-status");
  if (!status || status.dataset.active !== "true") return;
  let etag = status.dataset.etag;
  const every = 3000;
  async function poll() {
    if (document.hidden) return setTimeout(poll, every);
    try {
      const response = await fetch(`/ui/runs/${encodeURIComponent(status.dataset.run)}/online`, {
        headers: { "If-None-Match": etag }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 200) {
        etag = response.headers.get("ETag");
        const state = await response.json();
        draw(state.figures);
        for (const [id, value] of [["online-version", state.version], ["online-phase", state.phase], ["online-step", state.step], ["online-feedback", state.feedback_rounds], ["online-run-status", state.status]]) {
          document.getElementById(id).textContent = value ?? "–";
        }
        if (!state.active) { document.getElementById("refresh-note").textContent = "The run has ended."; return; }
      }
    } catch (e) { /* a missed poll is retried */ }
    setTimeout(poll, every);
  }
  setTimeout(poll, every);
}

document.addEventListener("DOMContentLoaded", () => {
  if (window.Plotly) draw(figures());
  setupWhatIf();
  setupFit();
  setupOnline();
});
