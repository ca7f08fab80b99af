"""The WebSocket endpoints: `/ws/tracking/{id}` (watch and report) and `/ws/ops` (ops feed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from api.auth import Principal, Role, decode_token
from api.errors import POLICY_VIOLATION, close_code, describe_validation
from api.gateway import Gateway
from api.models import UpdateRequest
from api.observability import UPDATES
from api.routes import log_status
from engine.client import EngineClient
from engine.errors import Forbidden, TrackingError

log = logging.getLogger(__name__)
router = APIRouter()

PONG = '{"type":"pong"}'
MAX_ID = 128


def _error(message: str) -> str:
    return orjson.dumps({"type": "error", "message": message}).decode()


async def _refuse(ws: WebSocket, message: str) -> None:
    """Accept, say why, close 1008 (browsers cannot read a refusal before accept)."""
    await ws.accept()
    with contextlib.suppress(Exception):
        await ws.send_text(_error(message))
        await ws.close(POLICY_VIOLATION, message[:120])


def _principal(ws: WebSocket) -> Principal | None:
    token = ws.query_params.get("token")
    if not token:
        return None
    return decode_token(ws.app.state.jwt_secret, token)


@router.websocket("/ws/tracking/{tracking_id}")
async def watch(ws: WebSocket, tracking_id: str) -> None:
    gateway: Gateway = ws.app.state.gateway
    engine: EngineClient = ws.app.state.engine
    try:
        principal = _principal(ws)
    except TrackingError as e:
        await _refuse(ws, e.detail)
        return
    if len(tracking_id) > MAX_ID:
        await _refuse(ws, "Tracking session not found")
        return
    await ws.accept()

    async def close(code: int, reason: str) -> None:
        await ws.close(code, reason)

    try:
        watcher = await gateway.attach(tracking_id, ws.send_text, close)
    except TrackingError as e:
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
                await watcher.send_now(_error(f"message too large (limit {limit} bytes)"))
                continue
            reply = await _handle(text, tracking_id, principal, engine)
            if reply is not None:
                await watcher.send_now(reply)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        await gateway.detach(watcher)


async def _handle(
    text: str, tracking_id: str, principal: Principal | None, engine: EngineClient
) -> str | None:
    """One client message; returns the direct reply, if any (updates reach all via fan-out)."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _error("message is not valid JSON")
    if not isinstance(msg, dict):
        return _error("message must be a JSON object with a 'type'")
    kind = msg.get("type")
    if kind == "ping":
        return PONG
    if kind != "location_update":
        return _error(f"unknown message type {str(kind)[:40]!r}; expected location_update or ping")
    if principal is None:
        return _error("not authorised: connect with ?token=<rider or superadmin token> to report")
    if not principal.is_admin and principal.role is not Role.RIDER:
        return _error("not authorised: only the session's rider or a superadmin may update it")
    try:
        body = UpdateRequest.model_validate(msg.get("location"))
    except ValidationError as e:
        UPDATES.labels("ws", "invalid").inc()
        return _error("invalid update: " + describe_validation(list(e.errors())))
    status = body.status.value if body.status is not None else None
    try:
        await engine.update_json(
            tracking_id, body.lat, body.lng, status,
            None if principal.is_admin else principal.sub,
        )
    except Forbidden:
        UPDATES.labels("ws", "forbidden").inc()
        return _error("not authorised: only the session's rider or a superadmin may update it")
    except TrackingError as e:
        UPDATES.labels("ws", e.code).inc()
        return _error(e.detail)
    UPDATES.labels("ws", "accepted").inc()
    if status is not None:
        log_status(tracking_id, status, principal, "ws")
    return None


@router.websocket("/ws/ops")
async def ops_feed(ws: WebSocket) -> None:
    """Superadmin feed: about once a second, every live session's position and the statistics."""
    try:
        principal = _principal(ws)
    except TrackingError as e:
        await _refuse(ws, e.detail)
        return
    if principal is None or not principal.is_admin:
        await _refuse(ws, "the ops feed needs a superadmin token (?token=...)")
        return
    await ws.accept()
    feed: OpsFeed = ws.app.state.ops_feed
    gateway: Gateway = ws.app.state.gateway
    gateway.extra_connections += 1
    queue: asyncio.Queue[str] = feed.subscribe()

    async def pump() -> None:
        while True:
            await ws.send_text(await queue.get())

    sender = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                break
            if raw.get("text") and '"ping"' in raw["text"]:
                await ws.send_text(PONG)
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
                sessions = await self.engine.snapshot(self.limit)
                stats: dict[str, Any] = await self.engine.stats()
                text = orjson.dumps(
                    {"type": "ops_snapshot", "data": {"sessions": sessions, "stats": stats}}
                ).decode()
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
