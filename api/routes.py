"""The REST endpoints of API.md (plus history and dead letters)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from api import asyncapi as asyncapi_doc
from api.auth import (
    CurrentPrincipal,
    MaybeReader,
    Role,
    TokenVerifier,
    require_roles,
)
from api.limits import Limits, client_ip
from api.metrics_port import scrape
from api.models import (
    BatchRequest,
    BatchResponse,
    DeadLetters,
    ErrorBody,
    Health,
    History,
    ShareLink,
    ShareRequest,
    StartRequest,
    Stats,
    TrackingView,
    UpdateRequest,
)
from api.observability import event_log
from api.order_check import OrderCheck
from api.updates import apply_batch, apply_update
from engine.client import EngineClient
from engine.dispatcher import Outbox
from engine.domain.errors import Forbidden, NotFound, TrackingError
from engine.domain.status import Status
from engine.protocol import (
    ID_MAX,
    BatchedFix,
    LocationReport,
    PlatformStats,
    Resumed,
    batch_answer,
    decode_view,
)
from engine.settings import Settings

router = APIRouter()

HEALTH_TIMEOUT_S = 5.0


def _engine(request: Request) -> EngineClient:
    engine: EngineClient = request.app.state.engine
    return engine


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


def _json(body: bytes, status: int = 200) -> Response:
    # The engine already encoded the view; skip re-validating and re-encoding it per request.
    return Response(content=body, status_code=status, media_type="application/json")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


TrackingId = Annotated[str, Path(description="The tracking id (TRK-...)")]


def _check_id(tracking_id: str) -> None:
    if len(tracking_id) > ID_MAX:
        raise NotFound("Tracking session not found")


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


@router.post(
    "/tracking/start", status_code=201, response_model=TrackingView,
    responses={
        **_errors(401, 403, 409, 413, 422, 429, 503),
        200: {"model": TrackingView,
              "description": "The order's live session, started before by the same rider"},
    },
)
async def start_tracking(
    body: StartRequest, principal: CurrentPrincipal, request: Request
) -> Response:
    """Start tracking an order; the rider named in the body or a superadmin.

    A start repeated by the rider of the order's live session answers that session (200), so
    a retried start is safe; a start by anyone else for an order with a live session is 409."""
    _limits(request).check("start", principal, client_ip(request.scope))
    if not principal.is_admin and not (
        principal.role is Role.RIDER and principal.sub == body.rider_id
    ):
        raise Forbidden("Only the rider named in the body or a superadmin may start tracking")
    orders: OrderCheck | None = request.app.state.order_check
    if orders is not None:
        await orders.check(body.order_id, body.rider_id)
    started = await _engine(request).start(
        body.order_id, body.rider_id, body.dropoff_lat, body.dropoff_lng, body.phone
    )
    if isinstance(started, Resumed):
        return _json(started.view, 200)
    event_log.info("tracking started", extra={"fields": {
        "request_id": getattr(request.state, "request_id", None),
        "order_id": body.order_id, "rider_id": body.rider_id,
        "tracking_id": decode_view(started).tracking_id,
        "principal": f"{principal.role}:{principal.sub}",
    }})
    return _json(started, 201)


@router.post(
    "/tracking/update/{tracking_id}", response_model=TrackingView,
    responses=_errors(401, 403, 404, 409, 410, 413, 422, 429),
)
async def update_tracking(
    tracking_id: TrackingId, body: UpdateRequest, principal: CurrentPrincipal, request: Request
) -> Response:
    """Report a location (and optionally the next status); the session's rider or a superadmin.

    Served by `api.updates.LeanUpdates` in front of the framework; this declaration is its
    OpenAPI description, and serves the same updates when that front door is not installed."""
    _limits(request).check("update", principal, client_ip(request.scope))
    report = LocationReport(body.lat, body.lng, body.status, body.recorded_at, body.accuracy_m)
    view = await apply_update(_engine(request), tracking_id, report, principal, "http")
    return _json(view)


@router.post(
    "/tracking/update/{tracking_id}/batch", response_model=BatchResponse,
    responses=_errors(401, 403, 404, 409, 410, 413, 422, 429),
)
async def update_tracking_batch(
    tracking_id: TrackingId, body: BatchRequest, principal: CurrentPrincipal, request: Request
) -> Response:
    """Fixes a phone buffered while offline, oldest first, as one engine command; the session's
    rider or a superadmin. Each fix is judged as a single update's would be; the answer says
    which were kept. A status step the session does not allow refuses the whole batch (409,
    naming the fix) and changes nothing."""
    settings: Settings = request.app.state.settings
    limits, ip = _limits(request), client_ip(request.scope)
    for _ in body.fixes[: settings.batch_max_fixes]:  # each fix is an update to the limits
        limits.check("update", principal, ip)
    fixes = [BatchedFix(f.lat, f.lng, f.recorded_at, f.status, f.accuracy_m) for f in body.fixes]
    answer = await apply_batch(
        _engine(request), tracking_id, fixes, principal, "http", settings.batch_max_fixes
    )
    return _json(batch_answer(answer))


@router.post(
    "/tracking/{tracking_id}/share", status_code=201, response_model=ShareLink,
    responses=_errors(401, 403, 404, 410, 422),
)
async def share_tracking(
    tracking_id: TrackingId, principal: CurrentPrincipal, request: Request,
    body: ShareRequest | None = None,
) -> dict[str, Any]:
    """A link to the tracking page for people without an account: its token opens only this
    session's view, history and WebSocket, read-only, until it expires (by default when the
    session does). The session's rider, a merchant or a superadmin. Links are revoked by
    expiry only."""
    _check_id(tracking_id)
    if principal.role not in (Role.RIDER, Role.MERCHANT, Role.SUPERADMIN):
        raise Forbidden("Only the session's rider, a merchant or a superadmin may share it")
    view = decode_view(await _engine(request).get(tracking_id))
    if principal.role is Role.RIDER and principal.sub != view.rider_id:
        raise Forbidden("Only the session's rider, a merchant or a superadmin may share it")
    settings: Settings = request.app.state.settings
    end = view.started_at + settings.session_ttl_s
    if view.status is Status.DELIVERED:  # nothing is accepted after it: updated_at is when
        end = min(end, view.updated_at + settings.delivered_ttl_s)
    if body is not None and body.ttl_s is not None:
        end = min(end, time.time() + body.ttl_s)
    tokens: TokenVerifier = request.app.state.tokens
    token = tokens.share(tracking_id, end)
    path = f"/track/{tracking_id}?share={token}"
    event_log.info("tracking shared", extra={"fields": {
        "tracking_id": tracking_id, "expires_at": int(end),
        "principal": f"{principal.role}:{principal.sub}",
    }})
    return {
        "tracking_id": tracking_id, "url": str(request.base_url).rstrip("/") + path,
        "path": path, "token": token, "expires_at": int(end),
    }


@router.get(
    "/tracking/rider/{rider_id}", response_model=TrackingView,
    responses=_errors(401, 403, 404),
)
async def rider_tracking(
    rider_id: Annotated[str, Path(description="The rider id")],
    principal: CurrentPrincipal,
    request: Request,
) -> Response:
    """The rider's newest live session; that rider, a merchant or a superadmin."""
    allowed = principal.role in (Role.MERCHANT, Role.SUPERADMIN) or (
        principal.role is Role.RIDER and principal.sub == rider_id
    )
    if not allowed:
        raise Forbidden("Only that rider, a merchant or a superadmin may read this")
    if len(rider_id) > ID_MAX:
        raise NotFound(f"Rider has no live tracking session (ids are at most {ID_MAX} characters)")
    return _json(await _engine(request).rider_session(rider_id))


