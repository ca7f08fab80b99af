"""This process's WebSocket gateway: local sockets, one engine watch per session, fan-out.

Events arrive through the engine client's event channel (on the replies of this process's own
calls, and on one long-poll per shard for the rest); each message was encoded once by the shard
and is decoded once here, then offered to every local socket watching that session. Each socket
has its own bounded queue and writer task, so a slow socket never delays the session or the
other watchers. When a queue is full, the oldest *location updates* in it are dropped (the
client sees the `seq` gap); status changes are never dropped, and a socket whose queue is full
of them is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from api.observability import EVENT_LATENCY, FANNED_OUT, QUEUE_DROPS, SLOW_CLOSES
from engine.client import EngineClient
from engine.errors import Expired, TrackingError
from engine.shard import EXPIRED_MESSAGE, Event

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0
TOO_SLOW = 1013
EXPIRED = 1008

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class Watcher:
    """One local socket watching one session."""

    def __init__(self, tracking_id: str, send: SendText, close: Close, maxlen: int) -> None:
        self.tracking_id = tracking_id
        self._send = send
        self._close = close
        self.maxlen = maxlen
        self.queue: deque[tuple[str, int, str]] = deque()
        self.min_seq: int | None = None  # None until initial_state was sent
        self.wakeup = asyncio.Event()
        self.closed = False
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    def offer(self, kind: str, seq: int, text: str) -> None:
        if self.closed:
            return
        if self.min_seq is not None and seq <= self.min_seq and kind != "x":
            return
        q = self.queue
        if len(q) >= self.maxlen:
            for i, item in enumerate(q):
                if item[0] == "u":
                    del q[i]
                    self.dropped += 1
                    QUEUE_DROPS.inc()
                    break
            else:
                SLOW_CLOSES.inc()
                self.queue.clear()
                self.queue.append(("!", 0, "watcher too slow"))
        q.append((kind, seq, text))
        self.wakeup.set()

    def start(self, initial: dict[str, Any]) -> None:
        self.min_seq = int(initial["seq"])
        text = orjson.dumps({"type": "initial_state", "data": initial}).decode()
        self.queue = deque(
            item for item in self.queue if item[0] == "x" or item[1] > self.min_seq
        )
        self.queue.appendleft(("i", self.min_seq, text))
        self.wakeup.set()
        self.task = asyncio.get_running_loop().create_task(self._write())

    async def send_now(self, text: str) -> None:
        """Out-of-band replies (pong, error) go straight to the socket."""
        if not self.closed:
            await self._send(text)

    async def _write(self) -> None:
        try:
            while not self.closed:
                await self.wakeup.wait()
                self.wakeup.clear()
                while self.queue and not self.closed:
                    kind, _seq, text = self.queue.popleft()
                    if kind == "!":
                        await self.close(TOO_SLOW, text)
                        return
                    await asyncio.wait_for(self._send(text), SEND_TIMEOUT_S)
                    if kind == "x":
                        await self.close(EXPIRED, "Tracking session expired")
                        return
        except asyncio.CancelledError:
            pass
        except TimeoutError:
            log.info("closing watcher of %s: send timed out", self.tracking_id)
            await self.close(TOO_SLOW, "watcher too slow")
        except Exception as e:  # the peer went away mid-send (WebSocketDisconnect, OSError)
            log.debug("watcher of %s gone: %s", self.tracking_id, type(e).__name__)
            self.closed = True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self._close(code, reason)


class Gateway:
    """Registry of this process's sockets and the engine channel feeding them."""

    def __init__(self, engine: EngineClient, queue_max: int) -> None:
        self.engine = engine
        self.id = "gw-" + uuid.uuid4().hex[:12]
        self.queue_max = queue_max
        self.subs: dict[str, set[Watcher]] = {}
        self.extra_connections = 0  # sockets that watch no session (ops feed)
        self._watchers = 0  # sockets in `subs`, kept as they come and go
        self._resyncing: dict[int, bool] = {}  # shard -> whether to run again when done
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return self._watchers + self.extra_connections

    def start(self) -> None:
        self.engine.open_events(self.id, self)

    async def stop(self) -> None:
        await self.engine.close_events()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for watchers in list(self.subs.values()):
            for w in list(watchers):
                await w.close(1001, "server shutting down")

    async def attach(self, tracking_id: str, send: SendText, close: Close) -> Watcher:
        """Watch a session from a new socket; raises the engine's error when it cannot."""
        w = Watcher(tracking_id, send, close, self.queue_max)
        self.subs.setdefault(tracking_id, set()).add(w)
        self._watchers += 1
        try:
            view = await self.engine.watch(tracking_id, self.id)
        except BaseException:
            await self.detach(w)
            raise
        w.start(view)
        return w

    async def detach(self, w: Watcher) -> None:
        w.closed = True
        if w.task is not None and w.task is not asyncio.current_task():
            w.task.cancel()
        subs = self.subs.get(w.tracking_id)
        if subs is None or w not in subs:
            return
        subs.discard(w)
        self._watchers -= 1
        if not subs:
            del self.subs[w.tracking_id]
            with contextlib.suppress(TrackingError):
                await self.engine.unwatch(w.tracking_id, self.id)

    # -- the engine's event channel (engine.client.EventSink) -----------------------------------
    def resync(self, shard: int) -> None:
        """A restarted shard (or one that dropped our backlog) lost our watches: watch again and
        push the current state, so no socket silently misses a change."""
        if shard in self._resyncing:
            self._resyncing[shard] = True  # run once more when the current pass ends
            return
        self._resyncing[shard] = False
        task = asyncio.get_running_loop().create_task(self._resync_until_done(shard))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync_until_done(self, shard: int) -> None:
        try:
            while True:
                await self._resync(shard)
                if not self._resyncing.get(shard):
                    return
                self._resyncing[shard] = False
        finally:
            self._resyncing.pop(shard, None)

    def deliver(self, events: list[Event]) -> None:
        sent = 0
        now = time.time()
        for tid, kind, seq, msg, at in events:
            watchers = self.subs.get(tid)
            if not watchers:
                continue
            EVENT_LATENCY.observe(max(0.0, now - at))
            text = msg.decode()
            for w in watchers:
                w.offer(kind, seq, text)
            sent += len(watchers)
        if sent:
            FANNED_OUT.inc(sent)

    async def _resync(self, shard: int) -> None:
        for tid in [t for t in self.subs if self.engine.shard_for(t) == shard]:
            try:
                view = await self.engine.watch(tid, self.id)
            except Expired:
                for w in list(self.subs.get(tid, ())):
                    w.offer("x", 0, EXPIRED_MESSAGE.decode())
                continue
            except TrackingError as e:
                log.info("resync of %s: %s", tid, e.detail)
                continue
            text = orjson.dumps({"type": "location_update", "data": view}).decode()
            for w in list(self.subs.get(tid, ())):
                w.offer("u", int(view["seq"]), text)
