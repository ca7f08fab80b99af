"""A shard: the host of many session actors, their watchers and the gateways' event queues.

Each session is an actor in the strict sense: its state changes only through the commands the
shard processes, one at a time, in the order they arrived. `Shard.handle` takes a whole batch (one
Ray call's worth), applies it in memory, journals every change of the batch in one store
transaction, and only then publishes events and returns results. This class does no I/O of its
own beyond the store; `engine.host.ShardHost` serves it to concurrent callers, and the runtimes
place hosts in Ray actors or in-process.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.errors import Conflict, Expired, NotFound, TrackingError, Unavailable
from engine.integrations import OutboxItem, owed_calls
from engine.routing import new_tracking_id
from engine.session import Change, Lifetimes, Session
from engine.stats import session_stats
from engine.status import Status, parse_status
from engine.store import CheckpointRow, Entry, NullStore, Store

log = logging.getLogger(__name__)

Command = tuple[Any, ...]
Result = tuple[Any, ...]  # ("ok", value) | ("err", code, detail)
# An event for a gateway: (tracking_id, kind, seq, encoded message, accepted at); kinds: "u"
# location update, "s" status change, "x" expired (the gateway sends the error and closes).
# `accepted at` (Unix seconds) lets gateways measure acceptance-to-fan-out latency.
Event = tuple[str, str, int, bytes, float]
# What a shard owes a gateway: (shard incarnation, cursor of the first event, events).
Feed = tuple[str, int, list[Event]]
# A gateway's position on a shard, sent with calls and polls: (gateway id, ack, connections).
Channel = tuple[str, int, int]

# Views travel as JSON encoded once here: the HTTP reply and every event reuse the same bytes.
LOCATION_UPDATE = b'{"type":"location_update","data":%b}'
EXPIRED_MESSAGE = orjson.dumps({"type": "error", "message": "Tracking session expired"})
GATEWAY_IDLE_S = 120.0
GATEWAY_QUEUE_MAX = 200_000
# Sessions purged per sweep: each walks its history chain in the store, so a wave of expiries is
# spread over several sweeps instead of pausing the shard.
PURGE_PER_SWEEP = 500


@dataclass
class GatewayQueue:
    """Events owed to one API process, and what it last told us about itself."""

    events: list[Event] = field(default_factory=list)
    base: int = 0  # cursor of events[0]
    sent: int = 0  # cursor after the last event handed out in any reply
    last_seen: float = 0.0
    connections: int = 0
    lost: int = 0


@dataclass(slots=True)
class _Batch:
    """What one batch accepted: journaled together, then published."""

    created: list[Session] = field(default_factory=list)
    changes: list[Entry] = field(default_factory=list)
    outbox: list[OutboxItem] = field(default_factory=list)
    events: list[tuple[str, str, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShardConfig:
    index: int
    n_shards: int
    lifetimes: Lifetimes
    order_service: bool = False
    notification_service: bool = False


class Shard:
    """Sessions of one shard; see the module docstring."""

    def __init__(
        self,
        config: ShardConfig,
        store: Store | None,
        clock: Callable[[], float],
        token: Callable[[int], str] | None = None,
    ) -> None:
        self.cfg = config
        self.lt = config.lifetimes
        self.store: Store = store if store is not None else NullStore()
        self.clock = clock
        self._token = token
        self.sessions: dict[str, Session] = {}
        self.by_order: dict[str, str] = {}
        self.by_rider: dict[str, list[str]] = {}
        self.watchers: dict[str, set[str]] = {}
        self.gateways: dict[str, GatewayQueue] = {}
        self._timers: list[tuple[float, str, str]] = []  # (when, "x"|"p", tracking_id)
        self._expired: set[str] = set()
        self._next_id = 1  # the next journal id
        self.generation = 0  # grows with each (re)load from the store
        self._load()

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        self.generation += 1
        self.sessions.clear()
        self.by_order.clear()
        self.by_rider.clear()
        self._timers.clear()
        # `_expired` survives a reload: watchers were told already and must not be told twice.
        for s in sorted(self.store.load_sessions(self.lt), key=lambda s: s.started_at):
            self._index(s)
        self._next_id = self.store.journal_high() + 1

    def _index(self, s: Session) -> None:
        self.sessions[s.tracking_id] = s
        self.by_order[s.order_id] = s.tracking_id
        self.by_rider.setdefault(s.rider_id, []).append(s.tracking_id)
        heapq.heappush(self._timers, (s.expires_at(self.lt), "x", s.tracking_id))

    # -- commands -----------------------------------------------------------------------------
    def handle(self, commands: Sequence[Command]) -> list[Result]:
        """Apply a batch, journal it in one transaction, then publish its events."""
        now = self.clock()
        results: list[Result] = []
        batch = _Batch()
        for cmd in commands:
            try:
                value = self._apply(cmd, now, batch)
                results.append(("ok", value))
            except TrackingError as e:
                results.append(("err", *e.to_wire()))
            except Exception as e:  # a bug must not take the other commands of the batch down
                log.exception("command %r failed", cmd[:1])
                results.append(("err", "error", f"internal error: {type(e).__name__}"))
        if batch.changes:
            try:
                self.store.commit(batch.created, batch.changes, batch.outbox)
            except Exception:
                log.exception("journal commit failed; reloading shard %d", self.cfg.index)
                self._load()
                # Every answer of the batch may have seen the unjournaled state: refuse them all.
                failed = Unavailable("the journal could not be written; retry").to_wire()
                return [("err", *failed) for _ in commands]
        for tid, kind, seq, msg in batch.events:
            self._publish(tid, kind, seq, msg, now)
        return results

    def _apply(self, cmd: Command, now: float, batch: _Batch) -> Any:
        op = cmd[0]
        if op == "update":
            _, tid, lat, lng, status, rider = cmd
            s = self._live(tid, now)
            s.authorize_update(rider)
            ch = s.apply_update(lat, lng, parse_status(status), now, self.lt)
            self._journal(s, ch, batch)
            view = s.view()
            encoded = orjson.dumps(view)
            if tid in self.watchers:
                batch.events.append((tid, "u", ch.seq, LOCATION_UPDATE % encoded))
                if ch.previous_status is not None:
                    data = {**view, "previous_status": ch.previous_status.value}
                    batch.events.append((tid, "s", ch.seq,
                                   orjson.dumps({"type": "status_change", "data": data})))
            if ch.previous_status is not None:
                if ch.status is Status.DELIVERED:
                    heapq.heappush(self._timers, (s.expires_at(self.lt), "x", tid))
                batch.outbox.extend(self._owed(s, ch))
            return encoded
        if op == "get":
            return orjson.dumps(self._live(cmd[1], now).view())
        if op == "ping":
            return len(self.sessions)
        if op == "start":
            return self._start(cmd, now, batch)
        if op == "watch":
            _, tid, gw = cmd
            current = orjson.dumps(self._live(tid, now).view())
            self.watchers.setdefault(tid, set()).add(gw)
            self._gateway(gw, now)
            return current
        if op == "unwatch":
            self._unwatch(cmd[1], cmd[2])
            return None
        if op == "rider":
            return self._rider(cmd[1], now)
        if op == "stats":
            return self.stats(now)
        if op == "snapshot":
            return self.snapshot(now, cmd[1])
        if op == "history":
            _, tid, since, limit = cmd
            found = self.sessions.get(tid)
            if found is None:
                raise NotFound("Tracking session not found")
            return self.store.history(found.head, since, limit)
        raise TrackingError(f"unknown command {op!r}")

    def _journal(self, s: Session, ch: Change, batch: _Batch) -> None:
        jid = self._next_id
        self._next_id = jid + 1
        batch.changes.append((jid, s.head, ch))
        s.head = jid

    def _owed(self, s: Session, ch: Change) -> list[OutboxItem]:
        return owed_calls(s, ch, self.cfg.order_service, self.cfg.notification_service)

    def _start(self, cmd: Command, now: float, batch: _Batch) -> bytes:
        _, order_id, rider_id, dlat, dlng, phone = cmd
        existing = self.by_order.get(order_id)
        if existing is not None:
            old = self.sessions.get(existing)
            if old is not None and old.is_live(now, self.lt):
                raise Conflict(
                    f"Order {order_id} already has a live tracking session ({existing})"
                )
        if self._token is None:
            tid = new_tracking_id(self.cfg.index, self.cfg.n_shards)
        else:
            tid = new_tracking_id(self.cfg.index, self.cfg.n_shards, self._token)
        s = Session(tid, order_id, rider_id, dlat, dlng, phone, now)
        self._index(s)
        batch.created.append(s)
        ch = s.first_change()
        self._journal(s, ch, batch)
        batch.outbox.extend(self._owed(s, ch))
        return orjson.dumps(s.view())

    def _live(self, tid: str, now: float) -> Session:
        s = self.sessions.get(tid)
        if s is None:
            raise NotFound("Tracking session not found")
        s.ensure_live(now, self.lt)
        return s

    def _rider(self, rider_id: str, now: float) -> tuple[float, str, bytes] | None:
        """(start time, id, view) of the rider's newest live session here: the view's
        `started_at` is whole seconds, too coarse to compare sessions across shards."""
        best: Session | None = None
        for tid in self.by_rider.get(rider_id, ()):
            s = self.sessions.get(tid)
            if s is not None and s.is_live(now, self.lt) and (
                best is None or (s.started_at, s.tracking_id) > (best.started_at, best.tracking_id)
            ):
                best = s
        if best is None:
            return None
        return (best.started_at, best.tracking_id, orjson.dumps(best.view()))

    # -- reads --------------------------------------------------------------------------------
    def stats(self, now: float) -> dict[str, Any]:
        out = session_stats(
            ((s.status, s.updated_at) for s in self.sessions.values() if s.is_live(now, self.lt)),
            now,
        )
        out["websocket_connections_by_gateway"] = {
            gw: q.connections for gw, q in self.gateways.items()
        }
        out["watched_sessions"] = len(self.watchers)
        return out

    def snapshot(self, now: float, limit: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        for s in self.sessions.values():
            if len(out) >= limit:
                break
            if s.is_live(now, self.lt):
                out.append([s.tracking_id, s.status.value, s.lat, s.lng, s.eta])
        return out

    # -- gateways and events ------------------------------------------------------------------
    def _gateway(self, gw: str, now: float) -> GatewayQueue:
        q = self.gateways.get(gw)
        if q is None:
            q = self.gateways[gw] = GatewayQueue(last_seen=now)
        return q

    def _publish(self, tid: str, kind: str, seq: int, msg: bytes, at: float) -> None:
        for gw in self.watchers.get(tid, ()):
            q = self.gateways.get(gw)
            if q is None:
                continue
            q.events.append((tid, kind, seq, msg, at))
            if len(q.events) > GATEWAY_QUEUE_MAX:
                # A gateway this far behind is gone or stuck; keep memory bounded, and let it
                # see the gap through its cursor (it then re-watches and resends state).
                drop = len(q.events) - GATEWAY_QUEUE_MAX
                del q.events[:drop]
                q.base += drop
                q.lost += drop

    def take(self, gw: str, ack: int, connections: int) -> tuple[int, list[Event]]:
        """Forget what `gw` acknowledged (cursor `ack`); return (cursor of the first, events)."""
        now = self.clock()
        q = self._gateway(gw, now)
        q.last_seen = now
        q.connections = connections
        if ack > q.base:
            n = min(ack - q.base, len(q.events))
            del q.events[:n]
            q.base += n
        end = q.base + len(q.events)
        if end > q.sent:
            q.sent = end
        return q.base, list(q.events)

    def has_events(self, gw: str, ack: int) -> bool:
        """Whether events after cursor `ack` wait for `gw`."""
        q = self.gateways.get(gw)
        return q is not None and q.base + len(q.events) > ack

    def has_unsent(self, gw: str) -> bool:
        """Whether events wait for `gw` that no reply has carried yet."""
        q = self.gateways.get(gw)
        return q is not None and q.base + len(q.events) > q.sent

    def checkpoint_rows(self, sessions: Sequence[Session]) -> list[CheckpointRow]:
        """The state of `sessions` for a checkpoint (see `engine.store`)."""
        return [
            (s.tracking_id, s.seq, s.status.value, s.lat, s.lng, s.updated_at, s.head)
            for s in sessions
        ]

    def journal_high(self) -> int:
        """The journal id of the last change accepted."""
        return self._next_id - 1

    # -- time ---------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Expire and purge what is due; drop gateways that stopped polling. Returns expired ids."""
        now = self.clock()
        expired: list[str] = []
        purge: list[tuple[str, int]] = []
        later: list[tuple[float, str, str]] = []
        while self._timers and self._timers[0][0] <= now:
            when, kind, tid = heapq.heappop(self._timers)
            s = self.sessions.get(tid)
            if s is None:
                continue
            if kind == "x":
                if tid in self._expired or s.is_live(now, self.lt):
                    continue
                self._expired.add(tid)
                expired.append(tid)
                self._publish(tid, "x", s.seq, EXPIRED_MESSAGE, now)
                heapq.heappush(self._timers, (s.expires_at(self.lt) + self.lt.purge_after_s,
                                              "p", tid))
            elif len(purge) >= PURGE_PER_SWEEP:
                later.append((when, kind, tid))
            elif s.is_purgeable(now, self.lt):
                purge.append((tid, s.head))
        for item in later:
            heapq.heappush(self._timers, item)
        for tid, _ in purge:
            self._drop(tid)
        if purge:
            try:
                self.store.purge(purge)
            except Exception:
                log.exception("purge failed; it is retried at the next start")
        for gw, q in list(self.gateways.items()):
            if now - q.last_seen > GATEWAY_IDLE_S:
                del self.gateways[gw]
                for tid in list(self.watchers):
                    self._unwatch(tid, gw)
        return expired

    def _unwatch(self, tid: str, gw: str) -> None:
        ws = self.watchers.get(tid)
        if ws is not None:
            ws.discard(gw)
            if not ws:
                del self.watchers[tid]

    def _drop(self, tid: str) -> None:
        s = self.sessions.pop(tid)
        self._expired.discard(tid)
        self.watchers.pop(tid, None)
        if self.by_order.get(s.order_id) == tid:
            del self.by_order[s.order_id]
        tids = self.by_rider.get(s.rider_id)
        if tids is not None:
            if tid in tids:
                tids.remove(tid)
            if not tids:
                del self.by_rider[s.rider_id]



__all__ = ["Command", "Event", "Expired", "Result", "Shard", "ShardConfig"]
