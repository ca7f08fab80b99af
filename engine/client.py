"""The async engine client the front end uses; it hides which runtime hosts the shards.

Every hop to a shard is batched: per shard at most one call is in flight from this process, and
every command that arrives meanwhile rides in the next call (as a Kafka producer lingers).

Events reach this process's gateway on the same hops: each call's reply carries the events
queued for the gateway on that shard, and a long-poll per shard, idle while calls flow, brings
the rest (events caused by other processes' calls, and expiries). Both feed one cursor per
shard, so an event is delivered once whichever reply brought it first. Measured with
`loadtests/engine_bench.py`: riding on replies removed a Ray reply and a new poll request per
batch, which at 2,000 updates/s was the larger part of the update-to-gateway latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from engine.domain.errors import NotFound, TrackingError, Unavailable, from_wire
from engine.domain.routing import shard_of
from engine.domain.stats import SessionCounts
from engine.domain.status import Status
from engine.domain.view import HistoryItem
from engine.protocol import (
    AnyCommand,
    BatchAnswer,
    BatchFix,
    CallReply,
    Channel,
    Event,
    Feed,
    FixCounts,
    Get,
    HistoryPage,
    HistoryQuery,
    Ok,
    OpsDot,
    Ping,
    PlatformStats,
    Presence,
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
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 2000
# Measured at 1,600 updates/s over HTTP (2 shards, 1,000 watchers, ../shared/perf/loadgen.py):
# calls leaving as soon as the previous answered carried 1.4 commands each, and a shard spent
# about 250 us of CPU per call, most of it its commit's fsync (synchronous=FULL).
MIN_CALL_INTERVAL_S = 0.003
# A shard that does not answer a batch in this long is treated as down for that batch: its
# callers get Unavailable (503) instead of hanging. (Whether it applied the batch is unknown.)
CALL_TIMEOUT_S = 30.0
# Idle polls return this often; each carries this process's socket count to the shards, so
# statistics of connections in every process are at most this stale.
POLL_TIMEOUT_S = 2.0


class Transport(Protocol):
    """How commands and polls reach shard `i` (Ray actor calls, or in-process)."""

    n_shards: int

    async def call(
        self, shard: int, commands: Sequence[AnyCommand], channel: Channel | None
    ) -> CallReply:
        """Apply `commands`; with a channel, also return the events queued for that gateway."""

    async def poll(self, shard: int, channel: Channel, timeout_s: float) -> Feed:
        """The gateway's events after its cursor, waiting up to `timeout_s` for the first."""

    async def close(self) -> None: ...


BatchObserver = Callable[[int, int, float], None]  # (shard, batch size, seconds)


class EventSink(Protocol):
    """The gateway's side of the event channel."""

    def deliver(self, events: list[Event]) -> None:
        """New events, in order, each once."""

    def resync(self, shard: int) -> None:
        """Events of `shard` were lost (it restarted or dropped a backlog): watch again."""

    @property
    def connections(self) -> int:
        """Sockets of this process, reported to the shards for statistics."""


class PresenceSource(Protocol):
    """Where the channel finds this process's per-session socket counts (the gateway)."""

    def presence(self, shard: int) -> dict[str, int] | None:
        """The counts of `shard`'s sessions that changed since last asked (None: none)."""

    def presence_lost(self, shard: int, counts: dict[str, int]) -> None:
        """A report that may not have arrived: send those sessions' counts again."""


def _expect(kind: type[T]) -> Callable[[Reply], T]:
    """A check that a command's reply has the type its command promises."""

    def take(value: Reply) -> T:
        if isinstance(value, kind):
            return value
        raise TypeError(f"expected {kind.__name__} from the shard, got {type(value).__name__}")

    return take


def _newest(hit: RiderHit) -> tuple[float, str]:
    return hit.started_at, hit.tracking_id


def _nothing(value: Reply) -> None:
    return None


def _rider_hit(value: Reply) -> RiderHit | None:
    return value if isinstance(value, RiderHit) else None


