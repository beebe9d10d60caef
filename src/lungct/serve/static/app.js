"use strict";
// lungct workstation page: upload -> REST API -> case result, slice viewer over every slice with lazy
// Grad-CAM, reader feedback, printable report. Source names are shown (traceability) but the server
// never logs them; accession and reader stay in this page.

const CLASSES = ["normal", "benign", "malignant"];
const $ = (id) => document.getElementById(id);
const state = {
  model: null, // the model card
  data: null, // the StudyResponse shown
  current: 0, // 0-based index of the slice in view
  pixels: new Map(), // "studyId/n" -> {kind, width, height, data}
  explanations: new Map(), // "studyId/n" -> {ex, img}
  xhr: null,
  lastFiles: null, // kept in this page only, to re-send as one case on request
  progressId: null,
  poll: null,
  wheelAcc: 0,
  heatTimer: null,
};
let viewer = null;

const fmtT = (t) => Number(t).toFixed(3); // the one threshold / probability format
const pct = (p) => (100 * p).toFixed(1) + "%";

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

function errorText(status, body, statusText) {
  let detail = statusText || "";
  try {
    const parsed = JSON.parse(body);
    detail = typeof parsed.detail === "string" ? parsed.detail : JSON.stringify(parsed.detail);
  } catch (e) {
    /* not JSON */
  }
  const what = {
    401: "Access token missing or wrong",
    404: "Not found",
    409: "Cancelled",
    413: "Upload too large",
    415: "Unsupported file type",
    422: "The upload could not be used",
  }[status] || (status >= 500 ? "Server error" : "Request refused");
  return `${what} (HTTP ${status}): ${detail}`;
}

async function getJSON(url) {
  const resp = await fetch(url, { headers: authHeaders() });
  const text = await resp.text();
  if (!resp.ok) throw new Error(errorText(resp.status, text, resp.statusText));
  return JSON.parse(text);
}

async function loadModel() {
  try {
    const resp = await fetch("/api/v1/model", { headers: authHeaders() });
    if (resp.status === 401) {
      $("model-info").textContent = "This server needs an access token: enter it below.";
      $("token-box").open = true;
      return;
    }
    const card = await resp.json();
    state.model = card;
    $("model-info").textContent =
      `Model ${card.name} · version ${card.version} · malignant when p(malignant) ≥ ${fmtT(card.threshold)}`;
    renderOperating();
    checkPacs(card);
  } catch (e) {
    $("model-info").textContent = "Model information unavailable: " + e.message;
  }
}

// ---------------------------------------------------------------- upload with progress and cancel

function newId() {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setBusy(on) {
  document.body.classList.toggle("busy", on);
  $("progress-row").hidden = !on;
  if (!on) {
    clearInterval(state.poll);
    state.poll = null;
    state.xhr = null;
  }
}

function pollProgress(id) {
  state.poll = setInterval(async () => {
    try {
      const p = await getJSON(`/api/v1/progress/${id}`);
      if (!state.xhr || p.stage === "unknown") return;
      if (p.total) {
        $("progress").value = Math.round((100 * p.done) / p.total);
        setStatus(`${p.stage[0].toUpperCase() + p.stage.slice(1)} ${p.done} of ${p.total} slices…`);
      }
    } catch (e) {
      /* progress is best effort */
    }
  }, 400);
}

function analyse(files, mixed = "split") {
  showError("");
  if (!files.length) return;
  state.lastFiles = files;
  if (state.xhr) cancel();
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.webkitRelativePath || f.name));
  const id = newId();
  state.progressId = id;
  $("result").hidden = true; // never leave an earlier result next to a new upload
  state.data = null;
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  xhr.open("POST", `/api/v1/studies?explain_top=0&mixed=${mixed}&progress_id=${id}`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  $("progress").removeAttribute("value");
  setBusy(true);
  setStatus(`Uploading ${files.length} file${files.length > 1 ? "s" : ""}…`);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      $("progress").value = Math.round((100 * e.loaded) / e.total);
      setStatus(`Uploading… ${Math.round((100 * e.loaded) / e.total)}%`);
    }
  };
  xhr.upload.onload = () => {
    setStatus("Analysing…");
    $("progress").removeAttribute("value");
  };
  xhr.onload = () => {
    const ok = xhr.status >= 200 && xhr.status < 300;
    setBusy(false);
    if (!ok) {
      if (xhr.status === 401) $("token-box").open = true;
      showError(errorText(xhr.status, xhr.responseText, xhr.statusText));
      setStatus("");
      return;
    }
    const data = JSON.parse(xhr.responseText);
    renderStudy(data, true);
    setStatus(`Done in ${Math.round(data.timing_ms)} ms (request ${data.request_id}).`);
    if (!state.model) loadModel();
  };
  xhr.onerror = () => {
    setBusy(false);
    showError("Cannot reach the lungct server.");
    setStatus("");
  };
  xhr.onabort = () => {
    setBusy(false);
    setStatus("Cancelled.");
  };
  xhr.send(form);
  pollProgress(id);
}

