"use strict";
// lungct workstation page: upload -> REST API -> result, heatmap overlay, printable report.
// File names are never shown, sent back or put in the report: slices are "slice 1..n".

const CLASSES = ["normal", "benign", "malignant"];
const DISCLAIMER = "Research use only — not a diagnosis.";
const $ = (id) => document.getElementById(id);
const state = { kind: null, data: null, model: null, current: null };

function token() {
  return $("token").value.trim();
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function errorMessage(resp) {
  let detail = "";
  try {
    const body = await resp.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    detail = resp.statusText;
  }
  const what = {
    401: "Access token missing or wrong",
    413: "Upload too large",
    415: "Unsupported file type",
    422: "The file could not be used",
  }[resp.status] || (resp.status >= 500 ? "Server error" : "Request refused");
  return `${what} (HTTP ${resp.status}): ${detail}`;
}

async function loadModel() {
  try {
    const resp = await fetch("/api/v1/model", { headers: authHeaders() });
    if (resp.status === 401) {
      $("model-info").textContent = "This server needs an access token: enter it below.";
      $("token-box").open = true;
      return;
    }
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const card = await resp.json();
    state.model = card;
    $("model-info").textContent =
      `Model ${card.name} · version ${card.version} · operating threshold p(malignant) ≥ ${card.threshold.toFixed(2)}`;
  } catch (e) {
    $("model-info").textContent = "Model information unavailable: " + e.message;
  }
}

async function isZip(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  return head.length === 4 && head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5);
}

