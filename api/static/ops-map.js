// The ops map's canvas: thousands of deliveries as dots coloured by status, gliding from one
// snapshot to the next. A frame is one path per status colour and allocates nothing per dot
// (pre-rendered sprites were ~10x slower in software-rendered Chromium).

import { extendBox, fitBox, gridLines, scaleBar, tilesFor, tileUrl, toWorld } from "./geo.js";

export const STATUSES = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"];
const DOT_RADIUS = 4.5;
const KEEP_MISSING_MS = 5000; // a sampled feed may skip a session for a snapshot or two
// Delivered first, so the deliveries still under way are drawn on top.
const DRAW_ORDER = ["DELIVERED", "IN_TRANSIT", "PICKED_UP", "ASSIGNED"];

const cssColour = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

export class OpsMap {
  constructor(canvas, { tileUrl: template = "" } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.template = template;
    this.tileCache = new Map();
    // id -> {id, status, eta, lat, lng, fx, fy, tx, ty, seenAt}: world coords from / to.
    this.dots = new Map();
    this.view = null;
    this.glideMs = 1000;
    this.glideStart = 0;
    this.lastSnapshotAt = 0;
    this.frameRequested = false;
    this.colours = Object.fromEntries(
      STATUSES.map((s) => [s, cssColour(`--${s.toLowerCase().replace("_", "-")}`) || "#333"]),
    );
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  resize() {
    const { width, height } = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.width = width;
    this.height = height;
    this.view = null;
    this.fit();
    this.requestFrame();
  }

  /** Take a snapshot: rows of [tracking_id, status, lat|null, lng|null, eta_seconds|null]. */
  apply(rows, now = performance.now()) {
    if (this.lastSnapshotAt) {
      // Glide for about one snapshot interval so dots keep moving instead of jumping.
      const gap = now - this.lastSnapshotAt;
      this.glideMs = Math.min(2000, Math.max(200, 0.7 * this.glideMs + 0.3 * gap));
    }
    const t = this.progress(now);
    this.lastSnapshotAt = now;
    this.glideStart = now;
    for (const [id, status, lat, lng, eta] of rows) {
      if (lat == null || lng == null) {
        this.dots.delete(id);
        continue;
      }
      const w = toWorld({ lat, lng });
      const dot = this.dots.get(id);
      if (dot) {
        // Start the next glide from where the dot is drawn now.
        dot.fx += (dot.tx - dot.fx) * t;
        dot.fy += (dot.ty - dot.fy) * t;
        dot.tx = w.x;
        dot.ty = w.y;
        dot.status = status;
        dot.eta = eta;
        dot.lat = lat;
        dot.lng = lng;
        dot.seenAt = now;
      } else {
        this.dots.set(id, { id, status, eta, lat, lng, fx: w.x, fy: w.y, tx: w.x, ty: w.y, seenAt: now });
      }
    }
    for (const [id, dot] of this.dots) if (now - dot.seenAt > KEEP_MISSING_MS) this.dots.delete(id);
    this.fit();
    this.requestFrame();
  }

  progress(now) {
    return Math.min(1, (now - this.glideStart) / this.glideMs);
  }

  fit() {
    if (!this.width || !this.height || this.dots.size === 0) return;
    const box = { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity };
    for (const d of this.dots.values()) extendBox(box, { x: d.tx, y: d.ty });
    const fitted = fitBox(box, this.width, this.height, { padPx: 24, maxZoom: 16 });
    // Keep the frame while everything is in it, so the map holds still and only the dots
    // move; refit when a dot would leave it or the deliveries have gathered enough to zoom in.
    if (this.view && fitted.zoom <= this.view.zoom + 0.5) {
      const { k, ox, oy } = this.transform();
      const m = 8;
      const inside = box.x0 * k + ox >= m && box.y0 * k + oy >= m
        && box.x1 * k + ox <= this.width - m && box.y1 * k + oy <= this.height - m;
      if (inside) return;
    }
    this.view = fitted;
  }

  requestFrame() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      const now = performance.now();
      this.draw(now);
      if (this.progress(now) < 1) this.requestFrame();
    });
  }

  /** The world -> screen transform of the current view: x = wx * k + ox, y = wy * k + oy. */
  transform() {
    const v = this.view;
    const k = 256 * 2 ** v.zoom;
    return { k, ox: v.width / 2 - v.cx * k, oy: v.height / 2 - v.cy * k };
  }

  /** Screen position (CSS px) of a dot as currently drawn, or null. */
  screenPosition(id, now = performance.now()) {
    const dot = this.dots.get(id);
    if (!dot || !this.view) return null;
    const t = this.progress(now);
    const { k, ox, oy } = this.transform();
    return { x: (dot.fx + (dot.tx - dot.fx) * t) * k + ox, y: (dot.fy + (dot.ty - dot.fy) * t) * k + oy };
  }

  /** The dot nearest to a screen point, within `radius` px. */
  hit(x, y, radius = 8) {
    if (!this.view) return null;
    let best = null;
    let bestD = radius * radius;
    const t = this.progress(performance.now());
    const { k, ox, oy } = this.transform();
    for (const dot of this.dots.values()) {
      const dx = (dot.fx + (dot.tx - dot.fx) * t) * k + ox - x;
      const dy = (dot.fy + (dot.ty - dot.fy) * t) * k + oy - y;
      const d = dx * dx + dy * dy;
      if (d <= bestD) { best = dot; bestD = d; }
    }
    return best;
  }

  draw(now) {
    const { ctx } = this;
    ctx.fillStyle = "#e8eef3";
    ctx.fillRect(0, 0, this.width, this.height);
    if (!this.view) return;
    if (this.template) this.drawTiles();
    else this.drawGrid();
    const t = this.progress(now);
    const { k, ox, oy } = this.transform();
    const w = this.width, h = this.height;
    const r = DOT_RADIUS;
    ctx.lineWidth = 1;
    ctx.strokeStyle = "rgba(255,255,255,0.9)";
    for (const status of DRAW_ORDER) {
      ctx.beginPath();
      for (const dot of this.dots.values()) {
        if (dot.status !== status) continue;
        const x = (dot.fx + (dot.tx - dot.fx) * t) * k + ox;
        const y = (dot.fy + (dot.ty - dot.fy) * t) * k + oy;
        if (x < -r || y < -r || x > w + r || y > h + r) continue;
        ctx.moveTo(x + r, y);
        ctx.arc(x, y, r, 0, 2 * Math.PI);
      }
      ctx.fillStyle = this.colours[status];
      ctx.fill();
      ctx.stroke();
    }
    this.drawScale();
  }

  drawGrid() {
    const { ctx } = this;
    const { xs, ys } = gridLines(this.view);
    ctx.beginPath();
    for (const x of xs) { ctx.moveTo(x + 0.5, 0); ctx.lineTo(x + 0.5, this.height); }
    for (const y of ys) { ctx.moveTo(0, y + 0.5); ctx.lineTo(this.width, y + 0.5); }
    ctx.strokeStyle = "#d3dde6";
    ctx.lineWidth = 1;
    ctx.stroke();
  }

  drawScale() {
    const { ctx } = this;
    const bar = scaleBar(this.view, 120);
    const y = this.height - 14;
    ctx.strokeStyle = "#111827";
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.moveTo(14, y);
    ctx.lineTo(14 + bar.px, y);
    ctx.stroke();
    ctx.fillStyle = "#111827";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(bar.label, 14, y - 6);
  }

  drawTiles() {
    for (const t of tilesFor(this.view)) {
      const url = tileUrl(this.template, t);
      let img = this.tileCache.get(url);
      if (!img) {
        img = new Image();
        img.referrerPolicy = "no-referrer";
        img.onload = () => this.requestFrame();
        img.src = url;
        this.tileCache.set(url, img);
        if (this.tileCache.size > 400) this.tileCache.delete(this.tileCache.keys().next().value);
      }
      if (img.complete && img.naturalWidth) this.ctx.drawImage(img, t.left, t.top, t.size, t.size);
    }
  }
}
