"""The asyncio shell around a `Shard`: batched calls, long-polls for events, the sweeper and
the checkpointer.

Event transport (measured with `loadtests/transport_bench.py`, then `engine_bench.py`): each API
process reads its events by cursor, faster than a Ray streaming generator. A call's reply
carries the events queued for the caller's gateway; a long-poll returns the ones no reply has
carried yet. Either returns everything since the acknowledged cursor, so a burst travels in one
Ray reply, and an event lost with a crashed reply is returned again by the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from engine.shard import Channel, Command, Event, Feed, Result, Shard

log = logging.getLogger(__name__)
# A checkpoint of every session's state is written this often when anything changed, or sooner
# once this many changes were journaled since the last one: a restart replays at most about
# that many journal rows (~1 s per 500,000 rows).
CHECKPOINT_INTERVAL_S = 30.0
CHECKPOINT_ROWS = 200_000
# Sessions encoded per step of a checkpoint (~1 ms each); the shard serves calls in between.
CHECKPOINT_SLICE = 2_000


def tune_gc() -> None:
    """Fewer, cheaper cyclic-GC passes in a process holding many long-lived objects.

    A shard holds tens of thousands of sessions; with CPython's default thresholds full
    collections walk all of them several times a second and show up as latency spikes.
    Freezing what exists after loading takes it out of collections altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)



class ShardHost:
    """Hosts one Shard in an event loop; identical under Ray and in-process."""

    def __init__(self, shard: Shard, sweep_interval_s: float) -> None:
        self.shard = shard
        self.sweep_interval_s = sweep_interval_s
        # A new epoch per incarnation: a gateway that sees it change knows its watches are gone.
        self.epoch = uuid.uuid4().hex
        # Long-polls waiting for events, by gateway.
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    def _ensure_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep_forever())
        if self._checkpointer is None or self._checkpointer.done():
            self._checkpointer = loop.create_task(self._checkpoint_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                if self.shard.sweep():
                    self._wake()
            except Exception:
                log.exception("sweep failed")

    async def _checkpoint_forever(self) -> None:
        loop = asyncio.get_running_loop()
        done_high, done_at = self.shard.journal_high(), loop.time()
        while True:
            await asyncio.sleep(1.0)
            high = self.shard.journal_high()
            if high == done_high or (
                high - done_high < CHECKPOINT_ROWS
                and loop.time() - done_at < CHECKPOINT_INTERVAL_S
            ):
                continue
            try:
                await self.checkpoint()
            except Exception:
                log.exception("checkpoint failed; the journal still has everything")
            done_high, done_at = high, loop.time()

    async def checkpoint(self) -> bool:
        """Write every session's state to the store's checkpoint; False if the shard reloaded.

        The state is read in slices between batches, so it is fuzzy: each session is recorded
        as of some point after `upto`, and recovery replays only journal rows newer than what
        the checkpoint holds for their session.
        """
        shard = self.shard
        generation = shard.generation
        upto = shard.journal_high()
        sessions = list(shard.sessions.values())
        chunks = []
        for i in range(0, len(sessions), CHECKPOINT_SLICE):
            if shard.generation != generation:
                return False  # reloaded after a failed commit: these objects may be ahead
            chunks.append(orjson.dumps(shard.checkpoint_rows(sessions[i : i + CHECKPOINT_SLICE])))
            await asyncio.sleep(0)
        if shard.generation != generation:
            return False
        await asyncio.to_thread(shard.store.write_checkpoint, upto, len(sessions), chunks)
        return True

    def _wake(self) -> None:
        # Only gateways that now have events no reply carried yet: a woken poll is a Ray reply
        # and a new request, and waking every poll on every batch roughly doubled the latency.
        for gw in [g for g in self._waiters if self.shard.has_unsent(g)]:
            fut = self._waiters.pop(gw)
            if not fut.done():
                fut.set_result(None)

    async def call(
        self, commands: Sequence[Command], channel: Channel | None = None
    ) -> tuple[list[Result], Feed | None]:
        """Apply a batch of commands (results in the same order); with the caller's gateway
        channel, the reply also carries that gateway's events (so its poll need not wake)."""
        self._ensure_sweeper()
        results = self.shard.handle(commands)
        feed: Feed | None = None
        if channel is not None:
            gateway, ack, connections = channel
            base, events = self.shard.take(gateway, ack, connections)
            feed = (self.epoch, base, events)
        self._wake()
        return results, feed

    async def poll(
        self, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        """Events for `gateway` after cursor `ack`, waiting up to `timeout_s` for the first."""
        self._ensure_sweeper()
        base, events = self.shard.take(gateway, ack, connections)
        if not events and timeout_s > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            old = self._waiters.get(gateway)
            if old is not None and not old.done():
                old.set_result(None)  # a newer poll of the same gateway supersedes it
            self._waiters[gateway] = fut
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await fut
            if self._waiters.get(gateway) is fut:
                del self._waiters[gateway]
            base, events = self.shard.take(gateway, ack, connections)
        return self.epoch, base, events

    async def ping(self) -> dict[str, Any]:
        self._ensure_sweeper()
        return {"epoch": self.epoch, "sessions": len(self.shard.sessions)}

    async def close(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        for task in (self._sweeper, self._checkpointer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self.checkpoint()  # the next start then replays nothing
        except Exception:
            log.exception("checkpoint at close failed; the journal still has everything")
        self.shard.store.close()