function cancel() {
  const id = state.progressId;
  if (id) fetch(`/api/v1/progress/${id}/cancel`, { method: "POST", headers: authHeaders() }).catch(() => {});
  if (state.xhr) state.xhr.abort();
}

// ---------------------------------------------------------------- result panel

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
    track.setAttribute("aria-hidden", "true");
    const bar = document.createElement("div");
    bar.className = "prob-bar " + c;
    bar.style.width = pct(probs[c]);
    track.appendChild(bar);
    if (c === "malignant") {
      const mark = document.createElement("div");
      mark.className = "threshold-mark";
      mark.style.left = pct(threshold);
      mark.title = "operating threshold " + fmtT(threshold);
      track.appendChild(mark);
    }
    const value = document.createElement("span");
    value.className = "prob-value";
    value.textContent = pct(probs[c]);
    row.append(label, track, value);
    box.appendChild(row);
  }
  $("threshold-note").textContent =
    `The line on the malignant bar marks the operating threshold (${fmtT(threshold)}): at or above it the ` +
    `decision is "malignant", whichever bar is longest.`;
}

function fmtMeasure(m) {
  if (!m || m.value === null || m.value === undefined) return "not measured";
  const ci = m.ci95 ? ` (95 % CI ${m.ci95[0].toFixed(2)}–${m.ci95[1].toFixed(2)})` : "";
  return m.value.toFixed(2) + ci;
}

/** The operating point in words, from the model card (the run's metrics.json). */
function operatingText() {
  const card = state.model;
  if (!card || !card.operating_point) return "";
  const op = card.operating_point;
  let text = `A slice or case is called malignant when its calibrated p(malignant) reaches ` +
    `${fmtT(op.malignant_threshold)}; otherwise benign when the benign share of the rest reaches ` +
    `${fmtT(op.benign_threshold)}, else normal. The case uses the ${op.case_aggregation} of its slices' ` +
    `probabilities — the rule the evaluation measured.`;
  if (op.fitted_on) text += ` The thresholds were fitted on ${op.fitted_on}.`;
  const s = op.slice;
  const c = op.case;
  if (s) {
    text += ` On the held-out test split (${s.n} slices from ${s.n_groups} scans never used for training)` +
      ` this rule found malignant slices with sensitivity ${fmtMeasure(s["malignant.sensitivity"])}` +
      ` at specificity ${fmtMeasure(s["malignant.specificity"])}`;
    if (c) {
      text += `; per scan, sensitivity ${fmtMeasure(c["malignant.sensitivity"])} at specificity ` +
        `${fmtMeasure(c["malignant.specificity"])} (${c.n} scans)`;
    }
    text += ".";
  } else {
    text += " This run folder has no test metrics: sensitivity and specificity are unknown.";
  }
  return text;
}

function renderOperating() {
  $("operating").textContent = operatingText();
  const list = $("limits");
  list.replaceChildren();
  for (const line of (state.model && state.model.known_limits) || []) {
    const li = document.createElement("li");
    li.textContent = line;
    list.appendChild(li);
  }
  $("feedback").hidden = !(state.model && state.model.feedback) || !state.data;
}

