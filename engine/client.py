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
from typing import Any, Protocol

import orjson

from engine.errors import NotFound, TrackingError, Unavailable, from_wire
from engine.routing import shard_of
from engine.shard import Channel, Command, Event, Feed, Result
from engine.stats import merge_stats

log = logging.getLogger(__name__)

MAX_BATCH = 2000
# A shard that does not answer a batch in this long is treated as down for that batch: its
# callers get Unavailable (503) instead of hanging. (Whether it applied the batch is unknown.)
CALL_TIMEOUT_S = 30.0


class Transport(Protocol):
    """How commands and polls reach shard `i` (Ray actor calls, or in-process)."""

    n_shards: int

    async def call(
        self, shard: int, commands: Sequence[Command], channel: Channel | None
    ) -> tuple[list[Result], Feed | None]:
        """Apply `commands`; with a channel, also return the events queued for that gateway."""

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]: ...


BatchObserver = Callable[[int, int, float], None]  # (shard, batch size, seconds)
# Idle polls return this often; each carries this process's socket count to the shards, so
# statistics of connections in every process are at most this stale.
POLL_TIMEOUT_S = 2.0


class EventSink(Protocol):
    """The gateway's side of the event channel."""

    def deliver(self, events: list[Event]) -> None:
        """New events, in order, each once."""

    def resync(self, shard: int) -> None:
        """Events of `shard` were lost (it restarted or dropped a backlog): watch again."""

    @property
    def connections(self) -> int:
        """Sockets of this process, reported to the shards for statistics."""


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
        self.pending: list[tuple[Command, asyncio.Future[Any], bool]] = []
        self.busy = False

    def submit(self, cmd: Command, decode: bool) -> asyncio.Future[Any]:
        """Queue `cmd`; `decode` turns a JSON-encoded result into Python objects."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((cmd, fut, decode))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch = self.pending[:MAX_BATCH]
                del self.pending[:MAX_BATCH]
                t0 = loop.time()
                try:
                    # asyncio.timeout, not wait_for: no task per call, so the call leaves now
                    # rather than after everything else ready on the loop.
                    async with asyncio.timeout(CALL_TIMEOUT_S):
                        results, feed = await self.transport.call(
                            self.shard, [c for c, _, _ in batch], self.client.channel(self.shard)
                        )
                except TrackingError as e:
                    for _, f, _ in batch:
                        if not f.done():
                            f.set_exception(from_wire(*e.to_wire()))
                    continue
                except Exception as e:
                    log.warning("shard %d call failed: %s", self.shard, e)
                    for _, f, _ in batch:
                        if not f.done():
                            f.set_exception(Unavailable(
                                "The tracking engine is restarting a shard; retry shortly"))
                    continue
                if feed is not None:
                    self.client.feed(self.shard, feed)
                if self.observe is not None:
                    self.observe(self.shard, len(batch), loop.time() - t0)
                for (_, f, decode), r in zip(batch, results, strict=True):
                    if f.done():
                        continue
                    if r[0] == "ok":
                        value = r[1]
                        f.set_result(orjson.loads(value) if decode and value is not None else value)
                    else:
                        f.set_exception(from_wire(r[1], r[2]))
        finally:
            self.busy = False


class EngineClient:
    """Start, update, read and watch sessions on whichever runtime hosts the shards."""

    def __init__(self, transport: Transport, observe: BatchObserver | None = None) -> None:
        self.transport = transport
        self.n_shards = transport.n_shards
        self._lanes = [_Lane(self, i, observe) for i in range(self.n_shards)]
        self._gateway: str | None = None
        self._sink: EventSink | None = None
        self._cursors = [_Cursor() for _ in range(self.n_shards)]
        self._pollers: list[asyncio.Task[None]] = []

    def shard_for(self, tracking_id: str) -> int:
        return shard_of(tracking_id, self.n_shards)

    def _send(self, shard: int, cmd: Command, decode: bool = False) -> asyncio.Future[Any]:
        return self._lanes[shard].submit(cmd, decode)

    async def _all(self, cmd: Command) -> list[Any]:
        return list(await asyncio.gather(*(self._send(i, cmd) for i in range(self.n_shards))))

    # -- commands -----------------------------------------------------------------------------
    # Commands return futures rather than coroutines: the hot path then costs no task per
    # request. The `*_json` forms give the view as the JSON bytes the shard encoded (what an
    # HTTP reply sends as is); the others decode it.
    def start_json(
        self, order_id: str, rider_id: str, dropoff_lat: float, dropoff_lng: float,
        phone: str | None,
    ) -> asyncio.Future[bytes]:
        cmd = ("start", order_id, rider_id, dropoff_lat, dropoff_lng, phone)
        return self._send(shard_of(order_id, self.n_shards), cmd)

    def start(
        self, order_id: str, rider_id: str, dropoff_lat: float, dropoff_lng: float,
        phone: str | None,
    ) -> asyncio.Future[dict[str, Any]]:
        cmd = ("start", order_id, rider_id, dropoff_lat, dropoff_lng, phone)
        return self._send(shard_of(order_id, self.n_shards), cmd, decode=True)

    def update_json(
        self, tracking_id: str, lat: float, lng: float, status: str | None,
        rider_id: str | None,
    ) -> asyncio.Future[bytes]:
        """Queue an update; `rider_id` is the acting rider, None for a superadmin."""
        cmd = ("update", tracking_id, lat, lng, status, rider_id)
        return self._send(self.shard_for(tracking_id), cmd)

    def update(
        self, tracking_id: str, lat: float, lng: float, status: str | None,
        rider_id: str | None,
    ) -> asyncio.Future[dict[str, Any]]:
        cmd = ("update", tracking_id, lat, lng, status, rider_id)
        return self._send(self.shard_for(tracking_id), cmd, decode=True)

    def get_json(self, tracking_id: str) -> asyncio.Future[bytes]:
        return self._send(self.shard_for(tracking_id), ("get", tracking_id))

    def get(self, tracking_id: str) -> asyncio.Future[dict[str, Any]]:
        return self._send(self.shard_for(tracking_id), ("get", tracking_id), decode=True)

    async def rider_session(self, rider_id: str) -> dict[str, Any]:
        found = [v for v in await self._all(("rider", rider_id)) if v is not None]
        if not found:
            raise NotFound(f"Rider {rider_id} has no live tracking session")
        # Newest by precise start time; ties (one batch) break by id, so the answer is stable.
        _, _, view = max(found, key=lambda f: (f[0], f[1]))
        best: dict[str, Any] = orjson.loads(view)
        return best

    async def history(self, tracking_id: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = await self._send(
            self.shard_for(tracking_id), ("history", tracking_id, since_seq, limit)
        )
        return items

    async def stats(self) -> dict[str, Any]:
        parts = await self._all(("stats",))
        out = merge_stats(parts)
        # Every API process polls every shard and reports its socket count; shard 0 is enough.
        by_gw: dict[str, int] = parts[0].get("websocket_connections_by_gateway", {})
        out["total_websocket_connections"] = sum(by_gw.values())
        out["api_processes"] = len(by_gw)
        return out

    async def snapshot(self, limit_per_shard: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        for part in await self._all(("snapshot", limit_per_shard)):
            out.extend(part)
        return out

    def watch(self, tracking_id: str, gateway: str) -> asyncio.Future[dict[str, Any]]:
        return self._send(self.shard_for(tracking_id), ("watch", tracking_id, gateway), True)

    async def unwatch(self, tracking_id: str, gateway: str) -> None:
        await self._send(self.shard_for(tracking_id), ("unwatch", tracking_id, gateway))

    async def ping(self) -> None:
        """Raise unless every shard answers."""
        await self._all(("ping",))

    # -- the event channel --------------------------------------------------------------------
    def open_events(self, gateway: str, sink: EventSink) -> None:
        """Deliver the events of sessions `gateway` watches to `sink`, from now until closed."""
        self._gateway, self._sink = gateway, sink
        loop = asyncio.get_running_loop()
        self._pollers = [loop.create_task(self._poll_forever(i)) for i in range(self.n_shards)]

    async def close_events(self) -> None:
        for t in self._pollers:
            t.cancel()
        for t in self._pollers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._pollers = []
        self._gateway = self._sink = None

    def channel(self, shard: int) -> Channel | None:
        if self._gateway is None or self._sink is None:
            return None
        return (self._gateway, self._cursors[shard].ack, self._sink.connections)

    def feed(self, shard: int, feed: Feed) -> None:
        """Take the events of a call or poll reply: new ones go to the sink, once, in order."""
        sink = self._sink
        if sink is None:
            return
        epoch, base, events = feed
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
        while self._gateway is not None and self._sink is not None:
            try:
                feed = await self.transport.poll(
                    shard, self._gateway, self._cursors[shard].ack, self._sink.connections,
                    POLL_TIMEOUT_S,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event channel of shard %d: %s; retrying", shard, e)
                await asyncio.sleep(0.5)
                continue
            self.feed(shard, feed)

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        """One long-poll of a gateway's events (the channel above does this for a process)."""
        try:
            return await self.transport.poll(shard, gateway, ack, connections, timeout_s)
        except TrackingError:
            raise
        except Exception as e:
            raise Unavailable(f"shard {shard} poll failed: {e}") from e
