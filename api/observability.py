"""Prometheus metrics, structured one-line JSON logs and the request middleware.

Counters and histograms are per API process; with several workers `tracking serve` points
PROMETHEUS_MULTIPROC_DIR at a shared directory and `/metrics` merges them. Engine-wide figures
(live sessions, sockets in every process, outbox depth) are read from the engine at scrape time,
once, by whichever process answers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

UPDATES = Counter(
    "tracking_updates_total", "Location/status updates by outcome", ["channel", "outcome"]
)
FANNED_OUT = Counter("tracking_messages_fanned_out_total", "Messages offered to local sockets")
QUEUE_DROPS = Counter(
    "tracking_ws_queue_drops_total", "Location updates dropped from full per-socket queues"
)
SLOW_CLOSES = Counter("tracking_ws_slow_closes_total", "Sockets closed for being too slow")
EVENT_LATENCY = Histogram(
    "tracking_update_to_gateway_seconds",
    "From acceptance by the shard to fan-out at this gateway",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RAY_CALL = Histogram(
    "tracking_engine_call_seconds", "Engine (Ray) call latency per batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
)
BATCH_SIZE = Histogram(
    "tracking_engine_batch_size", "Commands per engine call",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
HTTP_REQUESTS = Counter(
    "tracking_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "tracking_http_request_seconds", "HTTP request duration", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


GC_PAUSE = Histogram(
    "tracking_gc_pause_seconds", "Pauses of this API process's cyclic garbage collector",
    ["generation"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
LOOP_LAG = Histogram(
    "tracking_event_loop_lag_seconds",
    "How late this API process's event loop ran a timer (every 100 ms): a stall shows here",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STALL_LOG_S = 0.1
_gc_started: list[float] = []
stall_log = logging.getLogger("tracking.stall")


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        pause = time.perf_counter() - _gc_started[0]
        GC_PAUSE.labels(str(info.get("generation", -1))).observe(pause)
        if pause > STALL_LOG_S:
            stall_log.warning("garbage collection paused the process", extra={"fields": {
                "generation": info.get("generation"), "pause_ms": round(pause * 1000, 1),
                "collected": info.get("collected"),
            }})


def watch_gc() -> None:
    """Time every collection of the cyclic garbage collector (once per process)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


async def watch_loop_lag(interval_s: float = 0.1) -> None:
    """Measure how late the event loop runs a timer, forever; log stalls past STALL_LOG_S."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - t0 - interval_s)
        LOOP_LAG.observe(lag)
        if lag > STALL_LOG_S:
            stall_log.warning("the event loop stalled", extra={"fields": {
                "lag_ms": round(lag * 1000, 1),
            }})


def observe_batch(shard: int, size: int, seconds: float) -> None:
    RAY_CALL.observe(seconds)
    BATCH_SIZE.observe(size)


def render(engine_stats: dict[str, Any] | None) -> tuple[bytes, str]:
    """The exposition text: this process's (or all workers') metrics plus engine gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    if engine_stats is not None:
        extra = CollectorRegistry()
        extra.register(_EngineCollector(engine_stats))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


class _EngineCollector:
    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Any:
        s = self.stats
        live = GaugeMetricFamily("tracking_live_sessions", "Live sessions by status",
                                 labels=["status"])
        for status, n in s["status_distribution"].items():
            live.add_metric([status], n)
        yield live
        yield GaugeMetricFamily("tracking_websocket_connections",
                                "WebSocket connections in every API process",
                                value=s["total_websocket_connections"])
        yield GaugeMetricFamily("tracking_api_processes", "API processes polling the engine",
                                value=s.get("api_processes", 0))
        outbox = GaugeMetricFamily("tracking_outbox_calls", "Outbox calls by state",
                                   labels=["state"])
        for state, n in (s.get("outbox") or {}).items():
            if state != "retries":
                outbox.add_metric([state], n)
        yield outbox
        yield GaugeMetricFamily("tracking_outbox_retries", "Retried outbox deliveries",
                                value=(s.get("outbox") or {}).get("retries", 0))
        yield from _quality(s)


def _quality(s: dict[str, Any]) -> Any:
    """Fix filtering, milestones and presence, engine-wide (counts since the shards started)."""
    fixes = s.get("fixes") or {}
    dropped = CounterMetricFamily("tracking_fixes_filtered", "Fixes dropped by the filter",
                                  labels=["reason"])
    for reason, n in (fixes.get("filtered") or {}).items():
        dropped.add_metric([reason], n)
    yield dropped
    yield CounterMetricFamily("tracking_fixes_late", "Fixes kept into the history only (late)",
                              value=fixes.get("late", 0))
    fired = CounterMetricFamily("tracking_milestones", "approaching / arrived fired",
                                labels=["milestone"])
    for name, n in (fixes.get("milestones") or {}).items():
        fired.add_metric([name], n)
    yield fired
    presence = s.get("presence") or {}
    yield GaugeMetricFamily("tracking_watched_sessions", "Sessions with a watching socket",
                            value=presence.get("watched_sessions", 0))
    yield GaugeMetricFamily("tracking_max_watchers_per_session",
                            "Sockets watching the most watched session",
                            value=presence.get("max_per_session", 0))


# -- logs ---------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object a line; extra fields passed as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """A human line for a terminal, with the same fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket connect with its URL, `?token=...` included: redact it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "token=" in text:
            record.msg = _TOKEN_IN_URL.sub(r"\1[redacted]", text)
            record.args = None
        return True


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for the service: `fmt` is 'json', 'text' or 'auto' (text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per WebSocket handshake only when debugging (api/wsproto.py), as access logs.
    logging.getLogger("tracking.ws.connections").setLevel(
        logging.DEBUG if level.lower() in ("debug", "trace") else logging.WARNING
    )


request_log = logging.getLogger("tracking.request")
event_log = logging.getLogger("tracking.event")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestLogMiddleware:
    """Logs each HTTP request in one line (request id, tracking id, principal, outcome,
    duration) and counts it. Pure ASGI: no per-request task or body buffering."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        status = 500
        state = scope.setdefault("state", {})
        state["request_id"] = rid

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            dt = time.perf_counter() - t0
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], name, str(status)).inc()
            HTTP_LATENCY.labels(name).observe(dt)
            if request_log.isEnabledFor(logging.INFO):
                principal = state.get("principal")
                fields = {
                    "request_id": rid,
                    "method": scope["method"],
                    "route": name,
                    "tracking_id": (scope.get("path_params") or {}).get("tracking_id"),
                    "principal": f"{principal.role}:{principal.sub}" if principal else None,
                    "status": status,
                    "outcome": "ok" if status < 400 else state.get("error_code", "error"),
                    "duration_ms": round(dt * 1000, 2),
                }
                request_log.info("request", extra={"fields": fields})
