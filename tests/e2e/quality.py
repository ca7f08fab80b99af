"""Helpers for the tracking-quality e2e tests: fixes with device times along a line to the
dropoff, posted one by one or as a batch, over HTTP; and reading a socket's stream."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tests.e2e.clients import DROPOFF, Api, north_of, recv_json


def at_distance(metres: float) -> tuple[float, float]:
    """A point `metres` due north of the seed's dropoff."""
    return north_of(*DROPOFF, metres / 1000)


def fix(metres: float, at: float, status: str | None = None,
        accuracy_m: float | None = None) -> dict[str, Any]:  # fmt: skip
    lat, lng = at_distance(metres)
    body: dict[str, Any] = {"lat": lat, "lng": lng, "recorded_at": at}
    if status is not None:
        body["status"] = status
    if accuracy_m is not None:
        body["accuracy_m"] = accuracy_m
    return body


def post_fix(api: Api, view: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return api.http.post(
        f"/tracking/update/{view['tracking_id']}", json=body,
        headers=api.auth("rider", view["rider_id"]),
    )


def post_fix_ok(api: Api, view: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    resp = post_fix(api, view, body)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def post_batch(api: Api, view: dict[str, Any], fixes: list[dict[str, Any]],
               headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    return api.http.post(
        f"/tracking/update/{view['tracking_id']}/batch", json={"fixes": fixes},
        headers=api.auth("rider", view["rider_id"]) if headers is None else headers,
    )


def ride_in(api: Api, view: dict[str, Any], metres: list[float], t0: float | None = None,
            step_s: float = 30.0) -> list[dict[str, Any]]:  # fmt: skip
    """Post fixes at these distances, `step_s` of device time apart; their answers."""
    t = (time.time() - len(metres) * step_s) if t0 is None else t0
    out = []
    for m in metres:
        out.append(post_fix_ok(api, view, fix(m, t)))
        t += step_s
    return out


async def drain(ws: ClientConnection, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Every message that arrives until the socket has been quiet for `seconds`."""
    got: list[dict[str, Any]] = []
    while True:
        try:
            got.append(await recv_json(ws, seconds))
        except TimeoutError:
            return got


def kinds(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(type, seq) of each message that carries a view."""
    return [(m["type"], m["data"]["seq"]) for m in messages if isinstance(m.get("data"), dict)
            and "seq" in m["data"]]  # fmt: skip


def dumps(body: Any) -> str:
    return json.dumps(body)
