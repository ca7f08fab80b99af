"""The async engine client the front end uses; it hides which runtime hosts the shards.

Every hop to a shard is batched: per shard at most one call is in flight from this process, and
every command that arrives meanwhile rides in the next call (as a Kafka producer lingers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from engine.errors import NotFound, TrackingError, Unavailable, from_wire
from engine.routing import shard_of
from engine.shard import Command, Event, Result
from engine.stats import merge_stats

log = logging.getLogger(__name__)

MAX_BATCH = 2000
# A shard that does not answer a batch in this long is treated as down for that batch: its
# callers get Unavailable (503) instead of hanging. (Whether it applied the batch is unknown.)
CALL_TIMEOUT_S = 30.0


class Transport(Protocol):
    """How commands and polls reach shard `i` (Ray actor calls, or in-process)."""

    n_shards: int

    async def call(self, shard: int, commands: Sequence[Command]) -> list[Result]: ...

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]: ...


BatchObserver = Callable[[int, int, float], None]  # (shard, batch size, seconds)


class _Lane:
    """The batching queue of one shard."""

    def __init__(self, transport: Transport, shard: int, observe: BatchObserver | None) -> None:
        self.transport = transport
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
                    results = await asyncio.wait_for(
                        self.transport.call(self.shard, [c for c, _, _ in batch]), CALL_TIMEOUT_S
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
        self._lanes = [_Lane(transport, i, observe) for i in range(self.n_shards)]

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

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        try:
            return await self.transport.poll(shard, gateway, ack, connections, timeout_s)
        except TrackingError:
            raise
        except Exception as e:
            raise Unavailable(f"shard {shard} poll failed: {e}") from e