def _started(value: Reply) -> bytes | Resumed:
    if isinstance(value, bytes | Resumed):
        return value
    raise TypeError(f"expected a view or Resumed from the shard, got {type(value).__name__}")


_bytes = _expect(bytes)
_int = _expect(int)
_watched = _expect(Watched)
_shard_stats = _expect(ShardStats)
_history = _expect(HistoryPage)
_batch = _expect(BatchAnswer)


class _Call(Generic[T]):
    """A command waiting in a lane, and the future its caller awaits."""

    __slots__ = ("cmd", "fut", "take")

    def __init__(self, cmd: AnyCommand, fut: asyncio.Future[T], take: Callable[[Reply], T]):
        self.cmd = cmd
        self.fut = fut
        self.take = take

    def settle(self, result: Result) -> None:
        if self.fut.done():
            return
        if isinstance(result, Ok):
            try:
                self.fut.set_result(self.take(result.value))
            except TypeError as e:
                self.fut.set_exception(TrackingError(f"internal error: {e}"))
        else:
            self.fut.set_exception(from_wire(result.code, result.detail))

    def fail(self, err: TrackingError) -> None:
        if not self.fut.done():
            self.fut.set_exception(err)


class _Pending(Protocol):
    @property
    def cmd(self) -> AnyCommand: ...

    def settle(self, result: Result) -> None: ...

    def fail(self, err: TrackingError) -> None: ...


class _Cursor:
    """Where this process's gateway is in one shard's event queue."""

    __slots__ = ("ack", "epoch", "retired")

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.ack = 0
        self.retired: list[str] = []  # incarnations left behind; their late replies are ignored


