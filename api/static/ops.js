// The ops map page: asks once for a superadmin token (kept in sessionStorage), follows
// /ws/ops snapshots, draws every live delivery and shows the /stats/tracking numbers.

import { OpsMap, STATUSES } from "./ops-map.js";

const TOKEN_KEY = "tracking.ops.token";
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const LABELS = { ASSIGNED: "assigned", PICKED_UP: "picked up", IN_TRANSIT: "in transit", DELIVERED: "delivered" };

const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
const number = new Intl.NumberFormat();
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

const map = new OpsMap($("ops-canvas"), { tileUrl: meta("tile-url") });
const state = { ws: null, attempt: 0, retryTimer: null, snapshots: 0, lastRows: 0 };

if (meta("tile-url")) {
  $("tile-credit").hidden = false;
  $("tile-credit").textContent = meta("tile-attribution") || "Map tiles from the configured tile server";
}

// For diagnostics from the browser console (and the browser tests).
window.opsMap = {
  map,
  has: (id) => map.dots.has(id),
  statusOf: (id) => map.dots.get(id)?.status ?? null,
  screenPosition: (id) => map.screenPosition(id),
  get snapshots() { return state.snapshots; },
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

function showLogin(error = "") {
  document.body.dataset.state = "login";
  $("login").hidden = false;
  $("login-error").textContent = error;
  $("token").value = "";
  $("token").focus();
  setConn("idle", "Not connected");
}

function setConn(kind, text) {
  $("ops-conn").dataset.conn = kind;
  $("ops-conn").textContent = text;
}

function connect() {
  clearTimeout(state.retryTimer);
  if (!token()) { showLogin(); return; }
  $("login").hidden = true;
  document.body.dataset.state = "connecting";
  setConn("connecting", "Connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/ops?token=${encodeURIComponent(token())}`);
  state.ws = ws;
  let gotSnapshot = false;
  ws.onmessage = (event) => {
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg.type === "ops_snapshot") {
      gotSnapshot = true;
      state.attempt = 0;
      onSnapshot(msg.data);
    }
  };
  ws.onclose = async (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    // A refused token may surface as close 1008 or, if refused before the handshake
    // completed, as a bare 1006: ask the statistics endpoint with the same token.
    if (event.code === 1008 || !gotSnapshot) {
      const verdict = await checkToken();
      if (verdict) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(verdict);
        return;
      }
    }
    scheduleReconnect();
  };
}

async function checkToken() {
  try {
    const res = await fetch("/stats/tracking", { headers: { Authorization: `Bearer ${token()}` } });
    if (res.status === 401) return "The token was refused (invalid or expired).";
    if (res.status === 403) return "This token is not a superadmin token.";
  } catch {
    // Server unreachable: not the token's fault, keep it and retry.
  }
  return "";
}

function scheduleReconnect() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  state.attempt += 1;
  document.body.dataset.state = "reconnecting";
  setConn("reconnecting", `Connection lost, retrying in ${Math.ceil(delay / 1000)} s`);
  state.retryTimer = setTimeout(connect, delay);
}

function onSnapshot(data) {
  state.snapshots += 1;
  document.body.dataset.state = "live";
  setConn("live", "Live");
  const rows = data.sessions ?? [];
  map.apply(rows);
  state.lastRows = rows.length;
  const stats = data.stats ?? {};
  const total = stats.total_active_sessions;
  $("stat-total").textContent = total == null ? "–" : number.format(total);
  const located = map.dots.size;
  $("shown").textContent = `${number.format(located)} on the map` +
    (total != null && rows.length < total ? ` (a sample of ${number.format(rows.length)})` : "");
  $("shown").dataset.count = String(located);
  const dist = stats.status_distribution ?? {};
  for (const tr of document.querySelectorAll("#status-table tr")) {
    tr.querySelector("td").textContent = number.format(dist[tr.dataset.status] ?? 0);
  }
  const recency = stats.sessions_by_recency ?? {};
  for (const tr of document.querySelectorAll("#recency-table tr")) {
    tr.querySelector("td").textContent = number.format(recency[tr.dataset.bucket] ?? 0);
  }
  const sockets = stats.total_websocket_connections;
  $("stat-ws").textContent = sockets == null ? "–" : number.format(sockets);
  $("snapshot-at").textContent = `Snapshot at ${clock.format(new Date())}`;
  $("ops-canvas").setAttribute("aria-label", `Map of ${number.format(located)} live deliveries: ` +
    STATUSES.map((s) => `${number.format(dist[s] ?? 0)} ${LABELS[s]}`).join(", "));
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  state.attempt = 0;
  connect();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  const ws = state.ws;
  state.ws = null;
  ws?.close(1000, "sign out");
  clearTimeout(state.retryTimer);
  showLogin();
});

const canvas = $("ops-canvas");
canvas.addEventListener("mousemove", (event) => {
  const rect = canvas.getBoundingClientRect();
  const dot = map.hit(event.clientX - rect.left, event.clientY - rect.top);
  const tip = $("ops-tip");
  canvas.style.cursor = dot ? "pointer" : "";
  if (!dot) { tip.hidden = true; return; }
  const eta = dot.eta == null ? "no ETA" : `ETA ${Math.max(1, Math.ceil(dot.eta / 60))} min`;
  tip.textContent = `${dot.id} · ${LABELS[dot.status] ?? dot.status} · ${eta}`;
  tip.style.left = `${event.clientX - rect.left + 12}px`;
  tip.style.top = `${event.clientY - rect.top + 12}px`;
  tip.hidden = false;
});
canvas.addEventListener("mouseleave", () => { $("ops-tip").hidden = true; });
canvas.addEventListener("click", (event) => {
  const rect = canvas.getBoundingClientRect();
  const dot = map.hit(event.clientX - rect.left, event.clientY - rect.top);
  if (dot) window.open(`/track/${encodeURIComponent(dot.id)}`, "_blank", "noopener");
});

connect();
