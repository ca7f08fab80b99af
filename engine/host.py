"""The asyncio shell around a `Shard`: batched calls, long-polls for events, the sweeper.

Event transport (measured with `loadtests/transport_bench.py`): gateways long-poll each shard
with a cursor. One poll returns every event queued for that API process since its last
acknowledged cursor, so a burst travels in one Ray reply, and an event lost with a crashed
reply is simply returned again by the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from engine.shard import Command, Event, Result, Shard

log = logging.getLogger(__name__)
# Journal rows moved into the indexed history per step, and how often: up to ~10,000 rows/s
# per shard, in pauses of about 20 ms (measured ~8 us per row moved).
COMPACT_ROWS = 2_500
COMPACT_INTERVAL_S = 0.25


class ShardHost:
    """Hosts one Shard in an event loop; identical under Ray and in-process."""

    def __init__(self, shard: Shard, sweep_interval_s: float) -> None:
        self.shard = shard
        self.sweep_interval_s = sweep_interval_s
        # A new epoch per incarnation: a gateway that sees it change knows its watches are gone.
        self.epoch = uuid.uuid4().hex
        self._waiters: set[asyncio.Future[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None

    def _ensure_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep_forever())
        if self._compactor is None or self._compactor.done():
            self._compactor = loop.create_task(self._compact_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                if self.shard.sweep():
                    self._wake()
            except Exception:
                log.exception("sweep failed")

    async def _compact_forever(self) -> None:
        # Small steps often: each pauses this shard for about COMPACT_ROWS x 8 us.
        while True:
            try:
                moved = self.shard.store.compact(COMPACT_ROWS)
            except Exception:
                log.exception("journal compaction failed")
                moved = 0
            await asyncio.sleep(0 if moved >= COMPACT_ROWS else COMPACT_INTERVAL_S)

    def _wake(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def call(self, commands: Sequence[Command]) -> list[Result]:
        """Apply a batch of commands; results in the same order."""
        self._ensure_sweeper()
        results = self.shard.handle(commands)
        self._wake()
        return results

    async def poll(
        self, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        """Events for `gateway` after cursor `ack`, waiting up to `timeout_s` for the first."""
        self._ensure_sweeper()
        base, events = self.shard.take(gateway, ack, connections)
        if not events and timeout_s > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(fut)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await fut
            self._waiters.discard(fut)
            base, events = self.shard.take(gateway, ack, connections)
        return self.epoch, base, events

    async def ping(self) -> dict[str, Any]:
        self._ensure_sweeper()
        return {"epoch": self.epoch, "sessions": len(self.shard.sessions)}

    async def close(self) -> None:
        for task in (self._sweeper, self._compactor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._wake()
        self.shard.store.close()
