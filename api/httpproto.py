"""HTTP under uvicorn, each response in one write.

uvicorn's httptools protocol writes a response's status line and headers as soon as the app
starts the response, and the body with a second write: two sends, and two TCP segments, for every
answer (TCP_NODELAY is on), which doubles the packets the client and the kernel handle for a
location update's answer of a few hundred bytes (seen with `strace -e trace=write,sendto`). On the
API process's own CPU the difference measured within noise. `TrackingHttpProtocol` is uvicorn's
protocol whose request cycles keep the head until the first body message and send both together;
everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _Held:
    """Stands in for the transport while uvicorn writes a response: keeps the bytes (and a
    close) for one write after."""

    __slots__ = ("chunks", "closing", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing or self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """A request cycle that sends a response's head with its first body message."""

    _head: list[bytes] | None = None

    async def send(self, message: ASGISendEvent) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            self._head = (await self._capture(message)).chunks
            return
        head = self._head
        if head is None or kind != "http.response.body":
            await super().send(message)
            return
        self._head = None
        held = await self._capture(message)
        real = held.transport
        if not real.is_closing():
            real.write(b"".join(head + held.chunks))
        if held.closing:
            real.close()

    async def _capture(self, message: ASGISendEvent) -> _Held:
        """uvicorn's own send of `message`, with what it writes (or a close) kept, not sent."""
        real = self.transport
        held = _Held(real)
        self.transport = held  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
        return held


class TrackingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose responses go out in one write (module docstring)."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle's task has been created but has not run: `send` is looked up when it does.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = OneWriteCycle
