"""The shell around a `Shard`: batched calls, long-polls for events, the sweeper and the
checkpointer, on threads.

Calls, polls and the background work share the shard under one lock. Under Ray the shard actor
is a threaded actor: calls run on its default thread, polls block in a thread group of their
own. (It replaced an asyncio actor, whose calls hopped from Ray's thread into an event loop
thread and back; the threaded one was faster in round trips at p50 and p99 on this box. That
comparison's benchmark went with the asyncio actor.) Calls and polls now arrive on the shard's
own socket (`engine.runtime.channel`), served on threads the same way.

Event transport: each API process reads its events by cursor. A call's reply carries the events
queued for the caller's gateway; a long-poll returns the ones no reply has carried yet. Either
returns everything since the acknowledged cursor, so a burst travels in one reply, and an event
lost with a crashed reply is returned again by the next poll.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from engine.clock import Clock, system_clock
from engine.protocol import AnyCommand, CallReply, Channel, Feed
from engine.settings import Settings
from engine.shard import Shard, ShardConfig
from engine.store import StoreSpec, open_store

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
    """Hosts one Shard for concurrent callers; identical under Ray and in-process."""

    def __init__(self, shard: Shard, sweep_interval_s: float, background: bool = True) -> None:
        self.shard = shard
        self.sweep_interval_s = sweep_interval_s
        # A new epoch per incarnation: a gateway that sees it change knows its watches are gone.
        self.epoch = uuid.uuid4().hex
        self._cond = threading.Condition()  # guards the shard; polls wait on it for events
        self._polls: dict[str, object] = {}  # gateway -> its newest poll (an older one returns)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if background:
            for name, target in (("sweeper", self._sweep_forever),
                                 ("checkpointer", self._checkpoint_forever)):  # fmt: skip
                t = threading.Thread(target=target, name=f"shard-{name}", daemon=True)
                t.start()
                self._threads.append(t)

    # -- calls and polls ------------------------------------------------------------------------
    def call(self, commands: Sequence[AnyCommand], channel: Channel | None = None) -> CallReply:
        """Apply a batch of commands (results in the same order); with the caller's gateway
        channel, the reply also carries that gateway's events (so its poll need not wake)."""
        with self._cond:
            if channel is not None and channel.presence:
                self.shard.report_presence(channel.gateway, channel.presence)
            results = self.shard.handle(commands)
            feed: Feed | None = None
            if channel is not None:
                base, events = self.shard.take(channel.gateway, channel.ack, channel.connections)
                feed = Feed(self.epoch, base, events)
            self._wake()
        return CallReply(results, feed)

    def poll(self, channel: Channel, timeout_s: float) -> Feed:
        """Events for the channel's gateway after its cursor, waiting up to `timeout_s` for the
        first."""
        gateway, ack, connections = channel.gateway, channel.ack, channel.connections
        with self._cond:
            if channel.presence:
                self.shard.report_presence(gateway, channel.presence)
            base, events = self.shard.take(gateway, ack, connections)
            if events or timeout_s <= 0 or self._stop.is_set():
                return Feed(self.epoch, base, events)
            me = object()
            self._polls[gateway] = me  # a newer poll of the same gateway supersedes this one
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self.shard.has_unsent(gateway) or self._polls.get(gateway) is not me
                or self._stop.is_set(),
                timeout_s,
            )
            if self._polls.get(gateway) is me:
                del self._polls[gateway]
            base, events = self.shard.take(gateway, ack, connections)
            return Feed(self.epoch, base, events)

    def _wake(self) -> None:
        # Only when some waiting gateway has events no reply carried yet: a woken poll is a Ray
        # reply and a new request, and waking polls on every batch doubled the latency.
        if any(self.shard.has_unsent(g) for g in self._polls):
            self._cond.notify_all()

    def ping(self) -> int:
        """The number of sessions held (a liveness check that takes the lock)."""
        with self._cond:
            return len(self.shard.sessions)

    # -- background work ------------------------------------------------------------------------
    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.sweep_interval_s):
            try:
                with self._cond:
                    if self.shard.sweep():
                        self._wake()
            except Exception:
                log.exception("sweep failed")

    def _checkpoint_forever(self) -> None:
        done_high, done_at = self.shard.journal_high(), time.monotonic()
        while not self._stop.wait(1.0):
            high = self.shard.journal_high()
            if high == done_high or (
                high - done_high < CHECKPOINT_ROWS
                and time.monotonic() - done_at < CHECKPOINT_INTERVAL_S
            ):
                continue
            try:
                self.checkpoint()
            except Exception:
                log.exception("checkpoint failed; the journal still has everything")
            done_high, done_at = high, time.monotonic()

    def checkpoint(self, between_slices: Callable[[], None] | None = None) -> bool:
        """Write every session's state to the store's checkpoint; False if the shard reloaded.

        The state is read in slices, each under the lock, calls served in between, so it is
        fuzzy: each session is recorded as of some point after `upto`, and recovery replays
        only journal rows newer than what the checkpoint holds for their session.
        `between_slices` (tests) runs between slices.
        """
        shard = self.shard
        with self._cond:
            if shard.stale:
                return False  # memory holds a batch the store refused
            generation = shard.generation
            upto = shard.journal_high()
            sessions = list(shard.sessions.values())
        chunks = []
        for i in range(0, len(sessions), CHECKPOINT_SLICE):
            if between_slices is not None and i > 0:
                between_slices()
            with self._cond:
                if shard.generation != generation or shard.stale:
                    return False  # a failed commit: these objects may be ahead of the store
                rows = shard.checkpoint_rows(sessions[i : i + CHECKPOINT_SLICE])
            chunks.append(orjson.dumps(rows))
        with self._cond:
            if shard.generation != generation or shard.stale:
                return False
        shard.store.write_checkpoint(upto, len(sessions), chunks)
        return True

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        try:
            self.checkpoint()  # the next start then replays nothing
        except Exception:
            log.exception("checkpoint at close failed; the journal still has everything")
        with self._cond:
            self.shard.store.close()


@dataclass(frozen=True, slots=True)
class HostSpec:
    """Everything a shard host needs of the settings, and nothing else (no secrets): what a
    runtime sends to the process that builds it."""

    shard: ShardConfig
    store: StoreSpec
    sweep_interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings, index: int) -> HostSpec:
        config = ShardConfig(
            index=index,
            n_shards=settings.shards,
            lifetimes=settings.lifetimes,
            order_service=settings.order_service_url is not None,
            notification_service=settings.notification_service_url is not None,
            rules=settings.rules,
            resume_max=settings.resume_max_changes,
        )
        return cls(config, StoreSpec.from_settings(settings), settings.sweep_interval_s)


def make_host(spec: HostSpec, clock: Clock = system_clock, background: bool = True) -> ShardHost:
    """Build a shard and its store inside a host, as every runtime does."""
    shard = Shard(spec.shard, open_store(spec.store, spec.shard.index), clock)
    return ShardHost(shard, spec.sweep_interval_s, background)