function sliceFlag(c, withSource = true) {
  if (c.decision === null || !c.n_assessed) return "";
  if (c.n_above_threshold === 0) return "";
  const n = c.n_above_threshold;
  const s = state.data.slices[c.most_suspicious_slice - 1];
  const src = withSource && s && s.source ? " (" + s.source + ")" : "";
  const where = `most suspicious: slice ${c.most_suspicious_slice}${src}` +
    `, p(malignant) ${fmtT(c.max_malignant_probability)}`;
  if (c.decision === "malignant") return `${n} of ${c.n_assessed} slices reach the malignant threshold — ${where}`;
  return `⚑ ${n} of ${c.n_assessed} slices reach${n > 1 ? "" : "es"} the malignant ` +
    `threshold on ${n > 1 ? "their" : "its"} own — review ${n > 1 ? "them" : "it"} (${where})`;
}

function renderStudy(data, fresh) {
  state.data = data;
  const c = data.case;
  const single = c.n_slices === 1;
  $("result").hidden = false;
  $("result-title").textContent = single ? "Slice result" : `Case result (${c.n_slices} slices)`;
  const el = $("decision");
  el.textContent = c.decision === null ? "Not assessed" : c.decision;
  el.className = "decision " + (c.decision === null ? "not-assessed" : c.decision);
  const flag = single ? "" : sliceFlag(c);
  $("slice-flag").textContent = flag;
  $("slice-flag").hidden = !flag;
  $("slice-flag").classList.toggle("review", c.decision !== "malignant");
  $("decision-detail").textContent = single ? data.slices[0].decision_text : c.decision_text;
  const probs = c.case_probabilities;
  const argmax = probs ? CLASSES.reduce((a, b) => (probs[b] > probs[a] ? b : a)) : null;
  const note = $("argmax-note");
  note.hidden = !(probs && c.decision === "malignant" && argmax !== "malignant");
  note.textContent = note.hidden ? "" :
    `"Malignant" although ${argmax} has the longest bar: the threshold on p(malignant) ` +
    `(${fmtT(c.threshold)}) is set low so that few cancers are missed; see what the operating point means below.`;
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const w of data.warnings) {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.appendChild(li);
  }
  warnings.hidden = !data.warnings.length;
  const ood = single && !data.slices[0].assessed;
  $("ood-note").hidden = !ood;
  $("ood-note").textContent = ood
    ? `This input does not look like an axial chest CT slice (${data.slices[0].ood.reason}). No diagnosis is given.`
    : "";
  renderProbs(probs, c.threshold);
  $("probs-title").textContent = single ? "Calibrated probabilities" :
    `Case probabilities (${c.aggregation} over ${c.n_assessed} assessed slices)`;
  $("case-rule").textContent = c.rule;
  renderScans(data);
  renderTable(data);
  renderOperating();
  $("feedback-status").textContent = "";
  const start = c.most_suspicious_slice ? c.most_suspicious_slice - 1 : 0;
  const goto = $("goto-top-btn");
  goto.hidden = single || !c.most_suspicious_slice;
  goto.textContent = `Show the most suspicious slice (${c.most_suspicious_slice})`;
  goto.onclick = () => showSlice(start);
  $("slice-slider").max = String(data.slices.length);
  showSlice(start);
  $("announce").textContent = `${single ? "Slice" : "Case"} result: ${el.textContent}. ${flag}`;
  if (fresh) {
    $("result").scrollIntoView({ behavior: "instant", block: "start" });
    $("result-title").focus({ preventScroll: true });
  }
}

