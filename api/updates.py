"""The rider's location update, the service's hot path, over HTTP and over WebSocket.

`apply_update` is the one place an update is authorised, sent to the engine and counted, for
both channels. Over HTTP, `LeanUpdates` serves `POST /tracking/update/{id}` in front of the web
framework: from the request's bytes to the engine command in one parse (msgspec, straight into
`engine.protocol.LocationReport`, the same type a WebSocket report is read into), a token
verified once and remembered until it expires (`api.auth.TokenVerifier`), and the view's JSON
the shard encoded sent back as is. No dependency solving, no thread hop, no per-request model
objects. The route stays in OpenAPI with its models and errors (`api.routes.update_tracking`
declares it, and serves the same updates when this front door is not installed); answers and
error bodies are the same either way, which the e2e tests check on the real server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

import msgspec
from starlette.websockets import WebSocket

from api.auth import Principal, Role, TokenVerifier
from api.errors import http_status
from api.limits import Limits, client_ip, retry_after
from api.observability import HTTP_REQUESTS, UPDATES, event_log
from engine.client import EngineClient
from engine.domain.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    TooLarge,
    TrackingError,
    Unauthenticated,
    Unavailable,
)
from engine.protocol import ID_MAX, BatchAnswer, BatchedFix, BatchFix, LocationReport

log = logging.getLogger(__name__)

PATH_PREFIX: Final = "/tracking/update/"
WATCH_PREFIX: Final = "/ws/tracking/"
ROUTE: Final = "/tracking/update/{tracking_id}"
_report = msgspec.json.Decoder(LocationReport)
_error_body = msgspec.json.Encoder()


class ErrorBody(msgspec.Struct):
    detail: str

_ACCEPTED = {"http": UPDATES.labels("http", "accepted"), "ws": UPDATES.labels("ws", "accepted")}


WatchHandler = Callable[[WebSocket, str], Awaitable[None]]


@dataclass
class Live:
    """What the front door needs once the app has started (set by its lifespan)."""

    engine: EngineClient | None = None


async def apply_update(
    engine: EngineClient, tracking_id: str, report: LocationReport, principal: Principal,
    channel: str,
) -> bytes:
    """Authorise and apply a rider's report; the view's JSON as the shard encoded it."""
    if len(tracking_id) > ID_MAX:
        raise NotFound("Tracking session not found")
    if not principal.is_admin and principal.role is not Role.RIDER:
        raise Forbidden("Only the session's rider or a superadmin may update it")
    rider = None if principal.is_admin else principal.sub
    try:
        view = await engine.update(
            tracking_id, report.lat, report.lng, report.status, rider, report.recorded_at,
            report.accuracy_m,
        )
    except TrackingError as e:
        UPDATES.labels(channel, e.code).inc()
        raise
    _ACCEPTED[channel].inc()
    if report.status is not None:
        log_status(tracking_id, report.status.value, principal, channel)
    return view


async def apply_batch(
    engine: EngineClient, tracking_id: str, fixes: Sequence[BatchedFix], principal: Principal,
    channel: str, limit: int,
) -> BatchAnswer:
    """Authorise and apply a phone's buffered fixes (oldest first) as one engine command."""
    if len(tracking_id) > ID_MAX:
        raise NotFound("Tracking session not found")
    if not principal.is_admin and principal.role is not Role.RIDER:
        raise Forbidden("Only the session's rider or a superadmin may update it")
    if not fixes:
        raise InvalidInput("fixes: a batch needs at least one fix")
    if len(fixes) > limit:
        raise TooLarge(f"a batch takes at most {limit} fixes (got {len(fixes)}): send the rest "
                       "in another, oldest first")  # fmt: skip
    rider = None if principal.is_admin else principal.sub
    cmd = [BatchFix(f.lat, f.lng, f.status, f.recorded_at, f.accuracy_m) for f in fixes]
    try:
        answer = await engine.update_batch(tracking_id, cmd, rider)
    except TrackingError as e:
        UPDATES.labels(channel, e.code).inc()
        raise
    UPDATES.labels(channel, "batch").inc()
    for f in fixes:
        if f.status is not None:
            log_status(tracking_id, f.status.value, principal, channel)
    return answer


def log_status(tracking_id: str, status: str, principal: Principal, channel: str) -> None:
    """A state-change log line: a status reported with an accepted update."""
    event_log.info("status reported", extra={"fields": {
        "tracking_id": tracking_id, "status": status, "channel": channel,
        "principal": f"{principal.role}:{principal.sub}",
    }})


