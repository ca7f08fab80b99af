"""The WebSocket endpoints: `/ws/tracking/{id}` (watch and report) and `/ws/ops` (ops feed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api.auth import Principal, Role, TokenVerifier
from api.errors import POLICY_VIOLATION, TRY_AGAIN_LATER, close_code
from api.gateway import Gateway
from api.limits import Limits
from api.observability import UPDATES
from api.updates import apply_batch, apply_update
from api.wsproto import EXTENSION, AsgiFrameSink, FrameSink, prepare_text
from engine.client import EngineClient
from engine.domain.errors import Forbidden, InvalidInput, RateLimited, TrackingError
from engine.protocol import (
    FILTERED_MARK,
    ID_MAX,
    PONG,
    BadMessage,
    ClientPing,
    ReportBatch,
    ReportLocation,
    batch_result,
    error,
    fix_filtered,
    ops_snapshot,
    read_client_message,
)

log = logging.getLogger(__name__)
router = APIRouter()

_PONG = PONG.decode()


def _error(message: str) -> str:
    return error(message).decode()


async def _refuse(ws: WebSocket, message: str, code: int = POLICY_VIOLATION) -> None:
    """Accept, say why, close with `code` (browsers cannot read a refusal before accept)."""
    if ws.client_state is WebSocketState.CONNECTING:
        await ws.accept()
    with contextlib.suppress(Exception):
        await ws.send_text(_error(message))
        await ws.close(code, message[:120])


def _admit(ws: WebSocket, tracking_id: str | None = None) -> Principal | None:
    """The connecting client's principal, after the connect limits: raises Unauthenticated
    for a bad token, RateLimited past a limit. On a session's socket (`tracking_id`) that
    session's share link token is admitted too, as a reader (None)."""
    limits: Limits = ws.app.state.limits
    ip = ws.client.host if ws.client is not None else None
    limits.check_ip("connect", ip)
    principal = _principal(ws) if tracking_id is None else _reader(ws, tracking_id)
    limits.check_principal("connect", principal)
    return principal


def _full(ws: WebSocket, gateway: Gateway) -> bool:
    """Whether this process holds as many sockets as it may (`TRACKING_MAX_SOCKETS`)."""
    cap: int = ws.app.state.settings.max_sockets
    return gateway.connections >= cap


_FULL = "server busy: this API process holds its maximum of sockets; retry shortly"


def _expired(principal: Principal) -> bool:
    return time.time() >= principal.expires_at


def _principal(ws: WebSocket) -> Principal | None:
    token = ws.query_params.get("token")
    if not token:
        return None
    tokens: TokenVerifier = ws.app.state.tokens
    return tokens.verify(token)


def _reader(ws: WebSocket, tracking_id: str) -> Principal | None:
    """The caller on a watch socket: a user, or None (public, or a share link of this session,
    which may only read)."""
    token = ws.query_params.get("token")
    if not token:
        return None
    tokens: TokenVerifier = ws.app.state.tokens
    reader = tokens.verify_reader(token, tracking_id)
    return reader if isinstance(reader, Principal) else None


SINCE_SEQ_MAX = 2**62


def _flag(ws: WebSocket, name: str) -> bool:
    raw = ws.query_params.get(name)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1", ""):
        return True
    raise InvalidInput(f"{name} must be true or false")


def _since_seq(ws: WebSocket) -> int | None:
    """`?since_seq=N`: resume after seq N (InvalidInput unless a non-negative integer)."""
    raw = ws.query_params.get("since_seq")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19 or int(raw) > SINCE_SEQ_MAX:
        raise InvalidInput(f"since_seq must be a whole number from 0 to {SINCE_SEQ_MAX}")
    return int(raw)


@router.websocket("/ws/tracking/{tracking_id}")
async def watch(ws: WebSocket, tracking_id: str) -> None:
    gateway: Gateway = ws.app.state.gateway
    engine: EngineClient = ws.app.state.engine
    try:
        principal = _admit(ws, tracking_id)
        since_seq = _since_seq(ws)
        milestones = _flag(ws, "milestones")
    except TrackingError as e:
        await _refuse(ws, e.detail, close_code(e) or POLICY_VIOLATION)
        return
    if len(tracking_id) > ID_MAX:
        await _refuse(ws, "Tracking session not found")
        return
    await ws.accept()
    if _full(ws, gateway):  # checked after the last await before `attach` counts this socket
        await _refuse(ws, _FULL, TRY_AGAIN_LATER)
        return
    sink: FrameSink | None = ws.scope["extensions"].get(EXTENSION)
    fallback = None
    if sink is None:  # not under `tracking serve`'s protocol: plain ASGI messages
        sink = fallback = AsgiFrameSink(ws.send_text, ws.close)
    try:
        watcher = await gateway.attach(tracking_id, sink, since_seq, milestones)
    except TrackingError as e:
        if fallback is not None:
            fallback.stop()
        with contextlib.suppress(Exception):
            await ws.send_text(_error(e.detail))
            await ws.close(close_code(e) or POLICY_VIOLATION, e.detail[:120])
        return
    limit = ws.app.state.settings.ws_max_message_bytes
    try:
        while not watcher.closed:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                break
            text = raw.get("text")
            if text is None and raw.get("bytes") is not None:
                text = raw["bytes"].decode("utf-8", "replace")
            if text is None:
                continue
            if len(text) > limit:
                watcher.reply(prepare_text(error(f"message too large (limit {limit} bytes)")))
                continue
            try:
                reply = await _handle(text, tracking_id, principal, engine, ws)
            except RateLimited as e:
                watcher.reply(prepare_text(error(e.detail)))
                watcher.close(TRY_AGAIN_LATER, e.detail[:120])
                break
            if reply is not None:
                watcher.reply(prepare_text(reply))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        await gateway.detach(watcher)
        if fallback is not None:
            fallback.stop()


