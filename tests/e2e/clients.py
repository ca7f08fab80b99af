"""Clients and contract helpers for the e2e tests: HTTP over httpx, WebSockets over websockets.

Everything here talks to a real `tracking serve` over loopback; the formulas (haversine ETA)
are written out independently of the engine so the tests check the contract, not the code.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from harness import ServerProcess
from tests.support import timeout

STATUSES = ("ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED")
ROLES = ("rider", "merchant", "customer", "superadmin")
EXPIRED_DETAIL = "Tracking session expired"
VIEW_KEYS = {
    "tracking_id", "order_id", "rider_id", "status", "current_location", "dropoff",
    "eta_seconds", "updated_at",
}
DROPOFF = (5.6037, -0.1869)  # the seed's dropoff (Accra)
EARTH_RADIUS_KM = 6371.0

T = TypeVar("T")


def uid(prefix: str) -> str:
    """A fresh id, so tests sharing one server never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


def expected_eta(lat: float, lng: float, dlat: float, dlng: float, speed_kmh: float = 30) -> int:
    """API.md: max(60, round(distance_km / speed_kmh * 3600))."""
    return max(60, round(haversine_km(lat, lng, dlat, dlng) / speed_kmh * 3600))


def north_of(lat: float, lng: float, km: float) -> tuple[float, float]:
    """The point `km` due north along the meridian (haversine distance exactly `km`)."""
    return lat + math.degrees(km / EARTH_RADIUS_KM), lng


def assert_view(view: Any, **expected: Any) -> dict[str, Any]:
    """Check the shape of a session view (API.md "The view") and any expected field values."""
    assert isinstance(view, dict), view
    missing = VIEW_KEYS - view.keys()
    assert not missing, f"view lacks {missing}: {view}"
    assert "phone" not in view, view
    assert view["status"] in STATUSES, view
    assert isinstance(view["updated_at"], int), f"updated_at must be Unix seconds (int): {view}"
    assert 1_600_000_000 < view["updated_at"] < 10_000_000_000, f"not Unix seconds: {view}"
    loc = view["current_location"]
    if loc is not None:
        assert set(loc) >= {"lat", "lng", "timestamp"}, view
        assert isinstance(loc["timestamp"], int), f"timestamp must be Unix seconds (int): {view}"
        assert 1_600_000_000 < loc["timestamp"] < 10_000_000_000, f"not Unix seconds: {view}"
    else:
        assert view["eta_seconds"] is None, f"eta must be null before the first location: {view}"
    assert set(view["dropoff"]) >= {"lat", "lng"}, view
    for key, value in expected.items():
        assert view[key] == value, f"{key}: expected {value!r}, got {view[key]!r} in {view}"
    return view


def assert_error(resp: httpx.Response, status: int, *mentions: str) -> str:
    """An error answer: the status, a JSON body with a `detail` string mentioning each word."""
    got = resp.status_code
    assert got == status, f"expected {status}, got {got}: {resp.text[:500]}"
    body = resp.json()
    assert isinstance(body, dict), body
    detail = body.get("detail")
    assert isinstance(detail, str), f"`detail` must be a string: {body}"
    assert detail.strip(), f"`detail` must not be empty: {body}"
    for word in mentions:
        assert word.lower() in detail.lower(), f"detail should mention {word!r}: {detail!r}"
    return detail