async function analyse(files) {
  showError("");
  if (!files.length) return;
  const study = files.length > 1 || (await isZip(files[0]));
  const form = new FormData();
  files.forEach((f, i) => form.append(study ? "files" : "file", f, `upload-${i + 1}`));
  const url = study ? "/api/v1/studies?explain_top=3" : "/api/v1/predict?explain=true";
  $("result").hidden = true; // never leave an earlier result next to a new upload
  state.data = null;
  setStatus(study ? `Analysing ${files.length === 1 ? "archive" : files.length + " slices"}…` : "Analysing slice…");
  document.body.classList.add("busy");
  try {
    const resp = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    if (!resp.ok) {
      if (resp.status === 401) $("token-box").open = true;
      showError(await errorMessage(resp));
      setStatus("");
      return;
    }
    const data = await resp.json();
    if (study) renderStudy(data);
    else renderSingle(data);
    setStatus(`Done in ${Math.round(data.timing_ms)} ms (request ${data.request_id}).`);
    if (!state.model) loadModel();
  } catch (e) {
    showError("Cannot reach the lungct server: " + e.message);
    setStatus("");
  } finally {
    document.body.classList.remove("busy");
  }
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

function renderProbs(probs, threshold) {
  const box = $("probs");
  box.replaceChildren();
  $("probs-title").hidden = !probs;
  $("threshold-note").hidden = !probs;
  if (!probs) return;
  for (const c of CLASSES) {
    const row = document.createElement("div");
    row.className = "prob-row";
    row.id = "prob-" + c;
    const label = document.createElement("span");
    label.className = "prob-label";
    label.textContent = c;
    const track = document.createElement("div");
    track.className = "prob-track";
    const bar = document.createElement("div");
    bar.className = "prob-bar " + c;
    bar.style.width = pct(probs[c]);
    track.appendChild(bar);
    if (c === "malignant") {
      const mark = document.createElement("div");
      mark.className = "threshold-mark";
      mark.style.left = pct(threshold);
      mark.title = "operating threshold " + threshold.toFixed(2);
      track.appendChild(mark);
    }
    const value = document.createElement("span");
    value.className = "prob-value";
    value.textContent = pct(probs[c]);
    row.append(label, track, value);
    box.appendChild(row);
  }
  $("threshold-note").textContent =
    `The line on the malignant bar marks the operating threshold (${threshold.toFixed(2)}): at or above it the decision is "malignant".`;
}

function setDecision(decision, text, assessed) {
  const el = $("decision");
  el.textContent = assessed ? decision : "Not assessed";
  el.className = "decision " + (assessed ? decision : "not-assessed");
  $("decision-detail").textContent = text;
}

function showSlice(slice, caption) {
  state.current = slice;
  const ex = slice && slice.explanation;
  $("viewer").hidden = !slice || (!ex && !slice.assessed);
  $("viewer").classList.toggle("no-ex", !ex);
  $("viewer-caption").textContent = caption;
  $("no-overlay").hidden = !!ex;
  if (!ex) return;
  $("base-image").src = "data:image/png;base64," + ex.image_png;
  $("overlay").src = "data:image/png;base64," + ex.heatmap_png;
  applyOpacity();
}

function applyOpacity() {
  const v = Number($("opacity").value);
  $("overlay").style.opacity = String(v / 100);
  $("opacity-value").textContent = v + "%";
}

function renderOod(slice) {
  const note = $("ood-note");
  note.hidden = !slice.ood.flagged;
  note.textContent = slice.ood.flagged
    ? "This input does not look like an axial chest CT slice (" + slice.ood.reason +
      "). No diagnosis is given for it."
    : "";
}

function renderSingle(data) {
  state.kind = "single";
  state.data = data;
  $("result").hidden = false;
  $("study").hidden = true;
  $("case-box").hidden = true;
  $("result-title").textContent = "Slice result";
  $("probs-title").textContent = "Calibrated probabilities";
  setDecision(data.decision, data.decision_text, data.assessed);
  renderOod(data);
  renderProbs(data.probabilities, data.threshold);
  showSlice(data, `${data.image.width} × ${data.image.height} px ${data.image.format}`);
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderStudy(data) {
  state.kind = "study";
  state.data = data;
  const c = data.case;
  $("result").hidden = false;
  $("study").hidden = false;
  $("case-box").hidden = false;
  $("ood-note").hidden = true;
  $("result-title").textContent = `Case result (${c.n_slices} slices)`;
  setDecision(c.decision, c.decision_text, c.decision !== null);
  const stats = c.n_assessed
    ? `Assessed ${c.n_assessed} of ${c.n_slices} slices · mean p(malignant) ${c.mean_malignant_probability.toFixed(2)}` +
      ` · max ${c.max_malignant_probability.toFixed(2)} · ${c.n_above_threshold} at or above threshold`
    : `None of the ${c.n_slices} slices looks like an axial chest CT slice.`;
  $("case-stats").textContent = stats + (data.warnings.length ? " · " + data.warnings.join("; ") : "");
  $("case-rule").textContent = c.rule;
  renderProbs(c.case_probabilities, c.threshold);
  $("probs-title").textContent = `Case probabilities (${c.aggregation} over assessed slices)`;
  renderTop(data);
  renderTable(data);
  const first = data.top.length ? data.slices[data.top[0] - 1] : null;
  showSlice(first, first ? `Most suspicious: ${first.label} — ${first.decision_text}` : "");
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderTop(data) {
  const list = $("top-slices");
  list.replaceChildren();
  for (const idx of data.top.slice(0, 10)) {
    const s = data.slices[idx - 1];
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "top-slice";
    if (s.explanation) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + s.explanation.overlay_png;
      img.alt = s.label + " overlay";
      btn.appendChild(img);
    }
    const txt = document.createElement("span");
    txt.textContent = `${s.label}: p(malignant) ${s.malignant_probability.toFixed(2)} — ${s.decision}`;
    btn.appendChild(txt);
    btn.addEventListener("click", () => showSlice(s, `${s.label} — ${s.decision_text}`));
    li.appendChild(btn);
    list.appendChild(li);
  }
  if (!data.top.length) {
    const li = document.createElement("li");
    li.textContent = "No slice was assessed.";
    list.appendChild(li);
  }
}

function renderTable(data) {
  const body = $("slice-table").querySelector("tbody");
  body.replaceChildren();
  for (const s of data.slices) {
    const tr = document.createElement("tr");
    const cells = [
      s.label,
      s.assessed ? s.malignant_probability.toFixed(3) : "—",
      s.assessed ? s.decision : "not assessed (" + s.ood.reason + ")",
      s.position_mm === null ? "" : s.position_mm.toFixed(1) + " mm",
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    if (s.assessed && s.decision === "malignant") tr.className = "malignant-row";
    tr.addEventListener("click", () => showSlice(s, `${s.label} — ${s.decision_text}`));
    body.appendChild(tr);
  }
}

// ---------------------------------------------------------------- report (built here, no names)

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = src;
  });
}

async function composite(ex, alpha) {
  const base = await loadImage("data:image/png;base64," + ex.image_png);
  const heat = await loadImage("data:image/png;base64," + ex.heatmap_png);
  const canvas = document.createElement("canvas");
  canvas.width = base.naturalWidth;
  canvas.height = base.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base, 0, 0);
  ctx.globalAlpha = alpha;
  ctx.drawImage(heat, 0, 0);
  return canvas.toDataURL("image/png");
}

function esc(text) {
  const d = document.createElement("div");
  d.textContent = String(text);
  return d.innerHTML;
}

function probTable(probs, threshold) {
  if (!probs) return "<p>No probabilities: the input was not assessed.</p>";
  const rows = CLASSES.map((c) => `<tr><td>${c}</td><td>${pct(probs[c])}</td></tr>`).join("");
  return `<table><tr><th>Class</th><th>Calibrated probability</th></tr>${rows}</table>
    <p>Operating threshold on p(malignant): ${threshold.toFixed(3)}.</p>`;
}

