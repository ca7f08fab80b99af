"""A shard: the host of many session actors, their watchers and the gateways' event queues.

Each session is an actor in the strict sense: its state changes only through the commands the
shard processes, one at a time, in the order they arrived. `Shard.handle` takes a whole batch (one
Ray call's worth), applies it in memory, journals every change of the batch in one store
transaction, and only then publishes events and returns results. This class does no I/O of its
own beyond the store; `engine.host.ShardHost` serves it to concurrent callers, and the runtimes
place hosts in Ray actors or in-process.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from engine.domain.errors import Conflict, NotFound, TrackingError, Unavailable
from engine.domain.fixes import Reason
from engine.domain.integrations import OutboxItem, owed_calls
from engine.domain.proximity import NO_MILESTONES, Milestone
from engine.domain.routing import new_tracking_id
from engine.domain.session import LATE, Change, Lifetimes, Rules, Session
from engine.domain.stats import session_counts
from engine.domain.status import Status, check_transition
from engine.protocol import (
    EXPIRED_MESSAGE,
    AnyCommand,
    BatchAnswer,
    Err,
    Event,
    EventKind,
    FixResult,
    Get,
    HistoryPage,
    HistoryQuery,
    Ok,
    OpsDot,
    Ping,
    Reply,
    Result,
    Resumed,
    RiderHit,
    RiderLookup,
    ShardStats,
    Start,
    StatsQuery,
    Unwatch,
    Update,
    UpdateBatch,
    Watch,
    Watched,
    encode_view,
    filtered,
    location_update,
    milestone,
    status_change,
)
from engine.replay import Replay
from engine.store.base import CheckpointRow, Entry, NullStore, Store

log = logging.getLogger(__name__)

GATEWAY_IDLE_S = 120.0
GATEWAY_QUEUE_MAX = 200_000
# Sessions purged per sweep: each walks its history chain in the store, so a wave of expiries is
# spread over several sweeps instead of pausing the shard.
PURGE_PER_SWEEP = 500
# After a failed commit: the first reload waits this long, each failing round doubles it.
RELOAD_BACKOFF_S = 0.5
RELOAD_BACKOFF_MAX_S = 30.0


@dataclass
class GatewayQueue:
    """Events owed to one API process, and what it last told us about itself."""

    events: list[Event] = field(default_factory=list)
    base: int = 0  # cursor of events[0]
    sent: int = 0  # cursor after the last event handed out in any reply
    last_seen: float = 0.0
    connections: int = 0


@dataclass(slots=True)
class _Batch:
    """What one batch accepted: journaled together, then published."""

    created: list[Session] = field(default_factory=list)
    changes: list[Entry] = field(default_factory=list)
    outbox: list[OutboxItem] = field(default_factory=list)
    events: list[tuple[str, EventKind, int, bytes]] = field(default_factory=list)
    # Watches resuming after a seq: answered once the batch is journaled, since the replay
    # reads the journal and may need changes this batch made before the watch.
    resumes: list[tuple[Watched, Replay, int]] = field(default_factory=list)


def _started(s: Session) -> float:
    return s.started_at


class _Timer(enum.Enum):
    EXPIRE = 1  # tell watchers the session expired
    PURGE = 2  # forget the session and its history


@dataclass(frozen=True, slots=True)
class ShardConfig:
    index: int
    n_shards: int
    lifetimes: Lifetimes
    order_service: bool = False
    notification_service: bool = False
    rules: Rules = field(default_factory=Rules)
    resume_max: int = 1000  # a watcher resuming further back than this many changes starts afresh


class Shard:
    """Sessions of one shard; see the module docstring."""

    def __init__(
        self, config: ShardConfig, store: Store | None, clock: Callable[[], float]
    ) -> None:
        self.cfg = config
        self.lt = config.lifetimes
        self.store: Store = store if store is not None else NullStore()
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.by_order: dict[str, str] = {}
        self.by_rider: dict[str, list[str]] = {}
        self.watchers: dict[str, set[str]] = {}
        self.gateways: dict[str, GatewayQueue] = {}
        self.presence: dict[str, dict[str, int]] = {}  # tracking id -> gateway -> sockets
        self.filtered: dict[str, int] = {}  # dropped fixes by reason, since this start
        self.late_fixes = 0
        self.milestones: dict[str, int] = {}
        self._timers: list[tuple[float, _Timer, str]] = []
        self._expired: set[str] = set()
        self._next_id = 1  # the next journal id
        self.write_error: str | None = None  # why the last commit failed, until one succeeds
        self.generation = 0  # grows with each (re)load from the store
        # After a failed commit memory is ahead of the store: every command is refused until
        # one reload from the store succeeds, tried no sooner than `_reload_at` (backoff).
        self.stale = False
        self._reload_at = 0.0
        self._reload_backoff_s = RELOAD_BACKOFF_S
        self._last_commit_ok = True
        self._load()

    # -- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        # Read everything first: a store that fails to load leaves memory as it was.
        loaded = sorted(self.store.load_sessions(self.lt), key=_started)
        high = self.store.journal_high()
        self.generation += 1
        self.sessions.clear()
        self.by_order.clear()
        self.by_rider.clear()
        self._timers.clear()
        # `_expired` survives a reload: watchers were told already and must not be told twice.
        for s in loaded:
            self._index(s)
        for tid, per in self.presence.items():
            watched = self.sessions.get(tid)
            if watched is not None:
                watched.watchers = sum(per.values())
        self._next_id = high + 1

    def _recover(self) -> bool:
        """While stale, reload from the store when the backoff allows; True once fresh."""
        if not self.stale:
            return True
        now = self.clock()
        if now < self._reload_at:
            return False
        try:
            self._load()
        except Exception as e:
            self.write_error = f"{self.write_error}; reloading failed too: {type(e).__name__}: {e}"
            self._reload_backoff_s = min(RELOAD_BACKOFF_MAX_S, self._reload_backoff_s * 2)
            self._reload_at = now + self._reload_backoff_s
            log.exception("shard %d could not reload from its store; next try in %.1f s",
                          self.cfg.index, self._reload_backoff_s)
            return False
        self.stale = False
        log.info("shard %d reloaded from its store after a failed commit", self.cfg.index)
        return True

    def _refuse_all(self, commands: Sequence[AnyCommand]) -> list[Result]:
        err = Unavailable(
            f"shard {self.cfg.index} cannot write its journal ({self.write_error}); retry shortly"
        )
        return [
            Ok(len(self.sessions)) if isinstance(cmd, Ping) and not cmd.writable
            else Err(err.code, err.detail)
            for cmd in commands
        ]

    def _index(self, s: Session) -> None:
        self.sessions[s.tracking_id] = s
        self.by_order[s.order_id] = s.tracking_id
        self.by_rider.setdefault(s.rider_id, []).append(s.tracking_id)
        heapq.heappush(self._timers, (s.expires_at(self.lt), _Timer.EXPIRE, s.tracking_id))

    # -- commands -----------------------------------------------------------------------------
    def handle(self, commands: Sequence[AnyCommand]) -> list[Result]:
        """Apply a batch, journal it in one transaction, then publish its events."""
        if self.stale and not self._recover():
            return self._refuse_all(commands)
        now = self.clock()
        results: list[Result] = []
        batch = _Batch()
        for cmd in commands:
            try:
                results.append(Ok(self._apply(cmd, now, batch)))
            except TrackingError as e:
                results.append(Err(e.code, e.detail))
            except Exception as e:  # a bug must not take the other commands of the batch down
                log.exception("command %s failed", type(cmd).__name__)
                results.append(Err("error", f"internal error: {type(e).__name__}"))
        if batch.changes:
            try:
                self.store.commit(batch.created, batch.changes, batch.outbox)
                self.write_error = None
            except Exception as e:
                self.write_error = f"{type(e).__name__}: {e}"
                # Memory holds the batch the store refused. Reloading it all for every batch
                # would turn a full disk into a stall under the lock: refuse everything until
                # one reload, after a backoff that grows while commits keep failing.
                if not self.stale:
                    self._reload_backoff_s = (
                        RELOAD_BACKOFF_S if self._last_commit_ok
                        else min(RELOAD_BACKOFF_MAX_S, self._reload_backoff_s * 2)
                    )
                self.stale = True
                self._last_commit_ok = False
                self._reload_at = now + self._reload_backoff_s
                log.exception("journal commit failed; shard %d reloads in %.1f s",
                              self.cfg.index, self._reload_backoff_s)
                # Every answer of the batch may have seen the unjournaled state: refuse them all.
                failed = Unavailable("the journal could not be written; retry")
                return [Err(failed.code, failed.detail) for _ in commands]
            self._last_commit_ok = True
        if batch.resumes:
            self._resume(batch, results)
        for tid, kind, seq, frame in batch.events:
            self._publish(tid, kind, seq, frame, now)
        return results

    def _resume(self, batch: _Batch, results: list[Result]) -> None:
        done: dict[int, Watched] = {}
        for placeholder, replay, since in batch.resumes:
            missed = replay.events(since, self.cfg.resume_max)
            if missed is None:
                done[id(placeholder)] = Watched(placeholder.seq, placeholder.view, recovered=False)
            else:
                done[id(placeholder)] = Watched(placeholder.seq, placeholder.view, missed, True)
        for i, r in enumerate(results):
            if isinstance(r, Ok) and isinstance(r.value, Watched) and id(r.value) in done:
                results[i] = Ok(done[id(r.value)])

    def _apply(self, cmd: AnyCommand, now: float, batch: _Batch) -> Reply:
        match cmd:
            case Update():
                return self._update(cmd, now, batch)
            case UpdateBatch():
                return self._update_batch(cmd, now, batch)
            case Get(tracking_id=tid, presence=presence):
                return encode_view(self._live(tid, now).view(presence))
            case Ping(writable=writable):
                if writable and self.write_error is not None:
                    raise Unavailable(f"shard {self.cfg.index} cannot write: {self.write_error}")
                return len(self.sessions)
            case Start():
                return self._start(cmd, now, batch)
            case Watch(tracking_id=tid, gateway=gw, since_seq=since):
                s = self._live(tid, now)
                self.watchers.setdefault(tid, set()).add(gw)
                self._gateway(gw, now)
                watched = Watched(s.seq, encode_view(s.view()))
                if since is not None:
                    batch.resumes.append((watched, Replay(s, self.store, self.lt), since))
                return watched
            case Unwatch(tracking_id=tid, gateway=gw):
                self._unwatch(tid, gw)
                return None
            case RiderLookup(rider_id=rider):
                return self._rider(rider, now)
            case StatsQuery(dots=dots):
                return self.stats(now, dots)
            case HistoryQuery(tracking_id=tid, since_seq=since, limit=limit):
                head = self._live(tid, now).head  # 404 / 410 as for the view
                return HistoryPage(self.store.history(head, since, limit))
            case _:
                assert_never(cmd)

    def _update(self, cmd: Update, now: float, batch: _Batch) -> bytes:
        s = self._live(cmd.tracking_id, now)
        s.authorize_update(cmd.rider_id)
        if cmd.recorded_at is None and cmd.accuracy_m is None:  # a plain update: the hot path
            ch = s.apply_update(cmd.lat, cmd.lng, cmd.status, now, self.lt)
            return self._accept(s, ch, NO_MILESTONES, batch)
        out = s.report(cmd.lat, cmd.lng, cmd.status, now, self.lt, self.cfg.rules,
                       cmd.recorded_at, cmd.accuracy_m)  # fmt: skip
        if out.filtered is not None:
            self._count_filtered(out.filtered)
        if out.change is None:
            assert out.filtered is not None
            return filtered(encode_view(s.view()), out.filtered)
        encoded = self._accept(s, out.change, out.milestones, batch)
        return encoded if out.filtered is None else filtered(encoded, out.filtered)

    def _update_batch(self, cmd: UpdateBatch, now: float, batch: _Batch) -> BatchAnswer:
        s = self._live(cmd.tracking_id, now)
        s.authorize_update(cmd.rider_id)
        status = s.status
        for i, f in enumerate(cmd.fixes):  # all or nothing for the status steps
            try:
                status = check_transition(status, f.status)
            except Conflict as e:
                raise Conflict(f"fixes[{i}]: {e.detail}") from None
        results: list[FixResult] = []
        encoded: bytes | None = None
        for f in cmd.fixes:
            out = s.report(f.lat, f.lng, f.status, now, self.lt, self.cfg.rules,
                           f.recorded_at, f.accuracy_m)  # fmt: skip
            if out.filtered is not None:
                self._count_filtered(out.filtered)
            ch = out.change
            if ch is not None:
                encoded = self._accept(s, ch, out.milestones, batch)
            late = ch is not None and bool(ch.flags & LATE)
            results.append(FixResult(out.filtered is None, ch.seq if ch else None, out.filtered,
                                     late))
        return BatchAnswer(encoded if encoded is not None else encode_view(s.view()), results)

    def _accept(
        self, s: Session, ch: Change, fired: tuple[Milestone, ...], batch: _Batch
    ) -> bytes:
        """Journal an accepted change, queue its events and owed calls; the view's JSON."""
        tid = s.tracking_id
        self._journal(s, ch, batch)
        encoded = encode_view(s.view())
        if tid in self.watchers:
            batch.events.append((tid, EventKind.LOCATION, ch.seq, location_update(encoded)))
            if ch.previous_status is not None:
                batch.events.append(
                    (tid, EventKind.STATUS, ch.seq, status_change(encoded, ch.previous_status))
                )
            for m in fired:
                batch.events.append((tid, EventKind.MILESTONE, ch.seq, milestone(encoded, m)))
        if ch.flags:
            if ch.flags & LATE:
                self.late_fixes += 1
            for m in fired:
                self.milestones[m.value] = self.milestones.get(m.value, 0) + 1
        if ch.previous_status is not None:
            if ch.status is Status.DELIVERED:
                heapq.heappush(self._timers, (s.expires_at(self.lt), _Timer.EXPIRE, tid))
            batch.outbox.extend(self._owed(s, ch))
        elif fired:
            batch.outbox.extend(self._owed(s, ch))
        return encoded

    def _count_filtered(self, reason: Reason) -> None:
        self.filtered[reason.value] = self.filtered.get(reason.value, 0) + 1

    def _journal(self, s: Session, ch: Change, batch: _Batch) -> None:
        jid = self._next_id
        self._next_id = jid + 1
        batch.changes.append((jid, s.head, ch))
        s.head = jid

    def _owed(self, s: Session, ch: Change) -> list[OutboxItem]:
        return owed_calls(s, ch, self.cfg.order_service, self.cfg.notification_service)

    def _start(self, cmd: Start, now: float, batch: _Batch) -> bytes | Resumed:
        existing = self.by_order.get(cmd.order_id)
        if existing is not None:
            old = self.sessions.get(existing)
            if old is not None and old.is_live(now, self.lt):
                # A retried start by the order's rider gets its session back; anyone else learns
                # nothing of it (its id would open its public live feed).
                if old.rider_id == cmd.rider_id:
                    return Resumed(encode_view(old.view()))
                raise Conflict(
                    f"Order {cmd.order_id} already has a live tracking session of another rider"
                )
        tid = new_tracking_id(self.cfg.index, self.cfg.n_shards)
        s = Session(
            tid, cmd.order_id, cmd.rider_id, cmd.dropoff_lat, cmd.dropoff_lng, cmd.phone, now
        )
        self._index(s)
        batch.created.append(s)
        ch = s.first_change()
        self._journal(s, ch, batch)
        batch.outbox.extend(self._owed(s, ch))
        return encode_view(s.view())

    def _live(self, tid: str, now: float) -> Session:
        s = self.sessions.get(tid)
        if s is None:
            raise NotFound("Tracking session not found")
        s.ensure_live(now, self.lt)
        return s

    def _rider(self, rider_id: str, now: float) -> RiderHit | None:
        """The rider's newest live session here."""
        best: Session | None = None
        for tid in self.by_rider.get(rider_id, ()):
            s = self.sessions.get(tid)
            if s is not None and s.is_live(now, self.lt) and (
                best is None or (s.started_at, s.tracking_id) > (best.started_at, best.tracking_id)
            ):
                best = s
        if best is None:
            return None
        return RiderHit(best.started_at, best.tracking_id, encode_view(best.view()))

    # -- reads --------------------------------------------------------------------------------
    def stats(self, now: float, dots: int = 0) -> ShardStats:
        """Statistics over live sessions, with the positions of up to `dots` of them."""
        live = [s for s in self.sessions.values() if s.is_live(now, self.lt)]
        counts = session_counts(((s.status, s.updated_at) for s in live), now)
        by_gateway = {gw: q.connections for gw, q in self.gateways.items()}
        positions = [OpsDot(s.tracking_id, s.status, s.lat, s.lng, s.eta) for s in live[:dots]]
        per_session = [sum(per.values()) for per in self.presence.values()]
        presence = (len(per_session), sum(per_session), max(per_session, default=0))
        return ShardStats(
            counts, by_gateway, len(self.watchers), positions, dict(self.filtered),
            self.late_fixes, dict(self.milestones), presence,
        )

    # -- gateways and events ------------------------------------------------------------------
    def report_presence(self, gw: str, counts: dict[str, int]) -> None:
        """A gateway's socket counts for sessions of this shard (absolute; 0: none left)."""
        for tid, n in counts.items():
            s = self.sessions.get(tid)
            if s is None:
                continue
            per = self.presence.get(tid)
            if n > 0:
                if per is None:
                    per = self.presence[tid] = {}
                per[gw] = n
            elif per is not None:
                per.pop(gw, None)
            s.watchers = sum(per.values()) if per else 0
            if per is not None and not per:
                del self.presence[tid]

    def _forget_presence(self, tid: str, gw: str) -> None:
        per = self.presence.get(tid)
        if per is not None and per.pop(gw, None) is not None:
            s = self.sessions.get(tid)
            if s is not None:
                s.watchers = sum(per.values())
            if not per:
                del self.presence[tid]

    def _gateway(self, gw: str, now: float) -> GatewayQueue:
        q = self.gateways.get(gw)
        if q is None:
            q = self.gateways[gw] = GatewayQueue(last_seen=now)
        return q

    def _publish(self, tid: str, kind: EventKind, seq: int, frame: bytes, at: float) -> None:
        watching = self.watchers.get(tid)
        if not watching:
            return
        event = Event(tid, kind, seq, frame, at)
        for gw in watching:
            q = self.gateways.get(gw)
            if q is None:
                continue
            q.events.append(event)
            if len(q.events) > GATEWAY_QUEUE_MAX:
                # A gateway this far behind is gone or stuck; keep memory bounded, and let it
                # see the gap through its cursor (it then re-watches and resends state).
                drop = len(q.events) - GATEWAY_QUEUE_MAX
                del q.events[:drop]
                q.base += drop

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

    def has_unsent(self, gw: str) -> bool:
        """Whether events wait for `gw` that no reply has carried yet."""
        q = self.gateways.get(gw)
        return q is not None and q.base + len(q.events) > q.sent

    def checkpoint_rows(self, sessions: Sequence[Session]) -> list[CheckpointRow]:
        """The state of `sessions` for a checkpoint (see `engine.store.base`)."""
        return [
            (s.tracking_id, s.seq, s.status.value, s.lat, s.lng, s.updated_at, s.head,
             s.loc_ts, s.milestone_flags())
            for s in sessions
        ]

    def journal_high(self) -> int:
        """The journal id of the last change accepted."""
        return self._next_id - 1

    # -- time ---------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Expire and purge what is due; drop gateways that stopped polling. Returns expired ids."""
        if self.stale and not self._recover():
            return []  # memory is ahead of the store: announce nothing from it
        now = self.clock()
        expired: list[str] = []
        purge: list[tuple[str, int]] = []
        later: list[tuple[float, _Timer, str]] = []
        while self._timers and self._timers[0][0] <= now:
            when, kind, tid = heapq.heappop(self._timers)
            s = self.sessions.get(tid)
            if s is None:
                continue
            if kind is _Timer.EXPIRE:
                if tid in self._expired or s.is_live(now, self.lt):
                    continue
                self._expired.add(tid)
                expired.append(tid)
                self._publish(tid, EventKind.EXPIRED, s.seq, EXPIRED_MESSAGE, now)
                purge_at = s.expires_at(self.lt) + self.lt.purge_after_s
                heapq.heappush(self._timers, (purge_at, _Timer.PURGE, tid))
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
                for tid in list(self.presence):
                    self._forget_presence(tid, gw)
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
        self.presence.pop(tid, None)
        if self.by_order.get(s.order_id) == tid:
            del self.by_order[s.order_id]
        tids = self.by_rider.get(s.rider_id)
        if tids is not None:
            if tid in tids:
                tids.remove(tid)
            if not tids:
                del self.by_rider[s.rider_id]
