"""What one client may cost an API process: rate limits, a socket cap and a body limit.

Rate limits are token buckets, one per (action, principal) and per (action, client address), for
the three actions that cost the service most: starting a session, reporting a location (HTTP or
WebSocket) and opening a WebSocket. Each bucket holds `count` tokens and refills at
`count / period_s` a second (`engine.settings.Rate`), so a burst of `count` passes and a steady
flow above the rate is refused with `RateLimited` (HTTP 429 with `Retry-After`; on a WebSocket
an `error` message, then close 1013). Superadmins are not limited per principal (operators and
their tools); every address is. The buckets live in each API process: with N processes behind
one port a client gets up to N times the rate, which is the bound that matters to each process.

The client address is the one uvicorn reports: the peer, or the `X-Forwarded-For` of a proxy
uvicorn trusts (`--forwarded-allow-ips`, loopback by default).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Final

import msgspec
from fastapi import HTTPException

from api.auth import Principal
from engine.domain.errors import RateLimited
from engine.settings import Rate, Settings

ACTIONS: Final = ("start", "update", "connect")
_NOUN = {"start": "session starts", "update": "location updates", "connect": "WebSocket connects"}
MAX_KEYS = 100_000  # buckets kept per limit; a forgotten bucket is a full one


class TokenBuckets:
    """Token buckets by key for one rate (see the module docstring)."""

    __slots__ = ("_buckets", "capacity", "clock", "max_keys", "refill_per_s")

    def __init__(
        self, rate: Rate, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.capacity = rate.count
        self.refill_per_s = rate.count / rate.period_s
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, when counted]

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 when there was one, else the seconds until there is."""
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget(now)
            self._buckets[key] = [self.capacity - 1.0, now]
            return 0.0
        tokens = min(self.capacity, b[0] + (now - b[1]) * self.refill_per_s)
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return 0.0
        b[0] = tokens
        return (1.0 - tokens) / self.refill_per_s

    def _forget(self, now: float) -> None:
        """Drop the buckets that refilled (as good as new); if that is not enough, the oldest."""
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.refill_per_s >= self.capacity]  # fmt: skip
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            for k in list(self._buckets)[: self.max_keys // 2]:
                del self._buckets[k]


class Limits:
    """The rate limits of one API process, from settings (`TRACKING_LIMIT_*`)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_principal: dict[str, TokenBuckets] = {}
        self._by_ip: dict[str, TokenBuckets] = {}
        for action in ACTIONS:
            rate = settings.rate(action, "principal")
            if rate is not None:
                self._by_principal[action] = TokenBuckets(rate, clock)
            rate = settings.rate(action, "ip")
            if rate is not None:
                self._by_ip[action] = TokenBuckets(rate, clock)

    def check_ip(self, action: str, ip: str | None) -> None:
        """Count one `action` from address `ip`; RateLimited past its limit."""
        buckets = self._by_ip.get(action)
        if buckets is None or ip is None:
            return
        wait = buckets.take(ip)
        if wait:
            raise _limited(action, "from this address", wait)

    def check_principal(self, action: str, principal: Principal | None) -> None:
        """Count one `action` by `principal` (superadmins are not limited)."""
        buckets = self._by_principal.get(action)
        if buckets is None or principal is None or principal.is_admin:
            return
        wait = buckets.take(f"{principal.role}:{principal.sub}")
        if wait:
            raise _limited(action, "for this token's subject", wait)

    def check(self, action: str, principal: Principal | None, ip: str | None) -> None:
        self.check_ip(action, ip)
        self.check_principal(action, principal)


def _limited(action: str, whom: str, wait_s: float) -> RateLimited:
    retry = max(1, math.ceil(wait_s))
    return RateLimited(f"too many {_NOUN[action]} {whom}; retry in {retry} s", retry)


def retry_after(err: RateLimited) -> str:
    """The `Retry-After` header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(err.retry_after_s)))


def client_ip(scope: MutableMapping[str, object]) -> str | None:
    """The client's address as uvicorn reports it (None when unknown)."""
    client = scope.get("client")
    if isinstance(client, tuple | list) and client:
        host = client[0]
        return host if isinstance(host, str) else None
    return None


# -- the request body limit (every route but the update, which `api.updates` limits itself) ----

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_encode = msgspec.json.Encoder()


def too_large_detail(limit: int) -> str:
    return f"request body too large (limit {limit} bytes)"


class BodyLimit:
    """Refuses request bodies over `max_body_bytes` with 413 and a JSON `detail`: at once when
    Content-Length says so, else as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        headers = scope.get("headers")
        assert isinstance(headers, list)
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                body = _encode.encode({"detail": too_large_detail(limit)})
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)), (b"connection", b"close"),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            chunk = message.get("body")
            if isinstance(chunk, bytes):
                seen += len(chunk)
                if seen > limit:
                    # FastAPI passes its own HTTPException through from reading the body; the
                    # app's handler answers it as JSON.
                    raise HTTPException(413, too_large_detail(limit))
            return message

        await self.app(scope, counted, send)