@router.get(
    "/tracking/{tracking_id}", response_model=TrackingView,
    responses=_errors(401, 403, 404, 410),
)
async def get_tracking(
    tracking_id: TrackingId, request: Request, _reader: MaybeReader,
    presence: Annotated[bool, Query(
        description="Also `watchers`: the sockets watching this session, in every API process"
    )] = False,
) -> Response:
    """The public view of one session (no token needed; a token sent must be valid: a user's,
    or this session's share link token)."""
    _check_id(tracking_id)
    return _json(await _engine(request).get(tracking_id, presence))


@router.get(
    "/tracking/{tracking_id}/history", response_model=History,
    responses=_errors(401, 403, 404, 410, 422),
)
async def tracking_history(
    tracking_id: TrackingId,
    request: Request,
    _reader: MaybeReader,
    since_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> Response:
    """Accepted locations and status changes after `since_seq`, oldest first, paged."""
    _check_id(tracking_id)
    items = await _engine(request).history(tracking_id, since_seq, limit + 1)
    more = len(items) > limit
    items = items[:limit]
    page = {
        "tracking_id": tracking_id,
        "items": items,
        "next_since_seq": items[-1].seq if more and items else None,
    }
    return _json(msgspec.json.encode(page))


@router.get(
    "/stats/tracking", response_model=Stats, responses=_errors(401, 403),
    dependencies=[require_roles(Role.SUPERADMIN)],
)
async def stats(request: Request) -> Response:
    """Platform statistics over live sessions; superadmin only."""
    return _json(msgspec.json.encode(await _platform_stats(request)))


async def _platform_stats(request: Request) -> PlatformStats:
    out = await _engine(request).stats()
    out.outbox = await _outbox(request).counts()
    return out


@router.get(
    "/outbox/dead-letters", response_model=DeadLetters, responses=_errors(401, 403),
    dependencies=[require_roles(Role.SUPERADMIN)],
)
async def dead_letters(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Calls to the order/notification services that were refused (4xx) or ran out of
    attempts, newest first; superadmin only."""
    return {"items": await _outbox(request).dead_letters(limit)}


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi(request: Request) -> Response:
    """The AsyncAPI document of the WebSocket channels (the counterpart of /openapi.json)."""
    doc: bytes | None = getattr(request.app.state, "asyncapi", None)
    if doc is None:
        doc = request.app.state.asyncapi = msgspec.json.encode(
            asyncapi_doc.build(request.app.version)
        )
    return _json(doc)


@router.get(
    "/metrics", include_in_schema=False, dependencies=[require_roles(Role.SUPERADMIN)]
)
async def metrics(request: Request) -> Response:
    """Prometheus exposition: this service's counters plus engine-wide gauges; superadmin only
    (or without a token on the metrics port, `api.metrics_port`)."""
    body, content_type = await scrape(_engine(request), _outbox(request))
    return Response(body, media_type=content_type)


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request, response: Response) -> Any:
    """200 while every shard of the engine answers and can write its store; 503 otherwise,
    with the reason."""
    engine = _engine(request)
    base = {"engine": request.app.state.settings.engine, "shards": engine.n_shards}
    try:
        await asyncio.wait_for(engine.ping(writable=True), HEALTH_TIMEOUT_S)
    except TrackingError as e:
        return JSONResponse({"status": "unavailable", "detail": e.detail, **base}, 503)
    except TimeoutError:
        detail = f"the engine did not answer within {HEALTH_TIMEOUT_S:g} s"
        return JSONResponse({"status": "unavailable", "detail": detail, **base}, 503)
    return {"status": "ok", **base}