function renderScans(data) {
  const box = $("scan-picker");
  box.hidden = !data.scans.length;
  const buttons = $("scan-buttons");
  buttons.replaceChildren();
  if (!data.scans.length) return;
  $("scan-note").textContent = `This upload held ${data.scans.length} different scans; each is analysed as ` +
    `its own case. Showing scan ${data.scan}.`;
  for (const s of data.scans) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary scan-btn";
    b.textContent = `Scan ${s.scan}: ${s.n_slices} slice${s.n_slices === 1 ? "" : "s"}, ${s.decision || "not assessed"}` +
      (s.n_above_threshold ? `, ${s.n_above_threshold} at threshold` : "") + ` — ${s.first_source}`;
    b.setAttribute("aria-pressed", String(s.scan === data.scan));
    b.addEventListener("click", async () => {
      try {
        renderStudy(await getJSON(`/api/v1/studies/${s.study_id}`), false);
      } catch (e) {
        showError(e.message);
      }
    });
    buttons.appendChild(b);
  }
  const one = document.createElement("button");
  one.type = "button";
  one.className = "secondary";
  one.id = "as-one-btn";
  one.textContent = "Analyse all as one case";
  one.title = "If these images are one scan that the content grouping split, analyse them together";
  one.addEventListener("click", () => state.lastFiles && analyse(state.lastFiles, "allow"));
  one.hidden = !state.lastFiles;
  buttons.appendChild(one);
}

function renderTable(data) {
  const body = $("slice-table").querySelector("tbody");
  body.replaceChildren();
  data.slices.forEach((s, i) => {
    const tr = document.createElement("tr");
    tr.id = "row-" + (i + 1);
    const first = document.createElement("td");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "row-btn";
    btn.textContent = String(s.index);
    btn.setAttribute("aria-label", `Show slice ${s.index}`);
    btn.addEventListener("click", () => showSlice(i));
    first.appendChild(btn);
    tr.appendChild(first);
    const cells = [
      s.source + (s.instance_number !== null ? ` (instance ${s.instance_number})` : ""),
      s.assessed ? fmtT(s.malignant_probability) : "—",
      s.assessed ? s.decision : "not assessed (" + s.ood.reason + ")",
      s.position_mm === null ? "" : s.position_mm.toFixed(1) + " mm",
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    if (s.assessed && s.decision === "malignant") tr.classList.add("malignant-row");
    tr.addEventListener("click", (e) => {
      if (e.target.tagName !== "BUTTON") showSlice(i);
    });
    body.appendChild(tr);
  });
}

// ---------------------------------------------------------------- slice viewer

async function fetchPixels(studyId, n) {
  const key = `${studyId}/${n}`;
  if (state.pixels.has(key)) return state.pixels.get(key);
  const resp = await fetch(`/api/v1/studies/${studyId}/slices/${n}/pixels`, { headers: authHeaders() });
  if (!resp.ok) throw new Error(errorText(resp.status, await resp.text(), resp.statusText));
  const buf = await resp.arrayBuffer();
  const kind = resp.headers.get("X-Pixels");
  const px = {
    kind,
    width: Number(resp.headers.get("X-Width")),
    height: Number(resp.headers.get("X-Height")),
    data: kind === "hu" ? new Int16Array(buf) : new Uint8Array(buf),
  };
  if (state.pixels.size > 160) state.pixels.delete(state.pixels.keys().next().value);
  state.pixels.set(key, px);
  return px;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = src;
  });
}

async function fetchExplanation(studyId, n) {
  const key = `${studyId}/${n}`;
  if (state.explanations.has(key)) return state.explanations.get(key);
  const ex = await getJSON(`/api/v1/studies/${studyId}/slices/${n}/explanation`);
  const entry = { ex, img: await loadImage("data:image/png;base64," + ex.heatmap_png) };
  state.explanations.set(key, entry);
  return entry;
}

function sliceCaption(s, total) {
  const parts = [`Slice ${s.index} of ${total}`];
  if (s.source) parts.push(s.source);
  if (s.instance_number !== null) parts.push(`instance ${s.instance_number}`);
  if (s.position_mm !== null) parts.push(`z ${s.position_mm.toFixed(1)} mm`);
  parts.push(s.assessed ? `p(malignant) ${fmtT(s.malignant_probability)} → ${s.decision}` : "not assessed");
  return parts.join(" · ");
}