async function buildReport() {
  const d = state.data;
  const alpha = Number($("opacity").value) / 100;
  const m = state.model || { name: d.model.name, version: d.model.version };
  let body = "";
  if (state.kind === "single") {
    body += `<h2>Slice result</h2><p class="decision">${esc(d.decision_text)}</p>`;
    if (d.ood.flagged) body += `<p class="warn">Not assessed: ${esc(d.ood.reason)}.</p>`;
    body += probTable(d.probabilities, d.threshold);
    if (d.explanation) {
      body += `<figure><img src="${await composite(d.explanation, alpha)}" alt="overlay">
        <figcaption>Grad-CAM heatmap (${esc(d.explanation.target_class)}), opacity ${Math.round(alpha * 100)}%.
        Image ${d.image.width} × ${d.image.height} px.</figcaption></figure>`;
    }
  } else {
    const c = d.case;
    body += `<h2>Case result (${c.n_slices} slices, ${c.n_assessed} assessed)</h2>
      <p class="decision">${esc(c.decision_text)}</p><p class="rule">${esc(c.rule)}</p>`;
    body += probTable(c.case_probabilities, c.threshold);
    if (d.warnings.length) body += `<p class="warn">${d.warnings.map(esc).join("<br>")}</p>`;
    body += "<h3>Most suspicious slices</h3>";
    for (const idx of d.top.slice(0, 5)) {
      const s = d.slices[idx - 1];
      body += `<p>${esc(s.label)}: p(malignant) ${s.malignant_probability.toFixed(3)} — ${esc(s.decision)}</p>`;
      if (s.explanation) body += `<figure><img src="${await composite(s.explanation, alpha)}" alt="overlay"></figure>`;
    }
    const rows = d.slices.map((s) => `<tr><td>${esc(s.label)}</td><td>${s.assessed ? s.malignant_probability.toFixed(3) : "—"}</td>
      <td>${esc(s.assessed ? s.decision : "not assessed")}</td></tr>`).join("");
    body += `<h3>All slices</h3><table><tr><th>Slice</th><th>p(malignant)</th><th>Decision</th></tr>${rows}</table>`;
  }
  const when = new Date().toISOString().replace("T", " ").slice(0, 16) + " UTC";
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lungct report</title><style>
    body{font:14px/1.45 system-ui,sans-serif;max-width:800px;margin:24px auto;color:#111}
    .banner{border:2px solid #b00020;color:#b00020;padding:8px 12px;font-weight:700;margin-bottom:16px}
    .decision{font-size:18px;font-weight:700}.warn{color:#8a4b00}.rule{color:#444;font-size:12px}
    table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}
    img{max-width:100%;image-rendering:auto}figure{margin:8px 0}figcaption{font-size:12px;color:#444}
    @media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
    </style></head><body><div class="banner">${DISCLAIMER} This report contains no patient identifiers.</div>
    <h1>lungct report</h1><p>Generated ${when} · model ${esc(m.name)} · version ${esc(m.version)}</p>
    ${body}<p class="rule">Probabilities are calibrated on held-out slices of the training dataset and may not
    transfer to other scanners or populations. ${DISCLAIMER}</p></body></html>`;
}

async function downloadReport() {
  if (!state.data) return;
  const html = await buildReport();
  const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "lungct-report.html";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function clearAll() {
  state.data = null;
  state.current = null;
  $("result").hidden = true;
  $("file-input").value = "";
  showError("");
  setStatus("");
}

// ---------------------------------------------------------------- drag and drop (files and folders)

function readEntry(entry) {
  return new Promise((resolve) => {
    if (entry.isFile) {
      entry.file((f) => resolve([f]), () => resolve([]));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      const all = [];
      const next = () =>
        reader.readEntries(async (entries) => {
          if (!entries.length) {
            const nested = await Promise.all(all.map(readEntry));
            resolve(nested.flat());
            return;
          }
          all.push(...entries);
          next();
        }, () => resolve([]));
      next();
    } else {
      resolve([]);
    }
  });
}

async function droppedFiles(dt) {
  const entries = Array.from(dt.items || [])
    .map((it) => (it.webkitGetAsEntry ? it.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length) return Array.from(dt.files);
  const files = (await Promise.all(entries.map(readEntry))).flat();
  return files.filter((f) => !f.name.startsWith("."));
}

function init() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => analyse(Array.from(e.target.files)));
  ["dragenter", "dragover"].forEach((t) =>
    zone.addEventListener(t, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("over")));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    analyse(await droppedFiles(e.dataTransfer));
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file-input").click();
  });
  $("opacity").addEventListener("input", applyOpacity);
  $("report-btn").addEventListener("click", downloadReport);
  $("print-btn").addEventListener("click", () => window.print());
  $("clear-btn").addEventListener("click", clearAll);
  const saved = sessionStorage.getItem("lungct-token");
  if (saved) $("token").value = saved;
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("lungct-token", token());
    loadModel();
  });
  applyOpacity();
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
