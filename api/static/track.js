// The public tracking page: one session's view, live over /ws/tracking/{id}. The socket resumes
// by `seq` (`?since_seq=N`: the server replays what the page missed, the whole trail from 0);
// /tracking/{id}/history only when the server cannot replay that far back. Reconnects with
// backoff. A share link's token (`?share=`) opens the session's view and socket.

import { formatDistance, haversineKm } from "./geo.js";
import { TrackMap } from "./track-map.js";

const STEPS = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"];
const SENTENCES = {
  ASSIGNED: "A rider has been assigned and is heading to pick up your order.",
  PICKED_UP: "Your order has been picked up.",
  IN_TRANSIT: "Your order is on the way.",
  DELIVERED: "Your order has been delivered.",
};
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const PING_EVERY_MS = 20000;
const SILENCE_LIMIT_MS = 50000;
const HISTORY_PAGE = 500;

const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
const trackingId = meta("tracking-id");
const shareToken = new URLSearchParams(location.search).get("share") ?? "";
const PROXIMITY = {
  approaching: "Your rider is almost there.",
  arrived: "Your rider has arrived.",
};
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

const state = {
  view: null,
  seq: 0, // highest seq applied to `view`
  contiguous: 0, // every seq up to this one is in `trail` (or had no location)
  trail: new Map(), // seq -> {lat, lng}
  stepTimes: {}, // status -> unix seconds it was reached
  terminal: null, // "delivered" | "expired" | "notfound"
  ws: null,
  attempt: 0,
  retryTimer: null,
  retryAt: 0,
  lastMessageAt: 0,
  lastError: "",
  catchUp: null,
  catchUpAgain: false,
};

const map = new TrackMap($("map"), {
  tileUrl: meta("tile-url"),
  onCredit: (text) => { $("tile-credit").textContent = text; $("tile-credit").hidden = !text; },
  attribution: meta("tile-attribution"),
});

async function getJSON(path) {
  const headers = { Accept: "application/json" };
  if (shareToken) headers.Authorization = `Bearer ${shareToken}`;
  const res = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  return { status: res.status, body };
}

function apiPath(suffix = "") {
  return `/tracking/${encodeURIComponent(trackingId)}${suffix}`;
}

// ---- state changes --------------------------------------------------------------------

function applyView(view, { fromSocket = false } = {}) {
  if (state.terminal === "expired" || state.terminal === "notfound") return;
  const seq = Number.isInteger(view.seq) ? view.seq : null;
  const loc = view.current_location;
  if (loc && seq !== null) state.trail.set(seq, { lat: loc.lat, lng: loc.lng });
  if (seq !== null && fromSocket) {
    if (seq <= state.contiguous + 1) state.contiguous = Math.max(state.contiguous, seq);
    else catchUp(); // a gap: the server dropped updates while the socket was slow
  }
  // A replayed message older than what we show still adds to the trail (above), nothing else.
  if (seq !== null && state.view && seq < state.seq) { render(false); return; }
  const previous = state.view?.status;
  state.view = view;
  if (seq !== null) state.seq = Math.max(state.seq, seq);
  if (previous && view.status !== previous && !(view.status in state.stepTimes)) {
    state.stepTimes[view.status] = view.updated_at;
  }
  render(previous !== view.status);
  if (view.status === "DELIVERED") finish("delivered");
}

function mergeHistory(items) {
  for (const item of items) {
    // A late fix (from a phone's offline buffer) is history, not the route as it was ridden.
    if (item.lat != null && item.lng != null && !item.late) {
      state.trail.set(item.seq, { lat: item.lat, lng: item.lng });
    }
    // History comes in seq order, so the first item with a status is when it was reached.
    if (item.status && !(item.status in state.stepTimes)) state.stepTimes[item.status] = item.at;
  }
}

/** Fetch every history item after `contiguous`; concurrent calls coalesce into one more pass. */
function catchUp() {
  if (state.catchUp) { state.catchUpAgain = true; return state.catchUp; }
  state.catchUp = (async () => {
    do {
      state.catchUpAgain = false;
      let since = state.contiguous;
      for (let page = 0; page < 100; page++) {
        const res = await getJSON(apiPath(`/history?since_seq=${since}&limit=${HISTORY_PAGE}`));
        if (res.status === 404 || res.status === 410) { await classifyGone(res.status); return; }
        if (res.status !== 200 || !res.body) return; // try again on the next gap or reconnect
        mergeHistory(res.body.items);
        // Up to the last item we now hold everything, whatever `contiguous` said before.
        const last = res.body.items.at(-1);
        if (last) state.contiguous = Math.max(state.contiguous, last.seq);
        if (res.body.next_since_seq == null) break;
        since = res.body.next_since_seq;
      }
      render(false);
    } while (state.catchUpAgain);
  })().catch(() => {}).finally(() => { state.catchUp = null; });
  return state.catchUp;
}