def read_report(body: bytes) -> LocationReport:
    """The request body as a report; InvalidInput names the field and what is wrong."""
    try:
        return _report.decode(body)
    except msgspec.ValidationError as e:
        text, _, where = str(e).partition(" - at `$")
        field = where.rstrip("`").lstrip(".")
        raise InvalidInput(f"{field}: {text.replace('`', '')}" if field else text) from None
    except msgspec.DecodeError:
        raise InvalidInput("request body is not valid JSON") from None


# -- the HTTP front door (pure ASGI) -----------------------------------------------------------

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_AUTH_HEADERS: Final = [*_JSON_HEADERS, (b"www-authenticate", b"Bearer")]
_ROUTE_OK: Final = HTTP_REQUESTS.labels("POST", ROUTE, "200")


class _Refused(Exception):
    def __init__(self, error: TrackingError) -> None:
        self.error = error


class LeanUpdates:
    """Serves `POST /tracking/update/{id}` before the framework, and hands a watch socket
    (`/ws/tracking/{id}`) straight to its handler; passes everything else on."""

    def __init__(
        self, app: ASGIApp, live: Live, tokens: TokenVerifier, max_body_bytes: int,
        limits: Limits | None = None, watch: WatchHandler | None = None,
    ) -> None:
        self.app = app
        self.live = live
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        engine = self.live.engine
        if (
            scope.get("type") == "websocket" and self.watch is not None and engine is not None
            and isinstance(path, str) and path.startswith(WATCH_PREFIX)
            and "/" not in path[len(WATCH_PREFIX):]
        ):
            # The route FastAPI would pick, without its routing and dependency solving (a third
            # of the API process's time per connection in a storm, `loadtests.storm`). The
            # handler reads the app's state through the scope, as under the framework.
            scope["app"] = self.app
            await self.watch(WebSocket(scope, receive, send), path[len(WATCH_PREFIX):])
            return
        if (
            scope.get("type") != "http" or scope.get("method") != "POST"
            or not isinstance(path, str) or not path.startswith(PATH_PREFIX)
            or "/" in path[len(PATH_PREFIX):] or engine is None
        ):
            await self.app(scope, receive, send)
            return
        tracking_id = path[len(PATH_PREFIX):]
        try:
            principal, body = await self._read(scope, receive)
            view = await apply_update(engine, tracking_id, read_report(body), principal, "http")
        except _Refused as r:
            await self._refuse(send, r.error)
            return
        except TrackingError as e:
            await self._refuse(send, e)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            *_JSON_HEADERS, (b"content-length", b"%d" % len(view)),
        ]})
        await send({"type": "http.response.body", "body": view})
        _ROUTE_OK.inc()

    async def _read(self, scope: Scope, receive: Receive) -> tuple[Principal, bytes]:
        token: bytes | None = None
        json_body = False
        length = 0
        for name, value in cast(list[tuple[bytes, bytes]], scope["headers"]):
            if name == b"authorization":
                token = value
            elif name == b"content-type":
                kind = value.split(b";", 1)[0].strip().lower()
                json_body = kind == b"application/json" or kind.endswith(b"+json")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        limits = self.limits
        if limits is not None:
            limits.check_ip("update", client_ip(scope))
        # As the framework does: the token first (401), then the body (413, 422).
        if token is None:
            raise _Refused(Unauthenticated(
                "A bearer token is required (Authorization: Bearer <token>)"))
        scheme, _, credentials = token.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _Refused(Unauthenticated("Authorization header must be 'Bearer <token>'"))
        principal = self.tokens.verify(credentials.strip())
        if limits is not None:
            limits.check_principal("update", principal)
        if length > self.max_body_bytes:
            raise _Refused(_too_large(self.max_body_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                raise _Refused(Unavailable("the client went away"))
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(_too_large(self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        if not json_body:
            raise _Refused(InvalidInput(
                "the body must be JSON, sent with Content-Type: application/json"))
        return principal, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, send: Send, error: TrackingError) -> None:
        status = http_status(error)
        body = _error_body.encode(ErrorBody(error.detail))
        headers = _AUTH_HEADERS if isinstance(error, Unauthenticated) else _JSON_HEADERS
        if isinstance(error, RateLimited):
            headers = [*_JSON_HEADERS, (b"retry-after", retry_after(error).encode())]
        await send({"type": "http.response.start", "status": status, "headers": [
            *headers, (b"content-length", b"%d" % len(body)),
        ]})
        await send({"type": "http.response.body", "body": body})
        HTTP_REQUESTS.labels("POST", ROUTE, str(status)).inc()


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body too large (limit {limit} bytes)")