class _Lane:
    """The batching queue of one shard."""

    def __init__(self, client: EngineClient, shard: int, observe: BatchObserver | None) -> None:
        self.client = client
        self.transport = client.transport
        self.shard = shard
        self.observe = observe
        self.pending: list[_Pending] = []
        self.busy = False
        self.last_start = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def submit(self, cmd: AnyCommand, take: Callable[[Reply], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self.pending.append(_Call(cmd, fut, take))
        if not self.busy:
            self.busy = True
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                # Calls start at most every MIN_CALL_INTERVAL_S: under load the commands of that
                # interval share one call (and one commit, one fsync); an idle lane's first
                # command leaves at once.
                wait = self.last_start + MIN_CALL_INTERVAL_S - loop.time()
                if wait > 0 and len(self.pending) < MAX_BATCH:
                    await asyncio.sleep(wait)
                self.last_start = loop.time()
                batch = self.pending[:MAX_BATCH]
                del self.pending[:MAX_BATCH]
                t0 = loop.time()
                channel = self.client.channel(self.shard)
                try:
                    # asyncio.timeout, not wait_for: no task per call, so the call leaves now
                    # rather than after everything else ready on the loop.
                    async with asyncio.timeout(CALL_TIMEOUT_S):
                        reply = await self.transport.call(
                            self.shard, [p.cmd for p in batch], channel
                        )
                except TrackingError as e:
                    self.client.presence_lost(self.shard, channel)
                    for p in batch:
                        p.fail(from_wire(e.code, e.detail))
                    continue
                except Exception as e:
                    self.client.presence_lost(self.shard, channel)
                    log.warning("shard %d call failed: %s", self.shard, e)
                    for p in batch:
                        p.fail(Unavailable(
                            "The tracking engine is restarting a shard; retry shortly"))
                    continue
                if reply.feed is not None:
                    self.client.feed(self.shard, reply.feed)
                if self.observe is not None:
                    self.observe(self.shard, len(batch), loop.time() - t0)
                for p, r in zip(batch, reply.results, strict=True):
                    p.settle(r)
        finally:
            self.busy = False


class EngineClient:
    """Start, update, read and watch sessions on whichever runtime hosts the shards.

    Commands return futures rather than coroutines: the hot path then costs no task per
    request. Views come back as the JSON bytes the shard encoded (what an HTTP reply sends
    as is; `engine.protocol.decode_view` reads one).
    """

    def __init__(self, transport: Transport, observe: BatchObserver | None = None) -> None:
        self.transport = transport
        self.n_shards = transport.n_shards
        self._lanes = [_Lane(self, i, observe) for i in range(self.n_shards)]
        self._gateway: str | None = None
        self._sink: EventSink | None = None
        self._presence: PresenceSource | None = None
        self._cursors = [_Cursor() for _ in range(self.n_shards)]
        self._pollers: list[asyncio.Task[None]] = []

    def shard_for(self, tracking_id: str) -> int:
        return shard_of(tracking_id, self.n_shards)

    def _to(
        self, tracking_id: str, cmd: AnyCommand, take: Callable[[Reply], T]
    ) -> asyncio.Future[T]:
        return self._lanes[self.shard_for(tracking_id)].submit(cmd, take)

    async def _all(self, cmd: AnyCommand, take: Callable[[Reply], T]) -> list[T]:
        return list(await asyncio.gather(*(lane.submit(cmd, take) for lane in self._lanes)))

    # -- commands -----------------------------------------------------------------------------
    def start(
        self, order_id: str, rider_id: str, dropoff_lat: float, dropoff_lng: float,
        phone: str | None,
    ) -> asyncio.Future[bytes | Resumed]:
        """Start a session on its order's shard: the new session's view's JSON, or `Resumed`
        with the view of the order's live session when `rider_id` already rides it."""
        cmd = Start(order_id, rider_id, dropoff_lat, dropoff_lng, phone)
        return self._lanes[shard_of(order_id, self.n_shards)].submit(cmd, _started)

    def update(
        self, tracking_id: str, lat: float, lng: float, status: Status | None,
        rider_id: str | None, recorded_at: float | None = None, accuracy_m: float | None = None,
    ) -> asyncio.Future[bytes]:
        """Queue an update; `rider_id` is the acting rider, None for a superadmin. The view's
        JSON, with `filtered` (the reason) when the fix was dropped."""
        cmd = Update(tracking_id, lat, lng, status, rider_id, recorded_at, accuracy_m)
        return self._to(tracking_id, cmd, _bytes)

    def update_batch(
        self, tracking_id: str, fixes: list[BatchFix], rider_id: str | None
    ) -> asyncio.Future[BatchAnswer]:
        """Buffered fixes, oldest first, as one command."""
        return self._to(tracking_id, UpdateBatch(tracking_id, fixes, rider_id), _batch)

    def get(self, tracking_id: str, presence: bool = False) -> asyncio.Future[bytes]:
        """The view's JSON; with `presence`, carrying `watchers` (sockets in every process)."""
        return self._to(tracking_id, Get(tracking_id, presence), _bytes)

    async def rider_session(self, rider_id: str) -> bytes:
        """The view's JSON of the rider's newest live session, on any shard."""
        found = [h for h in await self._all(RiderLookup(rider_id), _rider_hit) if h is not None]
        if not found:
            raise NotFound(f"Rider {rider_id} has no live tracking session")
        # Newest by precise start time; ties (one batch) break by id, so the answer is stable.
        return max(found, key=_newest).view

    async def history(self, tracking_id: str, since_seq: int, limit: int) -> list[HistoryItem]:
        """Accepted changes after `since_seq`, oldest first; 404 / 410 as for the view."""
        page = await self._to(tracking_id, HistoryQuery(tracking_id, since_seq, limit), _history)
        return page.items

    async def stats(self) -> PlatformStats:
        """Statistics over every shard (without the outbox's, which the dispatcher keeps)."""
        stats, _ = await self.overview(0)
        return stats

    async def overview(self, dots_per_shard: int) -> tuple[PlatformStats, list[OpsDot]]:
        """Statistics, and the positions of up to `dots_per_shard` live sessions per shard."""
        parts = await self._all(StatsQuery(dots_per_shard), _shard_stats)
        dots = [d for p in parts for d in p.dots]
        counts = SessionCounts()
        for p in parts:
            counts.add(p.counts)
        # Every API process polls every shard and reports its socket count; shard 0 is enough.
        by_gw = parts[0].connections_by_gateway
        filtered: dict[str, int] = {}
        milestones: dict[str, int] = {}
        for p in parts:
            for into, part in ((filtered, p.filtered), (milestones, p.milestones)):
                for k, n in part.items():
                    into[k] = into.get(k, 0) + n
        stats = PlatformStats(
            total_active_sessions=counts.total_active_sessions,
            total_websocket_connections=sum(by_gw.values()),
            status_distribution=counts.status_distribution,
            sessions_by_recency=counts.sessions_by_recency,
            api_processes=len(by_gw),
            presence=Presence(
                watched_sessions=sum(p.presence[0] for p in parts),
                watching_sockets=sum(p.presence[1] for p in parts),
                max_per_session=max(p.presence[2] for p in parts),
            ),
            fixes=FixCounts(filtered, sum(p.late_fixes for p in parts), milestones),
        )
        return stats, dots

    def watch(
        self, tracking_id: str, gateway: str, since_seq: int | None = None
    ) -> asyncio.Future[Watched]:
        """Watch from `gateway`; with `since_seq`, also what came after it (Watched.missed)."""
        return self._to(tracking_id, Watch(tracking_id, gateway, since_seq), _watched)

    async def unwatch(self, tracking_id: str, gateway: str) -> None:
        await self._to(tracking_id, Unwatch(tracking_id, gateway), _nothing)

    async def ping(self, writable: bool = False) -> None:
        """Raise unless every shard answers (and, with `writable`, can write its store)."""
        await self._all(Ping(writable), _int)

    # -- the event channel --------------------------------------------------------------------
    def open_events(
        self, gateway: str, sink: EventSink, presence: PresenceSource | None = None
    ) -> None:
        """Deliver the events of sessions `gateway` watches to `sink`, from now until closed;
        report `presence` (socket counts per session) with the calls and polls."""
        self._gateway, self._sink, self._presence = gateway, sink, presence
        loop = asyncio.get_running_loop()
        self._pollers = [loop.create_task(self._poll_forever(i)) for i in range(self.n_shards)]

    async def close_events(self) -> None:
        for t in self._pollers:
            t.cancel()
        for t in self._pollers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._pollers = []
        self._gateway = self._sink = self._presence = None

    def channel(self, shard: int) -> Channel | None:
        if self._gateway is None or self._sink is None:
            return None
        presence = self._presence.presence(shard) if self._presence is not None else None
        return Channel(self._gateway, self._cursors[shard].ack, self._sink.connections, presence)

    def presence_lost(self, shard: int, channel: Channel | None) -> None:
        if channel is not None and channel.presence and self._presence is not None:
            self._presence.presence_lost(shard, channel.presence)

    def feed(self, shard: int, feed: Feed) -> None:
        """Take the events of a call or poll reply: new ones go to the sink, once, in order."""
        sink = self._sink
        if sink is None:
            return
        epoch, base, events = feed.epoch, feed.base, feed.events
        cur = self._cursors[shard]
        if epoch != cur.epoch:
            if epoch in cur.retired:
                return  # a reply from before the shard restarted, processed late
            old = cur.epoch
            cur.epoch, cur.ack = epoch, base
            if old is not None:
                cur.retired = [*cur.retired[-7:], old]
                sink.resync(shard)  # a restarted shard lost our watches
        elif base > cur.ack:
            cur.ack = base
            sink.resync(shard)  # the shard dropped our backlog
        skip = cur.ack - base
        if skip < len(events):
            cur.ack = base + len(events)
            sink.deliver(events[skip:] if skip > 0 else events)

    async def _poll_forever(self, shard: int) -> None:
        while True:
            channel = self.channel(shard)
            if channel is None:
                return
            try:
                feed = await self.transport.poll(shard, channel, POLL_TIMEOUT_S)
            except asyncio.CancelledError:
                self.presence_lost(shard, channel)
                raise
            except Exception as e:
                self.presence_lost(shard, channel)
                log.warning("event channel of shard %d: %s; retrying", shard, e)
                await asyncio.sleep(0.5)
                continue
            self.feed(shard, feed)
