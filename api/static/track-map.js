// The tracking page's map: an SVG in Web Mercator screen pixels with the trail, the rider
// and the drop-off. Map tiles are drawn underneath only when a tile URL is configured;
// otherwise a plain grid, so the page works with no tile server reachable.

import { fitView, gridLines, project, scaleBar, tilesFor, tileUrl, viewContains } from "./geo.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_TRAIL_POINTS = 2000;

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export class TrackMap {
  constructor(svg, { tileUrl: template = "", attribution = "", onCredit = () => {} } = {}) {
    this.svg = svg;
    this.template = template;
    this.view = null;
    this.data = null;
    this.tiles = svg.querySelector("#map-tiles");
    this.grid = svg.querySelector("#map-grid");
    this.trail = svg.querySelector("#trail");
    this.rider = svg.querySelector("#rider-marker");
    this.dropoff = svg.querySelector("#dropoff-marker");
    this.scale = svg.querySelector("#scale");
    if (template) {
      onCredit(attribution || `Map tiles: ${new URL(template.replaceAll("{s}", "a")).host}`);
    }
    new ResizeObserver(() => this.draw()).observe(svg);
  }

  /** Show `rider` ({lat, lng} or null), `dropoff` and the `trail` (oldest first). */
  update(data) {
    this.data = data;
    this.draw();
  }

  draw() {
    const d = this.data;
    if (!d) return;
    const { width, height } = this.svg.getBoundingClientRect();
    if (!width || !height) return;
    const points = [...d.trail, d.dropoff, d.rider].filter(Boolean);
    const v = this.view;
    if (!v || v.width !== width || v.height !== height || !viewContains(v, points, 24)) {
      this.view = fitView(points, width, height, { padPx: 48, maxZoom: 17 });
      // A new frame of reference: jump the markers there instead of sliding across the map.
      this.svg.classList.add("refit");
      this.drawBackground();
      requestAnimationFrame(() => requestAnimationFrame(() => this.svg.classList.remove("refit")));
    }
    this.drawTrail(d.trail);
    this.place(this.dropoff, d.dropoff);
    this.place(this.rider, d.rider);
    this.drawScale();
  }

  place(marker, p) {
    if (!p) {
      marker.setAttribute("visibility", "hidden");
      return;
    }
    const s = project(this.view, p);
    marker.setAttribute("visibility", "visible");
    marker.style.transform = `translate(${s.x.toFixed(1)}px, ${s.y.toFixed(1)}px)`;
    marker.dataset.lat = String(p.lat);
    marker.dataset.lng = String(p.lng);
  }

  drawTrail(trail) {
    const step = Math.ceil(trail.length / MAX_TRAIL_POINTS);
    const pts = [];
    for (let i = 0; i < trail.length; i++) {
      if (i % step !== 0 && i !== trail.length - 1) continue;
      const s = project(this.view, trail[i]);
      pts.push(`${s.x.toFixed(1)},${s.y.toFixed(1)}`);
    }
    this.trail.setAttribute("points", pts.join(" "));
    this.trail.dataset.count = String(trail.length);
  }

  drawBackground() {
    const v = this.view;
    this.tiles.replaceChildren();
    this.grid.replaceChildren();
    if (this.template) {
      for (const t of tilesFor(v)) {
        const img = svgEl("image", { x: t.left, y: t.top, width: t.size, height: t.size });
        img.addEventListener("error", () => img.remove());
        img.setAttribute("href", tileUrl(this.template, t));
        this.tiles.append(img);
      }
      return;
    }
    // A grid fixed to the world (not the screen) so movement reads as movement.
    const { xs, ys } = gridLines(v);
    for (const x of xs) this.grid.append(svgEl("line", { x1: x, x2: x, y1: 0, y2: v.height }));
    for (const y of ys) this.grid.append(svgEl("line", { x1: 0, x2: v.width, y1: y, y2: y }));
  }

  drawScale() {
    const bar = scaleBar(this.view);
    this.scale.setAttribute("transform", `translate(12 ${this.view.height - 12})`);
    this.scale.querySelector("line").setAttribute("x2", bar.px.toFixed(1));
    this.scale.querySelector("text").textContent = bar.label;
  }
}
