"""The WebSocket wire under uvicorn: prepared frames written straight to the socket.

Every watcher of a session receives the same bytes, so the gateway builds each event's frame once
per API process (`prepare_text`: the header and the payload; server frames are not masked) and
writes that same frame to every socket, as gorilla/websocket's PreparedMessage and uWebSockets'
publish do: no task, future or await per socket per message, and no per-socket copy of the frame
building. `TrackingWebSocketProtocol` is uvicorn's websockets-sansio protocol (the one its "auto"
setting picks) with one addition: the ASGI scope carries the connection itself under
`scope["extensions"][EXTENSION]`, a `FrameSink` that takes prepared frames. Everything else
(handshake, reading, pings, the closing handshake) is uvicorn's. Permessage-deflate is off
(`tracking serve` sets `ws_per_message_deflate=False`): a compressed frame could not be shared.

A socket's backpressure is its transport's write buffer: `ready` is False from the moment the
buffer passes its high-water mark (`pause_writing`) until it drains below the low-water mark
(`resume_writing`), when the sink calls back so the gateway can flush what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

EXTENSION = "tracking.prepared_frames"
# Per-socket write buffer marks: past HIGH the socket is slow (its messages are held, and
# location updates conflated); it is writable again below LOW.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024

_TEXT_FIN = 0x81


def prepare_text(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented text frame (RFC 6455 5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, n) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, n) + payload


class FrameSink(Protocol):
    """Where a socket's prepared frames go (see the module docstring)."""

    @property
    def ready(self) -> bool:
        """Open, and below the write buffer's high-water mark."""

    @property
    def open(self) -> bool: ...

    def write(self, frame: bytes) -> None:
        """Write a prepared frame now (dropped when the socket is closed)."""

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` (once) when the buffer drains below its low-water mark."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake now; the app's receive() then ends."""


# uvicorn logs every WebSocket handshake at INFO (thousands a second in a connection storm);
# they go to this logger, shown at `--log-level debug` only, like an access log.
CONNECTION_LOG = "tracking.ws.connections"


class TrackingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol that is also a `FrameSink` (see the module doc)."""

    _paused = False
    _drained: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = logging.getLogger(CONNECTION_LOG)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # a handshake that was accepted by the protocol
            scope["extensions"][EXTENSION] = self

    def pause_writing(self) -> None:
        self._paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        super().resume_writing()
        self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._notify()  # a watcher waiting for a drain learns the socket is gone
        self._done_with_transport = True
        self._release()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._done_with_app = True
        self._release()

    _done_with_transport = False
    _done_with_app = False

    def _release(self) -> None:
        # Once the peer is gone and the app is done, break the reference cycles a connection
        # leaves (this protocol <-> its transport, the websockets parser's generator <-> its
        # connection), so reference counting frees it at once: with 10,000 sockets open, every
        # object left to the cyclic collector makes its full passes longer (api/gcpolicy.py).
        if not (self._done_with_transport and self._done_with_app):
            return
        with contextlib.suppress(Exception):
            self.conn.parser.close()
        for name in ("conn", "scope", "queue", "request", "response"):
            self.__dict__.pop(name, None)
        self._released = True

    def _notify(self) -> None:
        callback, self._drained = self._drained, None
        if callback is not None:
            callback()

    # -- FrameSink --------------------------------------------------------------------------------
    _released = False

    @property
    def open(self) -> bool:
        return (
            self.handshake_complete and not self.close_sent and not self.disconnected
            and not self._released and not self.transport.is_closing()
        )

    @property
    def ready(self) -> bool:
        return not self._paused and self.open

    def write(self, frame: bytes) -> None:
        if self.open:
            self.transport.write(frame)

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drained = callback

    def close(self, code: int, reason: str) -> None:
        # As uvicorn's send() does for a `websocket.close` message, without a coroutine.
        if not self.open:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


def payload_of(frame: bytes) -> bytes:
    """The payload of a frame made by `prepare_text`."""
    n = frame[1]
    return frame[2 + (2 if n == 126 else 8 if n == 127 else 0):]


class AsgiFrameSink:
    """A `FrameSink` over plain ASGI messages, for servers without `TrackingWebSocketProtocol`
    (another ASGI server, or uvicorn's other WebSocket implementations): one writer task per
    socket sends the payloads, then the close, in order. Correct, not fast; `tracking serve`
    never uses it."""

    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self._send_text = send_text
        self._send_close = send_close
        self._queue: asyncio.Queue[bytes | tuple[int, str]] = asyncio.Queue()
        self._open = True
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def open(self) -> bool:
        return self._open

    @property
    def ready(self) -> bool:
        return self._open

    def write(self, frame: bytes) -> None:
        if self._open:
            self._queue.put_nowait(frame)

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        return None  # never paused: the writer task waits instead

    def close(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            self._queue.put_nowait((code, reason))

    async def _run(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, tuple):
                    await self._send_close(*item)
                    return
                await self._send_text(payload_of(item).decode())
        except Exception:  # the peer went away
            self._open = False

    def stop(self) -> None:
        self._open = False
        self._task.cancel()


__all__ = ["EXTENSION", "AsgiFrameSink", "FrameSink", "TrackingWebSocketProtocol", "prepare_text"]