async function classifyGone(status) {
  if (status === undefined) {
    try { status = (await getJSON(apiPath())).status; } catch { return false; }
  }
  if (status === 410) { finish("expired"); return true; }
  if (status === 404) { finish("notfound"); return true; }
  return false;
}

function finish(kind) {
  if (state.terminal === kind) return;
  state.terminal = kind;
  clearTimeout(state.retryTimer);
  const ws = state.ws;
  state.ws = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "done");
  document.body.dataset.state = kind;
  setConn(kind === "delivered" ? "done" : "closed");
  const notice = $("notice");
  notice.hidden = false;
  notice.dataset.kind = kind;
  if (kind === "expired") {
    $("live").hidden = true;
    $("notice-title").textContent = "This tracking link has expired";
    $("notice-body").textContent =
      "Tracking links only work for a limited time. If you are still waiting for your order, please contact the store.";
    $("status-text").textContent = "This tracking link has expired.";
  } else if (kind === "badlink") {
    $("live").hidden = true;
    $("notice-title").textContent = "This link does not work";
    $("notice-body").textContent = state.lastError || "Please open the whole link from your message.";
    $("status-text").textContent = "This link does not work.";
  } else if (kind === "notfound") {
    $("live").hidden = true;
    $("notice-title").textContent = "We couldn't find this delivery";
    $("notice-body").textContent = "Please check that you opened the whole link from your message.";
    $("status-text").textContent = "Delivery not found.";
  } else {
    const at = state.stepTimes.DELIVERED ?? state.view?.updated_at;
    $("notice-title").textContent = "Delivered";
    $("notice-body").textContent = at ? `Your order was delivered at ${clock.format(at * 1000)}.` : "";
  }
}

// ---- rendering ------------------------------------------------------------------------