async def _handle(
    text: str, tracking_id: str, principal: Principal | None, engine: EngineClient,
    ws: WebSocket,
) -> bytes | None:
    """One client message; returns the direct reply, if any (updates reach all via fan-out)."""
    msg: ReportLocation | ReportBatch | ClientPing | None = None
    try:
        msg = read_client_message(text)
    except BadMessage as e:
        if not e.report:
            return error(str(e))
        if _may_report(principal):
            UPDATES.labels("ws", "invalid").inc()
            return error(str(e))
        # An invalid report from someone who may not report at all: say that instead.
    if isinstance(msg, ClientPing):
        return PONG
    if principal is None:
        return error("not authorised: connect with ?token=<rider or superadmin token> to report")
    if not _may_report(principal):
        return error("not authorised: only the session's rider or a superadmin may update it")
    if _expired(principal):
        # The socket keeps watching (that needs no token); the token's rights are gone.
        return error("not authorised: the token has expired; reconnect with a fresh token to"
                     " report")
    limits: Limits = ws.app.state.limits
    ip = ws.client.host if ws.client is not None else None
    if isinstance(msg, ReportBatch):
        batch_max: int = ws.app.state.settings.batch_max_fixes
        for _ in msg.fixes[:batch_max]:  # each fix of a batch is an update to the limits
            limits.check("update", principal, ip)
    else:
        limits.check("update", principal, ip)
    try:
        if isinstance(msg, ReportBatch):
            answer = await apply_batch(engine, tracking_id, msg.fixes, principal, "ws", batch_max)
            return batch_result(answer)
        assert isinstance(msg, ReportLocation)
        view = await apply_update(engine, tracking_id, msg.location, principal, "ws")
        if FILTERED_MARK in view:
            return fix_filtered(view, msg.location)
    except Forbidden:
        return error("not authorised: only the session's rider or a superadmin may update it")
    except TrackingError as e:
        return error(e.detail)
    return None


def _may_report(principal: Principal | None) -> bool:
    return principal is not None and (principal.is_admin or principal.role is Role.RIDER)


@router.websocket("/ws/ops")
async def ops_feed(ws: WebSocket) -> None:
    """Superadmin feed: about once a second, every live session's position and the statistics."""
    try:
        principal = _admit(ws)
    except TrackingError as e:
        await _refuse(ws, e.detail, close_code(e) or POLICY_VIOLATION)
        return
    if principal is None or not principal.is_admin:
        await _refuse(ws, "the ops feed needs a superadmin token (?token=...)")
        return
    await ws.accept()
    feed: OpsFeed = ws.app.state.ops_feed
    gateway: Gateway = ws.app.state.gateway
    if _full(ws, gateway):
        await _refuse(ws, _FULL, TRY_AGAIN_LATER)
        return
    gateway.extra_connections += 1
    queue: asyncio.Queue[str] = feed.subscribe()

    async def pump() -> None:
        while True:
            await ws.send_text(await queue.get())

    sender = asyncio.get_running_loop().create_task(pump())
    # The feed is the token's right: it ends when the token expires.
    loop = asyncio.get_running_loop()
    left = principal.expires_at - time.time()
    ends = loop.time() + left if math.isfinite(left) else None
    try:
        async with asyncio.timeout_at(ends):
            while True:
                raw = await ws.receive()
                if raw["type"] == "websocket.disconnect":
                    break
                if raw.get("text") and '"ping"' in raw["text"]:
                    await ws.send_text(_PONG)
    except TimeoutError:
        sender.cancel()
        await _refuse(ws, "the token has expired; reconnect with a fresh superadmin token")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        sender.cancel()
        feed.unsubscribe(queue)
        gateway.extra_connections -= 1


class OpsFeed:
    """One snapshot a second for all ops sockets of this process, taken only while any listen."""

    def __init__(self, engine: EngineClient, interval_s: float = 1.0, limit: int = 20000) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.limit = limit
        self.queues: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=2)
        self.queues.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self.queues.discard(q)

    async def _run(self) -> None:
        while self.queues:
            try:
                stats, sessions = await self.engine.overview(self.limit)
                text = ops_snapshot(sessions, stats).decode()
                for q in list(self.queues):
                    if q.full():
                        with contextlib.suppress(asyncio.QueueEmpty):
                            q.get_nowait()
                    q.put_nowait(text)
            except TrackingError as e:
                log.warning("ops snapshot failed: %s", e.detail)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
