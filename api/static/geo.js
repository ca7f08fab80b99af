// Geometry shared by the tracking page and the ops map: great-circle distance, Web Mercator
// projection, viewport fitting and tile coverage. Pure functions, no DOM.

export const EARTH_RADIUS_KM = 6371;
export const TILE_SIZE = 256;
const MAX_LAT = 85.05112878;

const rad = (deg) => (deg * Math.PI) / 180;

/** Great-circle distance in km (the same formula the server's ETA uses). */
export function haversineKm(a, b) {
  const dLat = rad(b.lat - a.lat);
  const dLng = rad(b.lng - a.lng);
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(rad(a.lat)) * Math.cos(rad(b.lat)) * Math.sin(dLng / 2) ** 2;
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Web Mercator "world" coordinates in [0, 1] x [0, 1] (y grows southwards). */
export function toWorld(p) {
  const lat = Math.max(-MAX_LAT, Math.min(MAX_LAT, p.lat));
  const s = Math.sin(rad(lat));
  return {
    x: (p.lng + 180) / 360,
    y: 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI),
  };
}

/**
 * A viewport of `width` x `height` CSS pixels that shows every point (with `padPx` of
 * margin), centred on them. The zoom is fractional (tiles are scaled to match); `maxZoom`
 * keeps a lone point from filling the screen with one street.
 */
export function fitView(points, width, height, options = {}) {
  const box = { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity };
  for (const p of points) extendBox(box, toWorld(p));
  if (points.length === 0) extendBox(box, { x: 0.5, y: 0.5 });
  return fitBox(box, width, height, options);
}

/** Grow a world-coordinate box {x0, y0, x1, y1} to hold `w`. */
export function extendBox(box, w) {
  box.x0 = Math.min(box.x0, w.x); box.x1 = Math.max(box.x1, w.x);
  box.y0 = Math.min(box.y0, w.y); box.y1 = Math.max(box.y1, w.y);
  return box;
}

/** `fitView` for a box already in world coordinates. */
export function fitBox(box, width, height, { padPx = 32, minZoom = 1, maxZoom = 17 } = {}) {
  const usableW = Math.max(1, width - 2 * padPx);
  const usableH = Math.max(1, height - 2 * padPx);
  const spanX = Math.max(box.x1 - box.x0, 1e-12);
  const spanY = Math.max(box.y1 - box.y0, 1e-12);
  const zoomFit = Math.log2(Math.min(usableW / (spanX * TILE_SIZE), usableH / (spanY * TILE_SIZE)));
  const zoom = Math.max(minZoom, Math.min(maxZoom, zoomFit));
  return { cx: (box.x0 + box.x1) / 2, cy: (box.y0 + box.y1) / 2, zoom, width, height };
}

/** Screen position (CSS px, origin top-left of the viewport) of a lat/lng in `view`. */
export function project(view, p) {
  const scale = TILE_SIZE * 2 ** view.zoom;
  const w = toWorld(p);
  return {
    x: (w.x - view.cx) * scale + view.width / 2,
    y: (w.y - view.cy) * scale + view.height / 2,
  };
}

/** True when every point is inside `view` with at least `marginPx` to spare. */
export function viewContains(view, points, marginPx = 16) {
  return points.every((p) => {
    const s = project(view, p);
    return s.x >= marginPx && s.y >= marginPx && s.x <= view.width - marginPx && s.y <= view.height - marginPx;
  });
}

/** The tiles covering `view`: [{x, y, z, left, top, size}] in screen px (scaled when the zoom is fractional). */
export function tilesFor(view) {
  const z = Math.max(0, Math.floor(view.zoom));
  const n = 2 ** z;
  const size = TILE_SIZE * 2 ** (view.zoom - z);
  const scale = size * n;
  const left = view.cx * scale - view.width / 2;
  const top = view.cy * scale - view.height / 2;
  const tiles = [];
  const tx0 = Math.floor(left / size), tx1 = Math.floor((left + view.width) / size);
  const ty0 = Math.max(0, Math.floor(top / size));
  const ty1 = Math.min(n - 1, Math.floor((top + view.height) / size));
  for (let ty = ty0; ty <= ty1; ty++) {
    for (let tx = tx0; tx <= tx1; tx++) {
      tiles.push({
        x: ((tx % n) + n) % n, y: ty, z,
        left: tx * size - left, top: ty * size - top, size,
      });
    }
  }
  return tiles;
}

/** Fill a `{z}/{x}/{y}` (and optional `{s}`) tile URL template. */
export function tileUrl(template, t) {
  const sub = "abc"[(t.x + t.y) % 3];
  return template.replaceAll("{s}", sub).replaceAll("{z}", String(t.z))
    .replaceAll("{x}", String(t.x)).replaceAll("{y}", String(t.y));
}

/** Metres per CSS pixel at the view's centre. */
export function metresPerPixel(view) {
  const lat = Math.atan(Math.sinh(Math.PI * (1 - 2 * view.cy)));
  return (Math.cos(lat) * 2 * Math.PI * EARTH_RADIUS_KM * 1000) / (TILE_SIZE * 2 ** view.zoom);
}

/** "850 m", "2.4 km", "34 km". */
export function formatDistance(km) {
  if (!Number.isFinite(km)) return "";
  if (km < 1) return `${Math.max(0, Math.round((km * 1000) / 10) * 10)} m`;
  if (km < 10) return `${km.toFixed(1)} km`;
  return `${Math.round(km)} km`;
}

/** A scale bar no longer than `maxPx`: {px, label} with a round distance. */
export function scaleBar(view, maxPx = 96) {
  const mpp = metresPerPixel(view);
  const max = mpp * maxPx;
  const pow = 10 ** Math.floor(Math.log10(max));
  const metres = [5, 2, 1].map((m) => m * pow).find((m) => m <= max) ?? pow;
  return { px: metres / mpp, label: metres >= 1000 ? `${metres / 1000} km` : `${metres} m` };
}

/** Screen offsets of a world-fixed grid with `stepPx` spacing: {xs, ys}. */
export function gridLines(view, stepPx = 64) {
  const origin = project(view, { lat: 0, lng: 0 });
  const xs = [], ys = [];
  for (let x = ((origin.x % stepPx) + stepPx) % stepPx; x < view.width; x += stepPx) xs.push(x);
  for (let y = ((origin.y % stepPx) + stepPx) % stepPx; y < view.height; y += stepPx) ys.push(y);
  return { xs, ys };
}
