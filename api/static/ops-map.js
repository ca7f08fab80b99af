// The ops map's canvas: thousands of deliveries as dots coloured by status, gliding from one
// snapshot to the next. One path per colour per frame keeps a frame cheap at 10k dots.

import { fitView, gridLines, scaleBar, tilesFor, tileUrl, toWorld, viewContains } from "./geo.js";

export const STATUSES = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"];
const DOT_RADIUS = 4.5;
const KEEP_MISSING_MS = 5000; // a sampled feed may skip a session for a snapshot or two

const cssColour = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

export class OpsMap {
  constructor(canvas, { tileUrl: template = "" } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.template = template;
    this.tileCache = new Map();
    this.dots = new Map(); // id -> {id, status, eta, from: {x,y}, to: {x,y}, seenAt}
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
      const to = toWorld({ lat, lng });
      const dot = this.dots.get(id);
      if (dot) {
        dot.from = lerp(dot.from, dot.to, t);
        dot.to = to;
        Object.assign(dot, { status, eta, lat, lng, seenAt: now });
      } else {
        this.dots.set(id, { id, status, eta, lat, lng, from: to, to, seenAt: now });
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
    const targets = [...this.dots.values()].map((d) => ({ lat: d.lat, lng: d.lng }));
    const fitted = fitView(targets, this.width, this.height, { padPx: 24, maxZoom: 16 });
    // Keep the frame while everything is in it, so the map holds still and only the dots
    // move; refit when a dot would leave it or the deliveries have gathered enough to zoom in.
    const zoomIn = this.view && fitted.zoom > this.view.zoom + 0.5;
    if (this.view && !zoomIn && viewContains(this.view, targets, 8)) return;
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

  /** Screen position (CSS px) of a dot as currently drawn, or null. */
  screenPosition(id, now = performance.now()) {
    const dot = this.dots.get(id);
    if (!dot || !this.view) return null;
    return this.toScreen(lerp(dot.from, dot.to, this.progress(now)));
  }

  toScreen(w) {
    const v = this.view;
    const scale = 256 * 2 ** v.zoom;
    return { x: (w.x - v.cx) * scale + v.width / 2, y: (w.y - v.cy) * scale + v.height / 2 };
  }

  /** The dot nearest to a screen point, within `radius` px. */
  hit(x, y, radius = 8) {
    let best = null;
    let bestD = radius * radius;
    const t = this.progress(performance.now());
    for (const dot of this.dots.values()) {
      const s = this.toScreen(lerp(dot.from, dot.to, t));
      const d = (s.x - x) ** 2 + (s.y - y) ** 2;
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
    // Delivered first, so the deliveries still under way are drawn on top.
    for (const status of [...STATUSES].reverse()) {
      ctx.beginPath();
      for (const dot of this.dots.values()) {
        if (dot.status !== status) continue;
        const s = this.toScreen(lerp(dot.from, dot.to, t));
        ctx.moveTo(s.x + DOT_RADIUS, s.y);
        ctx.arc(s.x, s.y, DOT_RADIUS, 0, 2 * Math.PI);
      }
      ctx.fillStyle = this.colours[status];
      ctx.fill();
      ctx.lineWidth = 1;
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
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

function lerp(a, b, t) {
  return { x: a.x + (b.x - a.x) * t, y: a.y + (b.y - a.y) * t };
}
