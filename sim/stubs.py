"""Stub order and notification services: real HTTP servers on loopback that record every call.

They stand in for services we do not own (API.md "Integrations"). Each stub answers
`200 {"ok": true}` unless told to fail: answer a status code (503, 4xx) for the next N
calls or for S seconds, drop connections without answering for N calls, or be really
down (listener closed, connections refused) for S seconds.

    with IntegrationStubs() as stubs:
        env = stubs.env()                    # TRACKING_ORDER_SERVICE_URL=..., ...
        stubs.orders.set_failing(503, calls=3)
        ...
        stubs.orders.requests                # list[RecordedRequest]
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from harness import free_port


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub saw it, and the status it answered (0: dropped unanswered)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw_body: bytes
    at: float  # Unix seconds, from the stub's clock
    answered: int

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def ok(self) -> bool:
        return 200 <= self.answered < 300


@dataclass
class _Failure:
    status: int  # 0 means: drop the connection without an answer
    calls_left: int | None
    until: float | None


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    stub: StubService


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real services speak
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        stub = self.server.stub
        status = stub._record(self.command, self.path, dict(self.headers.items()), raw)
        if status == 0:
            self.close_connection = True
            return
        payload = json.dumps({"ok": status < 300} if status < 300 else {"detail": "stub failing"})
        order = stub._order(self.command, self.path) if status < 300 else None
        if order is not None:
            status, payload = order
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the record is the log


class StubService:
    """One stub HTTP service on loopback; see the module docstring."""

    def __init__(
        self,
        name: str = "stub",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.host = host
        self._auto_port = not port
        self.port = port or free_port(host)
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failure: _Failure | None = None
        self._orders: dict[str, dict[str, str]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._revive: threading.Timer | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request recorded so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def set_failing(
        self, status: int = 503, *, calls: int | None = None, seconds: float | None = None
    ) -> None:
        """Answer `status` (0: drop the connection unanswered) for the next `calls` requests,
        or for `seconds`, or (both None) until `clear_failing()`."""
        until = None if seconds is None else self._clock() + seconds
        with self._lock:
            self._failure = _Failure(status, calls, until)

    def clear_failing(self) -> None:
        with self._lock:
            self._failure = None

    def set_order(self, order_id: str, rider_id: str) -> None:
        """Answer `GET /orders/{order_id}` (the id percent-encoded) with the order naming
        `rider_id`, as the order service of the start check does; other orders are 404."""
        with self._lock:
            self._orders[order_id] = {"order_id": order_id, "rider_id": rider_id}

    def _order(self, method: str, path: str) -> tuple[int, str] | None:
        parts = path.split("?", 1)[0].split("/")
        if method != "GET" or len(parts) != 3 or parts[1] != "orders":
            return None
        with self._lock:
            order = self._orders.get(unquote(parts[2]))
        if order is None:
            return 404, json.dumps({"detail": "no such order"})
        return 200, json.dumps(order)

    def go_down(self, seconds: float) -> None:
        """Close the listener (connections are refused) and come back on the same port later."""
        self._close_listener()
        self._revive = threading.Timer(seconds, self._revive_listener)
        self._revive.daemon = True
        self._revive.start()

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout_s: float
    ) -> bool:
        """Poll until `predicate(requests)` holds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if predicate(self.requests):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def start(self) -> StubService:
        self._stopped = False
        for attempt in range(3):
            try:
                self._open_listener()
                break
            except OSError as e:
                # The free port picked at construction can be taken by another process
                # before we bind it; pick again (only when no port was asked for).
                if e.errno != errno.EADDRINUSE or not self._auto_port or attempt == 2:
                    raise
                self.port = free_port(self.host)
        return self

    def stop(self) -> None:
        self._stopped = True
        if self._revive is not None:
            self._revive.cancel()
        self._close_listener()

    def _record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> int:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            now = self._clock()
            status = 200
            f = self._failure
            if f is not None and f.until is not None and now >= f.until:
                f = self._failure = None
            if f is not None:
                status = f.status
                if f.calls_left is not None:
                    f.calls_left -= 1
                    if f.calls_left <= 0:
                        self._failure = None
            lowered = {k.lower(): v for k, v in headers.items()}
            self._requests.append(RecordedRequest(method, path, lowered, body, raw, now, status))
        return status

    def _open_listener(self) -> None:
        server = _Server((self.host, self.port), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"stub-{self.name}", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _revive_listener(self) -> None:
        if not self._stopped and self._server is None:
            self._open_listener()

    def __enter__(self) -> StubService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class IntegrationStubs:
    """The order service and the notification service, started and stopped together."""

    def __init__(self, host: str = "127.0.0.1", clock: Callable[[], float] = time.time) -> None:
        self.orders = StubService("orders", host, clock=clock)
        self.notifications = StubService("notifications", host, clock=clock)

    def env(self) -> dict[str, str]:
        """The server settings that point the tracking service at these stubs."""
        return {
            "TRACKING_ORDER_SERVICE_URL": self.orders.url,
            "TRACKING_NOTIFICATION_SERVICE_URL": self.notifications.url,
        }

    def start(self) -> IntegrationStubs:
        self.orders.start()
        try:
            self.notifications.start()
        except BaseException:
            self.orders.stop()
            raise
        return self

    def stop(self) -> None:
        self.orders.stop()
        self.notifications.stop()

    def __enter__(self) -> IntegrationStubs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