function render(statusChanged) {
  const v = state.view;
  if (!v) return;
  if (state.terminal !== "delivered") document.body.dataset.state = "live";
  document.body.dataset.status = v.status;
  $("order").textContent = v.order_id ? `Order ${v.order_id}` : "";
  if (statusChanged || $("status-text").dataset.status !== v.status) {
    $("status-text").textContent = SENTENCES[v.status] ?? v.status;
    $("status-text").dataset.status = v.status;
  }
  renderSteps(v.status);
  renderFacts(v);
  renderProximity(v);
  const trail = [...state.trail.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
  map.update({ rider: v.current_location, dropoff: v.dropoff, trail });
  $("map-caption").textContent = mapCaption(v);
  $("updated").textContent = v.updated_at ? `Updated ${clock.format(v.updated_at * 1000)}` : "";
}

function renderSteps(status) {
  const current = STEPS.indexOf(status);
  for (const li of document.querySelectorAll(".steps li")) {
    const i = STEPS.indexOf(li.dataset.step);
    li.classList.toggle("done", i < current || (i === current && status === "DELIVERED"));
    li.classList.toggle("current", i === current);
    if (i === current) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
    const at = i <= current ? state.stepTimes[li.dataset.step] : undefined;
    li.querySelector(".when").textContent = at ? clock.format(at * 1000) : "";
  }
}

function renderFacts(v) {
  const loc = v.current_location;
  $("eta-label").textContent = v.status === "DELIVERED" ? "Delivered at" : "Arrives in";
  if (v.status === "DELIVERED") {
    const at = state.stepTimes.DELIVERED ?? v.updated_at;
    $("eta-minutes").textContent = clock.format(at * 1000);
    $("eta-clock").textContent = "";
  } else if (v.eta_seconds == null) {
    $("eta-minutes").textContent = "–";
    $("eta-clock").textContent = "Waiting for the rider's location";
  } else {
    const minutes = Math.max(1, Math.ceil(v.eta_seconds / 60));
    $("eta-minutes").textContent = `${minutes} min`;
    $("eta-clock").textContent = `around ${clock.format((v.updated_at + v.eta_seconds) * 1000)}`;
  }
  $("eta-minutes").dataset.etaSeconds = v.eta_seconds ?? "";
  if (loc && v.dropoff && v.status !== "DELIVERED") {
    const km = haversineKm(loc, v.dropoff);
    $("distance").textContent = formatDistance(km);
    $("distance").dataset.km = km.toFixed(3);
  } else {
    $("distance").textContent = v.status === "DELIVERED" ? "0 m" : "–";
    $("distance").dataset.km = "";
  }
}

function renderProximity(v) {
  const box = $("proximity");
  const text = v.status === "DELIVERED" ? "" : (PROXIMITY[v.proximity] ?? "");
  box.textContent = text;
  box.hidden = !text;
  box.dataset.proximity = v.status === "DELIVERED" ? "" : (v.proximity ?? "");
}

function mapCaption(v) {
  if (!v.current_location) return "Map showing the drop-off; waiting for the rider's location.";
  if (v.status === "DELIVERED") return "Map of the delivery route to the drop-off.";
  const km = haversineKm(v.current_location, v.dropoff);
  return `Map: the rider is ${formatDistance(km)} from the drop-off.`;
}

function setConn(kind, text) {
  const texts = { live: "Live", connecting: "Connecting…", done: "Delivery complete", closed: "Not live" };
  $("conn").dataset.conn = kind;
  $("conn-text").textContent = text ?? texts[kind] ?? kind;
}

// ---- the live connection --------------------------------------------------------------

function connect() {
  if (state.terminal || state.ws) return;
  clearTimeout(state.retryTimer);
  state.retryAt = 0;
  setConn("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Resume after everything we hold in order: from 0 the server replays the whole trail.
  const query = new URLSearchParams({ since_seq: String(state.contiguous), milestones: "true" });
  if (shareToken) query.set("token", shareToken);
  const ws = new WebSocket(
    `${scheme}://${location.host}/ws/tracking/${encodeURIComponent(trackingId)}?${query}`);
  state.ws = ws;
  state.lastError = "";
  ws.onmessage = (event) => {
    state.lastMessageAt = Date.now();
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg.type === "initial_state") {
      state.attempt = 0;
      setConn("live");
      applyView(msg.data);
      // recovered: what we missed follows on this socket. Otherwise (too far back) the history.
      if (msg.recovered !== true) catchUp();
    } else if (msg.type === "location_update") {
      applyView(msg.data, { fromSocket: true });
    } else if (msg.type === "status_change") {
      if (!(msg.data.status in state.stepTimes)) state.stepTimes[msg.data.status] = msg.data.updated_at;
      applyView(msg.data, { fromSocket: true });
    } else if (msg.type === "rider_approaching" || msg.type === "rider_arrived") {
      applyView(msg.data, { fromSocket: true });
    } else if (msg.type === "error") {
      state.lastError = String(msg.message ?? "");
      if (/expired/i.test(state.lastError)) finish("expired");
      else if (/share link/i.test(state.lastError)) finish("badlink");
    }
  };
  ws.onclose = async (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.terminal) return;
    // 1008 is "invalid token, unknown or expired session": ask the API which one it is.
    if (event.code === 1008 && (await classifyGone())) return;
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  if (state.terminal) return;
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2); // jitter spreads a herd
  state.attempt += 1;
  state.retryAt = Date.now() + delay;
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, delay);
  retryLabel();
}

function retryLabel() {
  if (!state.retryAt || state.ws || state.terminal) return;
  const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
  setConn("reconnecting", navigator.onLine === false ? "Offline, waiting for the network…"
    : `Connection lost, reconnecting in ${seconds} s…`);
}

function reconnectNow() {
  if (!state.terminal && !state.ws && state.retryAt) connect();
}

setInterval(() => {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  // A socket that went silent (sleeping phone, dead NAT entry) is closed and redialled.
  if (Date.now() - state.lastMessageAt > SILENCE_LIMIT_MS) ws.close(4000, "silent");
  else ws.send(JSON.stringify({ type: "ping" }));
}, PING_EVERY_MS);

setInterval(retryLabel, 1000);
window.addEventListener("online", reconnectNow);
document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });

async function start() {
  if (!trackingId) { finish("notfound"); return; }
  try {
    const res = await getJSON(apiPath());
    if (res.status === 404 || res.status === 410) { await classifyGone(res.status); return; }
    if (res.status === 401 || res.status === 403) {
      state.lastError = String(res.body?.detail ?? "");
      finish(/expired/i.test(state.lastError) ? "expired" : "badlink");
      return;
    }
    if (res.status === 200 && res.body) applyView(res.body);
  } catch {
    // The socket below retries with backoff; it brings the view and the trail.
  }
  connect();
}

start();
