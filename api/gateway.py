"""This process's WebSocket gateway: local sockets, one engine watch per session, fan-out.

Events arrive through the engine client's event channel (on the replies of this process's own
calls, and on one long-poll per shard for the rest), each message encoded once by the shard. The
gateway frames each event once (`api.wsproto.prepare_text`) and writes that same frame to every
local socket watching the session, synchronously: no task, future or await per socket per
message. A socket's backpressure is its transport's write buffer: while it is past its high-water
mark, the socket's messages wait in its own bounded queue, flushed when the buffer drains. A slow
socket never delays the session or the other watchers. When its queue is full, its oldest
*location update* is dropped (the client sees the `seq` gap); status changes are never dropped,
and a socket whose queue is full of them, or whose buffer stays full for `STALL_S`, is closed
with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine

from api.errors import POLICY_VIOLATION, TRY_AGAIN_LATER
from api.observability import EVENT_LATENCY, FANNED_OUT, QUEUE_DROPS, SLOW_CLOSES
from api.wsproto import FrameSink, prepare_text
from engine.client import EngineClient
from engine.domain.errors import Expired, TrackingError
from engine.protocol import (
    EXPIRED_MESSAGE,
    SESSION_EXPIRED,
    Event,
    EventKind,
    Watched,
    initial_state,
    location_update,
    view_of_location_update,
)

log = logging.getLogger(__name__)

# A socket whose write buffer stays past its high-water mark this long is closed with 1013.
STALL_S = 30.0
STALL_CHECK_S = 1.0
TOO_SLOW_REASON = "watcher too slow"


class Out(enum.Enum):
    """What a held message is."""

    LOCATION = 1  # location_update: the one kind that may be conflated
    STATUS = 2  # status_change
    EXPIRED = 3  # the expiry error; then a 1008 close
    MILESTONE = 4  # rider_approaching / rider_arrived: once per delivery, never dropped


_OUT = {EventKind.LOCATION: Out.LOCATION, EventKind.STATUS: Out.STATUS,
        EventKind.EXPIRED: Out.EXPIRED, EventKind.MILESTONE: Out.MILESTONE}  # fmt: skip
_EXPIRED_FRAME = prepare_text(EXPIRED_MESSAGE)


def _seq_of(item: tuple[Out, int, bytes]) -> int:
    return item[1]


class Watcher:
    """One local socket watching one session."""

    __slots__ = (
        "closed", "held", "last_seq", "maxlen", "milestones", "min_seq", "resume_from", "sink",
        "stalled_since", "tracking_id",
    )  # fmt: skip

    def __init__(
        self, tracking_id: str, sink: FrameSink, maxlen: int, milestones: bool = False
    ) -> None:
        self.tracking_id = tracking_id
        self.sink = sink
        self.maxlen = maxlen
        # Milestone messages only to sockets that asked (`?milestones=true`): API.md's clients
        # read the stream message by message, and a new kind among them would surprise them.
        self.milestones = milestones
        self.held: deque[tuple[Out, int, bytes]] = deque()  # waiting for the buffer to drain
        self.min_seq: int | None = None  # None until initial_state was written
        self.last_seq = -1  # the newest event this socket was given
        # While its shard is resynced: the newest seq it had when the shard came back. Live
        # events wait in `held` meanwhile, so that what it missed goes out first, in order.
        self.resume_from: int | None = None
        self.closed = False
        self.stalled_since: float | None = None

    def offer(self, kind: Out, seq: int, frame: bytes) -> None:
        """A prepared frame for this socket: written now, or held while the socket is slow."""
        if self.closed:
            return
        min_seq = self.min_seq
        if min_seq is not None and seq <= min_seq and kind is not Out.EXPIRED:
            return  # initial_state already showed it
        if seq > self.last_seq:
            self.last_seq = seq
        if min_seq is None or self.held or not self.sink.ready or self.resume_from is not None:
            self._hold(kind, seq, frame)
            return
        self.sink.write(frame)
        if kind is Out.EXPIRED:
            self.close(POLICY_VIOLATION, SESSION_EXPIRED)

    def _hold(self, kind: Out, seq: int, frame: bytes) -> None:
        q = self.held
        if len(q) >= self.maxlen:
            for i, item in enumerate(q):
                if item[0] is Out.LOCATION:
                    del q[i]
                    QUEUE_DROPS.inc()
                    break
            else:
                SLOW_CLOSES.inc()
                self.close(TRY_AGAIN_LATER, TOO_SLOW_REASON)
                return
        q.append((kind, seq, frame))
        if self.min_seq is not None and self.resume_from is None:
            self._wait_for_drain()

    def _wait_for_drain(self) -> None:
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        self.sink.on_drain(self.flush)

    def start(self, watched: Watched) -> None:
        """Write initial_state, then (resuming) what the socket missed, then what arrived
        meanwhile and is newer."""
        self.min_seq = watched.seq
        self.last_seq = max(self.last_seq, watched.seq)
        self.sink.write(prepare_text(initial_state(watched.view, watched.recovered)))
        held, self.held = self.held, deque()
        for e in watched.missed:
            if e.kind is not EventKind.MILESTONE or self.milestones:
                self._replay(_OUT[e.kind], e.seq, prepare_text(e.frame))
        for kind, seq, frame in held:
            self.offer(kind, seq, frame)

    def offer_current(self, seq: int, frame: bytes) -> None:
        """The session's current state after a resync: only if this socket has not seen it
        (a socket that already had that seq's event would get it twice)."""
        if self.min_seq is not None and seq <= self.last_seq:
            return
        self.offer(Out.LOCATION, seq, frame)

    def mark_resume(self) -> None:
        """Its shard came back: remember what this socket had, and hold live events until
        `catch_up` (kept if already marked)."""
        if self.min_seq is not None and self.resume_from is None and not self.closed:
            self.resume_from = self.last_seq

    def catch_up(self, missed: list[tuple[Out, int, bytes]]) -> None:
        """After a resync: what this socket missed (events after `resume_from` that are not
        held already), merged by seq with what it holds, then written in order."""
        had = self.resume_from
        if had is None:
            return
        self.resume_from = None
        held = list(self.held)
        known = {seq for _, seq, _ in held}
        tail = [it for it in held if it[0] is Out.EXPIRED]  # seq 0: always last
        items = [it for it in held if it[0] is not Out.EXPIRED] + [
            (kind, seq, frame) for kind, seq, frame in missed
            if seq > had and seq not in known and (kind is not Out.MILESTONE or self.milestones)
        ]
        items.sort(key=_seq_of)  # stable: a seq's location, then its status change
        self.held = deque()
        for kind, seq, frame in items + tail:
            if seq > self.last_seq:
                self.last_seq = seq
            if self.held or not self.sink.ready:
                self.held.append((kind, seq, frame))
                continue
            self.sink.write(frame)
            if kind is Out.EXPIRED:
                self.close(POLICY_VIOLATION, SESSION_EXPIRED)
                return
        if self.held:
            self._wait_for_drain()

    def _replay(self, kind: Out, seq: int, frame: bytes) -> None:
        self.last_seq = max(self.last_seq, seq)
        # In order, never conflated: a replay is bounded by the shard (TRACKING_RESUME_MAX_...).
        if self.held or not self.sink.ready:
            self.held.append((kind, seq, frame))
            self._wait_for_drain()
        else:
            self.sink.write(frame)

    def flush(self) -> None:
        """The buffer drained (or the socket went away): write what was held, in order."""
        if self.resume_from is not None:
            return  # catch_up writes it, after what the socket missed
        sink, q = self.sink, self.held
        if not sink.open:
            self.closed = True
            q.clear()
            return
        while q and sink.ready:
            kind, _, frame = q.popleft()
            sink.write(frame)
            if kind is Out.EXPIRED:
                self.close(POLICY_VIOLATION, SESSION_EXPIRED)
                return
        if q:
            self.sink.on_drain(self.flush)
        else:
            self.stalled_since = None

    def reply(self, frame: bytes) -> None:
        """A direct reply (pong, error) to this socket's client, ahead of anything held."""
        if not self.closed:
            self.sink.write(frame)

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.held.clear()
        self.sink.on_drain(None)
        with contextlib.suppress(Exception):
            self.sink.close(code, reason)


class Gateway:
    """Registry of this process's sockets and the engine channel feeding them."""

    def __init__(self, engine: EngineClient, queue_max: int) -> None:
        self.engine = engine
        self.id = "gw-" + uuid.uuid4().hex[:12]
        self.queue_max = queue_max
        self.subs: dict[str, set[Watcher]] = {}
        # The newest view of each session watched here, as (seq, view JSON): new sockets on a
        # session already watched start from it (see attach).
        self.views: dict[str, Watched] = {}
        self.extra_connections = 0  # sockets that watch no session (ops feed)
        self._watchers = 0  # sockets in `subs`, kept as they come and go
        self._resyncing: dict[int, bool] = {}  # shard -> whether to run again when done
        self._tasks: set[asyncio.Task[None]] = set()
        # Sessions whose local socket count changed since it was last reported, per shard.
        self._presence: list[set[str]] = [set() for _ in range(engine.n_shards)]

    @property
    def connections(self) -> int:
        return self._watchers + self.extra_connections

    def start(self) -> None:
        self.engine.open_events(self.id, self, self)
        self._spawn(self._close_stalled())

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await self.engine.close_events()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for watchers in list(self.subs.values()):
            for w in list(watchers):
                w.close(1001, "server shutting down")

    async def attach(
        self, tracking_id: str, sink: FrameSink, since_seq: int | None = None,
        milestones: bool = False,
    ) -> Watcher:
        """Watch a session from a new socket (resuming after `since_seq`, if given; with
        milestone messages if asked); raises the engine's error when it cannot.

        The first socket on a session asks its shard to watch it for this process; the others
        start from the view this process holds: every accepted change of a watched session
        reaches it as a location_update, in order, so that view is as current as anything the
        sockets will be sent (py-spy during `python -m loadtests.storm`: the shard call was a
        fifth of a connection's cost).
        A resuming socket always asks the shard: only it can replay what the socket missed."""
        w = Watcher(tracking_id, sink, self.queue_max, milestones)
        known = self.views.get(tracking_id)
        self.subs.setdefault(tracking_id, set()).add(w)
        self._watchers += 1
        self._changed(tracking_id)
        if known is not None and since_seq is None:
            w.start(known)
            return w
        try:
            watched = await self.engine.watch(tracking_id, self.id, since_seq)
        except BaseException:
            await self.detach(w)
            raise
        self._hold_view(tracking_id, Watched(watched.seq, watched.view))  # not the replay
        w.start(watched)
        return w

    def _hold_view(self, tracking_id: str, watched: Watched) -> None:
        if tracking_id not in self.subs:
            return  # nobody watches it here any more
        known = self.views.get(tracking_id)
        if known is None or watched.seq > known.seq:
            self.views[tracking_id] = watched

    async def detach(self, w: Watcher) -> None:
        w.closed = True
        w.sink.on_drain(None)
        subs = self.subs.get(w.tracking_id)
        if subs is None or w not in subs:
            return
        subs.discard(w)
        self._watchers -= 1
        self._changed(w.tracking_id)
        if not subs:
            del self.subs[w.tracking_id]
            self.views.pop(w.tracking_id, None)
            with contextlib.suppress(TrackingError):
                await self.engine.unwatch(w.tracking_id, self.id)

    async def _close_stalled(self) -> None:
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            limit = time.monotonic() - STALL_S
            for watchers in list(self.subs.values()):
                for w in list(watchers):
                    if w.stalled_since is not None and w.stalled_since < limit:
                        log.info("closing a watcher of %s: its socket stayed full", w.tracking_id)
                        SLOW_CLOSES.inc()
                        w.close(TRY_AGAIN_LATER, TOO_SLOW_REASON)

    # -- presence (engine.client.PresenceSource) --------------------------------------------------
    def _changed(self, tracking_id: str) -> None:
        self._presence[self.engine.shard_for(tracking_id)].add(tracking_id)

    def presence(self, shard: int) -> dict[str, int] | None:
        changed = self._presence[shard]
        if not changed:
            return None
        self._presence[shard] = set()
        return {tid: len(self.subs.get(tid, ())) for tid in changed}

    def presence_lost(self, shard: int, counts: dict[str, int]) -> None:
        self._presence[shard].update(counts)

    # -- the engine's event channel (engine.client.EventSink) -----------------------------------
    def deliver(self, events: list[Event]) -> None:
        sent = 0
        now = time.time()
        for event in events:
            watchers = self.subs.get(event.tracking_id)
            if not watchers:
                continue
            EVENT_LATENCY.observe(max(0.0, now - event.at))
            frame = prepare_text(event.frame)  # once per process, whatever the watchers
            kind = _OUT[event.kind]
            seq = event.seq
            if kind is Out.LOCATION:
                self.views[event.tracking_id] = Watched(
                    seq, view_of_location_update(event.frame)
                )
            elif kind is Out.EXPIRED:
                self.views.pop(event.tracking_id, None)  # new sockets hear it from the shard
            elif kind is Out.MILESTONE:
                for w in watchers:
                    if w.milestones:
                        w.offer(kind, seq, frame)
                continue
            for w in watchers:
                w.offer(kind, seq, frame)
            sent += len(watchers)
        if sent:
            FANNED_OUT.inc(sent)

    def resync(self, shard: int) -> None:
        """A restarted shard (or one that dropped our backlog) lost our watches: watch again,
        resuming from what the sockets had, and send each what it missed (from the journal) before
        anything newer; when that is too old to replay, the current state."""
        for tid, watchers in self.subs.items():
            if self.engine.shard_for(tid) == shard:
                for w in watchers:
                    w.mark_resume()  # before this feed's events are delivered
        if shard in self._resyncing:
            self._resyncing[shard] = True  # run once more when the current pass ends
            return
        self._resyncing[shard] = False
        self._spawn(self._resync_until_done(shard))

    async def _resync_until_done(self, shard: int) -> None:
        try:
            while True:
                await self._resync(shard)
                if not self._resyncing.get(shard):
                    return
                self._resyncing[shard] = False
        finally:
            self._resyncing.pop(shard, None)

    async def _resync(self, shard: int) -> None:
        mine = [t for t in self.subs if self.engine.shard_for(t) == shard]
        self._presence[shard].update(mine)  # a restarted shard lost the counts too
        # All at once: the engine client sends them to the shard in one batch.
        await asyncio.gather(*(self._resync_one(tid) for tid in mine))

    async def _resync_one(self, tid: str) -> None:
        self.views.pop(tid, None)  # not known to be current until the shard says
        # Resume from the oldest event a started socket here has: a shard that died between its
        # commit and its publish took those events' delivery with it, not the journal.
        started = [w.last_seq if w.resume_from is None else w.resume_from
                   for w in self.subs.get(tid, ()) if w.min_seq is not None]
        since = min(started) if started else None
        try:
            watched = await self.engine.watch(tid, self.id, since)
        except Expired:
            for w in list(self.subs.get(tid, ())):
                w.catch_up([])
                w.offer(Out.EXPIRED, 0, _EXPIRED_FRAME)
            return
        except BaseException as e:
            if isinstance(e, TrackingError):
                log.info("resync of %s: %s", tid, e.detail)
            for w in list(self.subs.get(tid, ())):
                w.catch_up([])  # what arrived live meanwhile still goes out
            if isinstance(e, TrackingError):
                return
            raise
        self._hold_view(tid, Watched(watched.seq, watched.view))
        missed = [(_OUT[e.kind], e.seq, prepare_text(e.frame)) for e in watched.missed]
        frame = prepare_text(location_update(watched.view))
        for w in list(self.subs.get(tid, ())):
            if watched.recovered and w.min_seq is not None:
                w.catch_up(missed)  # in order, each at most once
            else:  # too old to replay (or a socket still starting): the current state
                w.catch_up([])
                w.offer_current(watched.seq, frame)
