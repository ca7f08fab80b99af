"""The watcher user: a customer's screen on a WebSocket, timing every pushed location.

WebSocket client: websocket-client. It is plain blocking-socket code, so under locust's
gevent monkey-patching every recv() is a cooperative wait on the hub and hundreds of
watchers share one thread; asyncio clients (websockets) need an event loop per greenlet
and do not mix with gevent's hub.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson
import websocket
from locust import User, task
from locust.env import Environment

from loadtests.pool import SHARED, LiveDelivery
from loadtests.push import ACKS, PUSH, STREAM, Latency, Problem, PushCursor, view_seq

CONNECT = "connect /ws/tracking/[id]"


def fire(environment: Environment, name: str, ms: float, problem: str | None = None) -> None:
    """A locust request entry of type WS: a timing, or a failure when `problem` is given."""
    hook: Any = environment.events.request  # EventHook.fire is untyped
    hook.fire(
        request_type="WS",
        name=name,
        response_time=ms,
        response_length=0,
        exception=RuntimeError(problem) if problem else None,
        context={},
    )


class WatcherUser(User):
    """Watches one live delivery of this process's riders until it is delivered, then the next."""

    weight = 10

    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        opts: Any = self.environment.parsed_options
        self._watch_timeout_s: float = opts.watch_timeout_s if opts is not None else 15.0
        parts = urlsplit(self.host or "")
        scheme = "wss" if parts.scheme == "https" else "ws"
        self._ws_base = f"{scheme}://{parts.netloc}"
        self._ws: websocket.WebSocket | None = None

    def on_stop(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.close(timeout=1)
            self._ws = None

    @task
    def watch(self) -> None:
        delivery = SHARED.pick()
        if delivery is None:
            gevent.sleep(0.2)  # riders have not started one yet
            return
        SHARED.attach(delivery)
        try:
            self._watch(delivery)
        finally:
            SHARED.detach(delivery)
            self._close()

    def _connect(self, delivery: LiveDelivery) -> int | None:
        """Open the socket and read initial_state: its seq, or None if there is nothing to watch."""
        started = time.perf_counter()
        url = f"{self._ws_base}/ws/tracking/{delivery.tracking_id}"
        try:
            self._ws = websocket.create_connection(
                url, timeout=self._watch_timeout_s, skip_utf8_validation=True
            )
            first = orjson.loads(self._ws.recv())
        except (OSError, websocket.WebSocketException, orjson.JSONDecodeError) as e:
            ms = (time.perf_counter() - started) * 1000
            fire(self.environment, CONNECT, ms, f"{type(e).__name__}: {e}")
            return None
        ms = (time.perf_counter() - started) * 1000
        if not isinstance(first, dict) or first.get("type") != "initial_state":
            fire(self.environment, CONNECT, ms, "first message is not initial_state")
            return None
        data = first.get("data")
        seq = view_seq(data)
        if seq is None or not isinstance(data, dict):
            fire(self.environment, CONNECT, ms, "initial_state without an integer seq")
            return None
        fire(self.environment, CONNECT, ms)
        if data.get("status") == "DELIVERED":
            return None  # delivered between the pick and the connect
        return seq

    def _report(self, problem: Problem | None) -> None:
        if problem is not None:
            fire(self.environment, problem.name, 0, problem.message)

    def _watch(self, delivery: LiveDelivery) -> None:
        seq = self._connect(delivery)
        if seq is None or self._ws is None:
            return
        cursor = PushCursor(delivery, seq)
        while True:
            try:
                raw = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                now = time.perf_counter()
                if delivery.finished:
                    # Delivered or abandoned by its rider: once its last acknowledged change
                    # is here (or overdue, then a failure), watch another one.
                    acked = ACKS.last(delivery)
                    if cursor.tail_settled(acked, now, self._watch_timeout_s):
                        self._report(cursor.lost_tail(acked))
                        return
                    continue
                problem = cursor.overdue(now, self._watch_timeout_s)
                if problem is not None:
                    self._report(problem)
                    return
                continue
            except (OSError, websocket.WebSocketException) as e:
                fire(self.environment, STREAM, 0, f"socket lost: {type(e).__name__}")
                self._report(cursor.lost_tail(ACKS.last(delivery)))
                return
            # Timestamp before decoding: the decode is the watcher's cost, not the service's.
            received = time.perf_counter()
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                msg = None
            outcomes, keep_watching = cursor.message(msg, received)
            for outcome in outcomes:
                if isinstance(outcome, Latency):
                    fire(self.environment, PUSH, outcome.ms)
                else:
                    self._report(outcome)
            if not keep_watching:
                # Delivered, or an error: what the rider had acknowledged must be here.
                self._report(cursor.lost_tail(ACKS.last(delivery)))
                return
