"use strict";
// The report for filing: built in the page from the shown result (nothing is sent to the server).
// Each figure holds its own image and caption; one threshold format (3 decimals); date, time and
// model version; accession and reader only as typed in this page.

(function () {
  const DISCLAIMER = "Research use only — not a diagnosis.";
  const REPORT_SIDE = 384; // px: figures are downscaled to this for compact pages
  const $ = (id) => document.getElementById(id);

  function esc(text) {
    const d = document.createElement("div");
    d.textContent = String(text === null || text === undefined ? "" : text);
    return d.innerHTML;
  }

  function when() {
    const now = new Date();
    const local = now.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    return `${local} (${now.toISOString().replace("T", " ").slice(0, 16)} UTC)`;
  }

  /** A figure image: the slice at the viewer's window/level with the heat map at the chosen opacity. */
  async function figure(app, d, i, viewer) {
    const n = i + 1;
    const s = d.slices[i];
    let px;
    try {
      px = await app.fetchPixels(d.study_id, n);
    } catch (e) {
      return null;
    }
    const tmp = new window.SliceViewer(document.createElement("canvas"));
    tmp.pixels = px;
    const same = viewer.pixels && viewer.pixels.kind === px.kind;
    tmp.center = same ? viewer.center : px.kind === "hu" ? -600 : 127.5;
    tmp.width = same ? viewer.width : px.kind === "hu" ? 1500 : 255;
    tmp.renderBase();
    let heat = null;
    if (s.assessed) {
      try {
        heat = await app.fetchExplanation(d.study_id, n);
      } catch (e) {
        heat = null;
      }
    }
    const scale = Math.min(1, REPORT_SIDE / Math.max(px.width, px.height));
    const out = document.createElement("canvas");
    out.width = Math.round(px.width * scale);
    out.height = Math.round(px.height * scale);
    const ctx = out.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(tmp.base, 0, 0, out.width, out.height);
    const alpha = viewer.showHeat ? viewer.opacity : 0;
    if (heat && alpha > 0) {
      ctx.globalAlpha = alpha;
      ctx.drawImage(heat.img, 0, 0, out.width, out.height);
    }
    const wl = `${px.kind === "hu" ? "window L " : "grey window L "}${Math.round(tmp.center)} / W ${Math.round(tmp.width)}`;
    const heatText = heat && alpha > 0
      ? `Grad-CAM for "${heat.ex.target_class}" at ${Math.round(alpha * 100)} % opacity`
      : "no heat map";
    return { n, src: out.toDataURL("image/png"), caption: `${wl}; ${heatText}` };
  }

  function figureIndices(d, current) {
    const picked = d.top.slice(0, 3).map((k) => k - 1);
    if (!picked.includes(current)) picked.push(current);
    return picked;
  }

  async function build(state, viewer) {
    const app = window.lungctApp;
    const d = state.data;
    const c = d.case;
    const m = state.model || { name: d.model.name, version: d.model.version, known_limits: [] };
    const withSources = $("include-sources").checked;
    const single = c.n_slices === 1;
    const acc = $("accession").value.trim();
    const reader = $("reader").value.trim();
    const flag = single ? "" : app.sliceFlag(c, withSources);
    let body = `<table class="meta">
      <tr><th>Accession</th><td>${esc(acc) || "—"}</td><th>Reader</th><td>${esc(reader) || "—"}</td></tr>
      <tr><th>Generated</th><td>${esc(when())}</td><th>Model</th><td>${esc(m.name)}, version ${esc(m.version)}</td></tr>
      </table>`;
    const headline = c.decision === null ? "Not assessed" : c.decision;
    body += `<h2>${single ? "Slice" : "Case"} result: <span class="decision">${esc(headline)}</span></h2>`;
    if (flag) body += `<p class="flag">${esc(flag)}</p>`;
    body += `<p>${esc(single ? d.slices[0].decision_text : c.decision_text)}</p>`;
    const note = $("argmax-note");
    if (!note.hidden && note.textContent) body += `<p class="small">${esc(note.textContent)}</p>`;
    if (d.warnings.length) body += `<ul class="warn">${d.warnings.map((w) => `<li>${esc(w)}</li>`).join("")}</ul>`;
    if (c.case_probabilities) {
      const rows = app.CLASSES.map((k) => `<td>${k}: ${app.pct(c.case_probabilities[k])}</td>`).join("");
      body += `<table class="probs"><tr><th>${single ? "Calibrated" : "Case (" + esc(c.aggregation) + ")"} ` +
        `probabilities</th>${rows}</tr></table>`;
    }
    body += `<h3>Operating point</h3><p class="small">${esc(app.operatingText())}</p>`;
    if ((m.known_limits || []).length) {
      body += `<h3>Known limits</h3><ul class="small">${m.known_limits.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>`;
    }
    body += `<h3>Slices shown</h3><div class="figs">`;
    for (const i of figureIndices(d, state.current)) {
      const f = await figure(app, d, i, viewer);
      if (!f) continue;
      const s = d.slices[i];
      const src = withSources && s.source ? ` · ${esc(s.source)}` : "";
      const inst = s.instance_number !== null ? ` · instance ${s.instance_number}` : "";
      const res = s.assessed ? `p(malignant) ${app.fmtT(s.malignant_probability)} → ${esc(s.decision)}` : "not assessed";
      body += `<figure data-slice="${f.n}"><img src="${f.src}" alt="Slice ${f.n}">` +
        `<figcaption><strong>Slice ${f.n}</strong>${src}${inst}: ${res}. ${esc(f.caption)}.</figcaption></figure>`;
    }
    body += "</div>";
    if (!single) {
      const rows = d.slices.map((s) => `<tr><td>${s.index}</td>${withSources ? `<td>${esc(s.source)}</td>` : ""}` +
        `<td>${s.assessed ? app.fmtT(s.malignant_probability) : "—"}</td>` +
        `<td>${esc(s.assessed ? s.decision : "not assessed")}</td></tr>`).join("");
      body += `<h3>All slices (threshold ${app.fmtT(c.threshold)})</h3><table class="slices"><tr><th>Slice</th>` +
        `${withSources ? "<th>Source</th>" : ""}<th>p(malignant)</th><th>Decision</th></tr>${rows}</table>`;
    }
    const ids = withSources ? "Source file names are included as requested." :
      "No patient identifiers except what the reader typed (accession, reader).";
    return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lungct report</title><style>
      @page{size:A4;margin:12mm}
      body{font:12.5px/1.4 system-ui,sans-serif;max-width:820px;margin:16px auto;color:#111}
      .banner{border:2px solid #b00020;color:#b00020;padding:6px 10px;font-weight:700;margin-bottom:10px}
      h1{font-size:19px;margin:4px 0}h2{font-size:16px;margin:10px 0 4px}h3{font-size:13.5px;margin:10px 0 3px}
      .decision{text-transform:capitalize}.flag{font-size:16px;font-weight:700;color:#b00020;border-left:5px solid #b00020;padding:3px 8px}
      .warn{color:#8a4b00}.small{font-size:11.5px;color:#333}
      table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #bbb;padding:2px 6px;text-align:left}
      .figs{display:grid;grid-template-columns:repeat(2,1fr);gap:8px}
      figure{margin:0;break-inside:avoid;page-break-inside:avoid;border:1px solid #ddd;padding:4px}
      figure img{display:block;width:100%;height:auto;background:#000}figcaption{font-size:11px;color:#333;margin-top:3px}
      table.slices{font-size:11px}
      @media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}.noprint{display:none}}
      </style></head><body><div class="banner">${DISCLAIMER} ${esc(ids)}</div>
      <h1>lungct report</h1>${body}
      <p class="small">Probabilities are calibrated on held-out slices of the training dataset and may not transfer
      to other scanners or populations. ${DISCLAIMER}</p>
      <p class="noprint small">To file as PDF: print this page and choose "Save as PDF".</p></body></html>`;
  }

  async function download(state, viewer) {
    if (!state.data) return;
    const html = await build(state, viewer);
    const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "lungct-report.html";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function print(state) {
    if (!state.data) return;
    const m = state.model || state.data.model;
    const acc = $("accession").value.trim();
    const reader = $("reader").value.trim();
    $("print-header").textContent = `lungct · printed ${when()} · model ${m.name} version ${m.version}` +
      ` · accession ${acc || "—"} · reader ${reader || "—"} · ${DISCLAIMER}`;
    window.print();
  }

  window.lungctReport = { build, download, print };
})();
