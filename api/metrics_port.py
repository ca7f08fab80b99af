"""Prometheus metrics: what a scrape returns, and the optional listener of their own.

`GET /metrics` on the API's port needs a superadmin token (the figures include the platform's
statistics). `tracking serve --metrics-port N` (or `TRACKING_METRICS_PORT`) also serves them
without a token on a separate listener, bound to `--metrics-host` (`TRACKING_METRICS_HOST`,
loopback by default), for a Prometheus that scrapes from the same host or network. Every API
process opens that port with SO_REUSEPORT, so with `--workers N` any of them answers, each with
every worker's counters (PROMETHEUS_MULTIPROC_DIR) and the engine's figures.

The listener speaks just enough HTTP/1.1 for a scraper: `GET /metrics` (or HEAD), one request per
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from api.observability import render
from engine.client import EngineClient
from engine.dispatcher import Outbox
from engine.domain.errors import TrackingError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 10.0


async def scrape(engine: EngineClient, outbox: Outbox) -> tuple[bytes, str]:
    """The exposition text: this service's counters plus the engine-wide gauges (left out when
    the engine does not answer)."""
    try:
        stats = await engine.stats()
        stats.outbox = await outbox.counts()
        engine_stats: dict[str, Any] | None = msgspec.to_builtins(stats)
    except TrackingError:
        engine_stats = None
    return render(engine_stats)


Scrape = Callable[[], Awaitable[tuple[bytes, str]]]


async def open_listener(host: str, port: int, scrape_now: Scrape) -> asyncio.Server:
    """Serve `GET /metrics` on host:port (shared by the API processes: SO_REUSEPORT)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
            target = rest.partition(b" ")[0]
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = b"405 Method Not Allowed", b"text/plain", b"GET only\n"
            elif path != b"/metrics":
                status, ctype, body = b"404 Not Found", b"text/plain", b"try /metrics\n"
            else:
                data, content_type = await scrape_now()
                status, ctype, body = b"200 OK", content_type.encode(), data
            writer.write(
                b"HTTP/1.1 %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, ctype, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        except Exception:
            log.exception("metrics scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(
        handle, host, port, reuse_address=True, reuse_port=True, limit=MAX_REQUEST_BYTES
    )