async function showSlice(i) {
  const d = state.data;
  if (!d) return;
  i = Math.max(0, Math.min(d.slices.length - 1, i));
  state.current = i;
  const s = d.slices[i];
  const total = d.slices.length;
  $("slice-caption").textContent = sliceCaption(s, total);
  $("slice-slider").value = String(i + 1);
  $("slice-pos").textContent = `${i + 1} / ${total}`;
  $("view").setAttribute("aria-label", `CT slice ${i + 1} of ${total}: ${s.source || ""}`);
  document.querySelectorAll("#slice-table tbody tr").forEach((tr, k) => {
    tr.classList.toggle("current", k === i);
    if (k === i) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
  });
  revealRow($("row-" + (i + 1)));
  try {
    const px = await fetchPixels(d.study_id, i + 1);
    if (state.data !== d || state.current !== i) return; // the reader moved on
    viewer.setPixels(px);
    $("view").dataset.slice = String(i + 1);
    updateReadout();
  } catch (e) {
    showError(e.message);
    return;
  }
  scheduleHeat(d, i);
  for (const k of [i + 2, i, i + 3]) if (k >= 1 && k <= total) fetchPixels(d.study_id, k).catch(() => {});
}

/** Scroll the slice list (not the page: the viewer must stay under the mouse) to show a row. */
function revealRow(row) {
  if (!row) return;
  const wrap = row.closest(".table-wrap");
  const head = wrap.querySelector("thead").getBoundingClientRect().height;
  const w = wrap.getBoundingClientRect();
  const r = row.getBoundingClientRect();
  if (r.top < w.top + head) wrap.scrollTop -= w.top + head - r.top;
  else if (r.bottom > w.bottom) wrap.scrollTop += r.bottom - w.bottom;
}

function scheduleHeat(d, i) {
  clearTimeout(state.heatTimer);
  const s = d.slices[i];
  $("view").dataset.heat = "none";
  if (!s.assessed || !$("heat-toggle").checked) return;
  const key = `${d.study_id}/${i + 1}`;
  const apply = (entry) => {
    if (state.data !== d || state.current !== i) return;
    viewer.setHeat(entry.img);
    $("view").dataset.heat = `${i + 1}:${entry.ex.target_class}`;
  };
  if (state.explanations.has(key)) {
    apply(state.explanations.get(key));
    return;
  }
  state.heatTimer = setTimeout(async () => {
    try {
      apply(await fetchExplanation(d.study_id, i + 1));
    } catch (e) {
      /* explanation is optional: the slice stays readable */
    }
  }, 120);
}

function step(delta) {
  if (state.data) showSlice(state.current + delta);
}

function updateReadout() {
  const px = viewer.pixels;
  if (!px) return;
  const unit = px.kind === "hu" ? " HU" : "";
  $("wl-readout").textContent = `${px.width} × ${px.height} px (native) · level ${Math.round(viewer.center)}${unit}` +
    ` / width ${Math.round(viewer.width)}${unit} · zoom ${viewer.zoom.toFixed(2)}×`;
  const sel = $("wl-preset");
  const want = px.kind === "hu" ? "hu" : "grey";
  if (sel.dataset.kind !== want) {
    sel.replaceChildren();
    for (const [name, p] of Object.entries(window.VIEW_PRESETS)) {
      if (p.kind !== want) continue;
      const o = document.createElement("option");
      o.value = name;
      o.textContent = p.label;
      sel.appendChild(o);
    }
    const custom = document.createElement("option");
    custom.value = "custom";
    custom.textContent = "Custom (drag)";
    custom.disabled = true;
    sel.appendChild(custom);
    sel.dataset.kind = want;
  }
  const match = Object.entries(window.VIEW_PRESETS).find(
    ([, p]) => p.kind === want && p.center === viewer.center && p.width === viewer.width);
  sel.value = match ? match[0] : "custom";
}

function applyOpacity() {
  const v = Number($("opacity").value);
  viewer.opacity = v / 100;
  $("opacity-value").textContent = v + "%";
  viewer.draw();
}

