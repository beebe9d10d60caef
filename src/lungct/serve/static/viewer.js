"use strict";
// lungct slice viewer: one canvas, native pixels, window/level, zoom/pan, heat-map overlay.
// Hand-written on purpose (see docs/workstation.md): the server is the one input guard and sends
// already-decoded pixels (int16 HU for DICOM, uint8 grey otherwise), so no DICOM parser runs here.

const PRESETS = {
  lung: { label: "Lung (L −600 / W 1500)", center: -600, width: 1500, kind: "hu" },
  mediastinum: { label: "Mediastinum (L 40 / W 400)", center: 40, width: 400, kind: "hu" },
  bone: { label: "Bone (L 400 / W 1800)", center: 400, width: 1800, kind: "hu" },
  full: { label: "Full range", center: 127.5, width: 255, kind: "grey" },
};

class SliceViewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.base = document.createElement("canvas");
    this.heat = null; // an Image (RGBA heat map, alpha = importance) or null
    this.pixels = null; // {kind, width, height, data}
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.center = -600;
    this.width = 1500;
    this.opacity = 0.45;
    this.showHeat = true;
    this.onchange = null; // called after window/level or zoom changes (for the readout)
    this._drag = null;
    this._bind();
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** New slice pixels; keeps zoom, pan and window (a radiologist scrolls with a fixed window). */
  setPixels(px) {
    const kindChanged = !this.pixels || this.pixels.kind !== px.kind;
    this.pixels = px;
    this.heat = null;
    if (kindChanged) this.preset(px.kind === "hu" ? "lung" : "full", false);
    this.renderBase();
    this.draw();
  }

  preset(name, redraw = true) {
    const p = PRESETS[name];
    if (!p) return;
    this.center = p.center;
    this.width = p.width;
    if (redraw) {
      this.renderBase();
      this.draw();
    }
    if (this.onchange) this.onchange();
  }

  setWindow(center, width) {
    this.center = center;
    this.width = Math.max(1, width);
    this.renderBase();
    this.draw();
    if (this.onchange) this.onchange();
  }

  setHeat(img) {
    this.heat = img;
    this.draw();
  }

  /** Apply window/level to the raw pixels into the offscreen base canvas (native resolution). */
  renderBase() {
    const px = this.pixels;
    if (!px) return;
    this.base.width = px.width;
    this.base.height = px.height;
    const bctx = this.base.getContext("2d");
    const out = bctx.createImageData(px.width, px.height);
    const lo = this.center - this.width / 2;
    const scale = 255 / this.width;
    const d = px.data;
    const o = out.data;
    for (let i = 0, j = 0; i < d.length; i++, j += 4) {
      let v = (d[i] - lo) * scale;
      v = v < 0 ? 0 : v > 255 ? 255 : v;
      o[j] = o[j + 1] = o[j + 2] = v;
      o[j + 3] = 255;
    }
    bctx.putImageData(out, 0, 0);
  }

  resetView() {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.draw();
    if (this.onchange) this.onchange();
  }

  zoomBy(f) {
    this.zoom = Math.min(16, Math.max(0.5, this.zoom * f));
    this.draw();
    if (this.onchange) this.onchange();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(c.clientWidth * dpr));
    const ch = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== cw || c.height !== ch) {
      c.width = cw;
      c.height = ch;
    }
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, cw, ch);
    const px = this.pixels;
    if (!px) return;
    const s = Math.min(cw / px.width, ch / px.height) * this.zoom;
    const tx = (cw - px.width * s) / 2 + this.panX * dpr;
    const ty = (ch - px.height * s) / 2 + this.panY * dpr;
    ctx.setTransform(s, 0, 0, s, tx, ty);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(this.base, 0, 0);
    if (this.heat && this.showHeat && this.opacity > 0) {
      ctx.globalAlpha = this.opacity;
      ctx.drawImage(this.heat, 0, 0, px.width, px.height); // native geometry, smooth scaling
      ctx.globalAlpha = 1;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
  }

  _bind() {
    const c = this.canvas;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      const wl = e.button === 2 || e.shiftKey;
      this._drag = { x: e.clientX, y: e.clientY, wl, panX: this.panX, panY: this.panY,
        center: this.center, width: this.width };
    });
    c.addEventListener("pointermove", (e) => {
      const d = this._drag;
      if (!d) return;
      const dx = e.clientX - d.x;
      const dy = e.clientY - d.y;
      if (d.wl) {
        const k = this.pixels && this.pixels.kind === "hu" ? 4 : 1;
        this.setWindow(d.center + dy * k, d.width + dx * k); // drag: up/down level, left/right width
      } else {
        this.panX = d.panX + dx;
        this.panY = d.panY + dy;
        this.draw();
      }
    });
    const end = () => {
      this._drag = null;
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
  }
}

window.SliceViewer = SliceViewer;
window.VIEW_PRESETS = PRESETS;