class Api:
    """A synchronous HTTP client for one server, with the contract's calls spelled out."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.http = httpx.Client(base_url=srv.base_url, timeout=timeout(30))

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.http.close()

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return bearer(self.srv.token(role, sub))

    def start(
        self,
        rider: str,
        order: str | None = None,
        dropoff: tuple[float, float] = DROPOFF,
        phone: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "order_id": order or uid("ORD"), "rider_id": rider,
            "dropoff_lat": dropoff[0], "dropoff_lng": dropoff[1],
        }
        if phone is not None:
            body["phone"] = phone
        return self.http.post(
            "/tracking/start", json=body,
            headers=self.auth("rider", rider) if headers is None else headers,
        )

    def start_ok(self, rider: str | None = None, **kw: Any) -> dict[str, Any]:
        """Start a session for `rider` (a fresh one by default) and return its view."""
        resp = self.start(rider or uid("RIDER"), **kw)
        assert resp.status_code == 201, resp.text
        return assert_view(resp.json())

    def update(
        self,
        tid: str,
        lat: Any,
        lng: Any,
        status: str | None = None,
        *,
        rider: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {"lat": lat, "lng": lng}
        if status is not None:
            body["status"] = status
        if headers is None:
            headers = self.auth("rider", rider) if rider else self.auth("superadmin", "ops")
        return self.http.post(f"/tracking/update/{tid}", json=body, headers=headers)

    def update_ok(self, view: dict[str, Any], lat: float, lng: float, status: str | None = None
                  ) -> dict[str, Any]:
        """An update by the session's own rider; returns the new view."""
        resp = self.update(view["tracking_id"], lat, lng, status, rider=view["rider_id"])
        assert resp.status_code == 200, resp.text
        return assert_view(resp.json())

    def advance_to(self, view: dict[str, Any], status: str) -> dict[str, Any]:
        """Step a session forward one status at a time until it reaches `status`."""
        lat, lng = view["dropoff"]["lat"] + 0.05, view["dropoff"]["lng"]
        while view["status"] != status:
            nxt = STATUSES[STATUSES.index(view["status"]) + 1]
            view = self.update_ok(view, lat, lng, nxt)
        return view

    def get(self, tid: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.get(f"/tracking/{tid}", headers=headers)

    def view(self, tid: str) -> dict[str, Any]:
        resp = self.get(tid)
        assert resp.status_code == 200, resp.text
        return assert_view(resp.json())

    def stats(self) -> dict[str, Any]:
        resp = self.http.get("/stats/tracking", headers=self.auth("superadmin", "ops"))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def raw_post(self, path: str, content: bytes | str, headers: dict[str, str]) -> httpx.Response:
        return self.http.post(
            path, content=content, headers={"Content-Type": "application/json", **headers}
        )


def run(coro: Coroutine[Any, Any, T], seconds: float = 60) -> T:
    """Run an async test body with an overall (scaled) deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout(seconds))

    return asyncio.run(bounded())


def ws_connect(srv: ServerProcess, tid: str, token: str | None = None, **kw: Any) -> connect:
    url = f"{srv.ws_url}/ws/tracking/{tid}"
    if token is not None:
        url += f"?token={token}"
    kw.setdefault("open_timeout", timeout(20))
    kw.setdefault("close_timeout", timeout(5))
    return connect(url, proxy=None, **kw)


async def recv_json(ws: ClientConnection, seconds: float = 15) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout(seconds))
    msg = json.loads(raw)
    assert isinstance(msg, dict), msg
    return msg


async def recv_type(ws: ClientConnection, mtype: str, seconds: float = 15) -> dict[str, Any]:
    """The next message, which must be of type `mtype`."""
    msg = await recv_json(ws, seconds)
    assert msg.get("type") == mtype, f"expected a {mtype!r} message, got {msg}"
    return msg


async def initial_state(ws: ClientConnection) -> dict[str, Any]:
    msg = await recv_type(ws, "initial_state")
    return assert_view(msg["data"])


async def expect_error_then_close(ws: ClientConnection, code: int = 1008, seconds: float = 15
                                  ) -> str:
    """The server sends an `error` message, then closes with `code`; returns the message text."""
    msg = await recv_type(ws, "error", seconds)
    assert_error_message(msg)
    await expect_closed(ws, code, seconds)
    return str(msg["message"])


def assert_error_message(msg: dict[str, Any], *mentions: str) -> str:
    """An `error` message with a non-empty text mentioning each word."""
    assert msg.get("type") == "error", msg
    text = msg.get("message")
    assert isinstance(text, str), msg
    assert text.strip(), msg
    for word in mentions:
        assert word.lower() in text.lower(), f"error should mention {word!r}: {text!r}"
    return text


async def close_code(ws: ClientConnection, seconds: float = 15) -> int | None:
    """Wait for the server to close; its close code (fails on any further message)."""
    try:
        extra = await asyncio.wait_for(ws.recv(), timeout(seconds))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    raise AssertionError(f"expected the server to close, got another message: {extra!r}")


async def expect_closed(ws: ClientConnection, code: int, seconds: float = 15) -> None:
    got = await close_code(ws, seconds)
    assert got == code, f"expected close {code}, got {got}"


async def ping_pong(ws: ClientConnection) -> None:
    """The connection is open and answering: an application ping gets a pong."""
    await ws.send(json.dumps({"type": "ping"}))
    await recv_type(ws, "pong")


async def send_update(ws: ClientConnection, lat: Any, lng: Any, status: str | None = None) -> None:
    location: dict[str, Any] = {"lat": lat, "lng": lng}
    if status is not None:
        location["status"] = status
    await ws.send(json.dumps({"type": "location_update", "location": location}))


async def collect_until(
    ws: ClientConnection, done: Callable[[dict[str, Any]], bool], seconds: float = 30
) -> list[dict[str, Any]]:
    """Messages up to and including the first for which `done` is true."""
    got: list[dict[str, Any]] = []
    while True:
        msg = await recv_json(ws, seconds)
        got.append(msg)
        if done(msg):
            return got


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], what: str, seconds: float = 20
               ) -> T:
    """Poll `probe` until `ok` holds (for values the contract lets lag, like statistics)."""
    held, value = within(probe, ok, seconds)
    if not held:
        raise AssertionError(f"{what}: still {value!r} after {timeout(seconds)} s")
    return value


def within(probe: Callable[[], T], ok: Callable[[T], bool], seconds: float) -> tuple[bool, T]:
    """Poll `probe` until `ok` holds or the (scaled) deadline passes: whether it held, and the
    last value seen."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        value = probe()
        if ok(value):
            return True, value
        if time.monotonic() > deadline:
            return False, value
        time.sleep(0.1)


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*aws))