function isTyping(el) {
  if (!el) return false;
  if (el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
  return el.tagName === "INPUT" && !["checkbox", "button"].includes(el.type);
}

function onKey(e) {
  if (!state.data || $("result").hidden || e.altKey || e.metaKey || e.ctrlKey) return;
  if (isTyping(document.activeElement)) return; // the slice slider handles its own arrows
  const keys = {
    ArrowDown: () => step(1), ArrowRight: () => step(1), PageDown: () => step(10),
    ArrowUp: () => step(-1), ArrowLeft: () => step(-1), PageUp: () => step(-10),
    Home: () => showSlice(0), End: () => showSlice(state.data.slices.length - 1),
    "+": () => viewer.zoomBy(1.25), "=": () => viewer.zoomBy(1.25), "-": () => viewer.zoomBy(0.8),
    0: () => viewer.resetView(), h: () => $("heat-toggle").click(), H: () => $("heat-toggle").click(),
  };
  const f = keys[e.key];
  if (!f) return;
  e.preventDefault();
  f();
}

function onWheel(e) {
  if (!state.data) return;
  e.preventDefault();
  if (e.ctrlKey) {
    viewer.zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1);
    return;
  }
  state.wheelAcc += e.deltaY;
  if (Math.abs(state.wheelAcc) >= 40) {
    step(state.wheelAcc > 0 ? 1 : -1);
    state.wheelAcc = 0;
  }
}

// ---------------------------------------------------------------- PACS (when the server has one)

/** Show the PACS panel when the server has a PACS: the model card says so, or /pacs/status answers. */
async function checkPacs(card) {
  let on = card.pacs === true;
  let note = "";
  if (!on && card.pacs === undefined) {
    try {
      const resp = await fetch("/api/v1/pacs/status", { headers: authHeaders() });
      if (resp.ok) {
        const st = await resp.json();
        on = !!st.enabled;
        if (!st.reachable) note = "The PACS does not answer: " + (st.detail || "unreachable");
      }
    } catch (e) {
      on = false;
    }
  }
  $("pacs-panel").hidden = !on;
  if (note) $("pacs-status").textContent = note;
}

async function listPacs() {
  $("pacs-status").textContent = "Asking the PACS…";
  try {
    const d = await getJSON("/api/v1/pacs/studies");
    const body = $("pacs-table").querySelector("tbody");
    body.replaceChildren();
    for (const st of d.studies) {
      const tr = document.createElement("tr");
      for (const text of [st.study_date || "", st.description || "", (st.modalities || []).join(", "),
        String(st.n_instances ?? "")]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "secondary pacs-analyse";
      b.textContent = "Analyse";
      b.setAttribute("aria-label", `Analyse the study of ${st.study_date || "unknown date"} ${st.description || ""}`);
      b.addEventListener("click", () => analysePacs(st.study_uid));
      td.appendChild(b);
      tr.appendChild(td);
      body.appendChild(tr);
    }
    $("pacs-wrap").hidden = !d.studies.length;
    $("pacs-status").textContent = `${d.studies.length} CT stud${d.studies.length === 1 ? "y" : "ies"}.`;
  } catch (e) {
    $("pacs-status").textContent = e.message;
  }
}

async function analysePacs(uid) {
  $("pacs-status").textContent = "Fetching and analysing the study…";
  const box = $("pacs-result");
  box.hidden = true;
  try {
    const resp = await fetch(`/api/v1/pacs/studies/${encodeURIComponent(uid)}`, { method: "POST", headers: authHeaders() });
    const text = await resp.text();
    if (!resp.ok) throw new Error(errorText(resp.status, text, resp.statusText));
    const d = JSON.parse(text);
    const c = d.case || {};
    box.replaceChildren();
    const head = document.createElement("p");
    head.className = "decision " + (c.decision || "not-assessed");
    head.textContent = c.decision || "Not assessed";
    const detail = document.createElement("p");
    detail.textContent = c.decision_text || "";
    const stored = document.createElement("p");
    stored.className = "muted small";
    stored.textContent = d.stored
      ? `Stored in the PACS: structured report series ${d.stored.sr_series_uid}, Grad-CAM series ${d.stored.sc_series_uid}.`
      : "Not stored back into the PACS.";
    box.append(head, detail, stored);
    box.hidden = false;
    $("pacs-status").textContent = `Done in ${Math.round(d.timing_ms || 0)} ms.`;
  } catch (e) {
    $("pacs-status").textContent = e.message;
  }
}

// ---------------------------------------------------------------- feedback, clear, drag and drop

async function sendFeedback(agree) {
  const d = state.data;
  if (!d) return;
  const body = { study_id: d.study_id, agree, reader_class: $("reader-class").value || null };
  try {
    const resp = await fetch("/api/v1/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    const text = await resp.text();
    if (!resp.ok) throw new Error(errorText(resp.status, text, resp.statusText));
    $("feedback-status").textContent = `Recorded: ${agree ? "agree" : "disagree"} (stored locally with the model ` +
      `version; no file names, accession or reader).`;
  } catch (e) {
    $("feedback-status").textContent = e.message;
  }
}

function clearAll() {
  state.data = null;
  state.lastFiles = null;
  state.pixels.clear();
  state.explanations.clear();
  $("result").hidden = true;
  $("file-input").value = "";
  showError("");
  setStatus("");
}

function readEntry(entry, prefix) {
  return new Promise((resolve) => {
    if (entry.isFile) {
      entry.file((f) => resolve([{ f, path: prefix + f.name }]), () => resolve([]));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      const all = [];
      const next = () =>
        reader.readEntries(async (entries) => {
          if (!entries.length) {
            const nested = await Promise.all(all.map((e) => readEntry(e, prefix + entry.name + "/")));
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
  const found = (await Promise.all(entries.map((e) => readEntry(e, "")))).flat();
  return found
    .filter(({ f }) => !f.name.startsWith("."))
    .map(({ f, path }) => new File([f], path, { type: f.type }));
}

function init() {
  viewer = new window.SliceViewer($("view"));
  viewer.onchange = updateReadout;
  const zone = $("drop-zone");
  $("choose-btn").addEventListener("click", () => $("file-input").click());
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
  $("cancel-btn").addEventListener("click", cancel);
  $("opacity").addEventListener("input", applyOpacity);
  $("heat-toggle").addEventListener("change", () => {
    viewer.showHeat = $("heat-toggle").checked;
    viewer.draw();
    if (state.data) scheduleHeat(state.data, state.current);
  });
  $("slice-slider").addEventListener("input", () => showSlice(Number($("slice-slider").value) - 1));
  $("prev-btn").addEventListener("click", () => step(-1));
  $("next-btn").addEventListener("click", () => step(1));
  $("zoom-in").addEventListener("click", () => viewer.zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => viewer.zoomBy(0.8));
  $("reset-view").addEventListener("click", () => viewer.resetView());
  $("wl-preset").addEventListener("change", () => viewer.preset($("wl-preset").value));
  $("view").addEventListener("wheel", onWheel, { passive: false });
  document.addEventListener("keydown", onKey);
  $("agree-btn").addEventListener("click", () => sendFeedback(true));
  $("disagree-btn").addEventListener("click", () => sendFeedback(false));
  $("report-btn").addEventListener("click", () => window.lungctReport.download(state, viewer));
  $("print-btn").addEventListener("click", () => window.lungctReport.print(state));
  $("clear-btn").addEventListener("click", clearAll);
  $("pacs-list-btn").addEventListener("click", listPacs);
  const saved = sessionStorage.getItem("lungct-token");
  if (saved) $("token").value = saved;
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("lungct-token", token());
    loadModel();
  });
  applyOpacity();
  loadModel();
}

window.lungctApp = { state, renderStudy, fetchPixels, fetchExplanation, operatingText, sliceFlag, fmtT, pct, CLASSES };
document.addEventListener("DOMContentLoaded", init);
