"""API.md expiry (410 everywhere, watchers closed) and the other TRACKING_* settings that need
their own server: session TTL, delivered TTL, average speed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from harness import ServerProcess
from tests.e2e.clients import (
    EXPIRED_DETAIL,
    Api,
    assert_error_message,
    eventually,
    expect_closed,
    expect_error_then_close,
    north_of,
    recv_json,
    run,
    ws_connect,
)

Factory = Callable[..., AbstractContextManager[ServerProcess]]


@pytest.fixture(scope="module")
def short_lived(server_factory: Factory) -> Iterator[Api]:
    """Sessions expire 2 s after they start."""
    with server_factory(TRACKING_SESSION_TTL_S="2") as srv, Api(srv) as api:
        yield api


@pytest.fixture(scope="module")
def quick_delivery(server_factory: Factory) -> Iterator[Api]:
    """Delivered sessions expire 1 s after delivery; riders average 60 km/h."""
    with server_factory(TRACKING_DELIVERED_TTL_S="1", TRACKING_AVG_SPEED_KMH="60") as srv, \
            Api(srv) as api:
        yield api


def wait_expired(api: Api, tid: str) -> Any:
    """Poll until the session stops answering 200; return that first other answer."""
    return eventually(lambda: api.get(tid), lambda r: r.status_code != 200,
                      f"{tid} should expire", seconds=30)


def assert_expired(resp: Any) -> None:
    assert resp.status_code == 410, resp.text
    assert resp.json()["detail"] == EXPIRED_DETAIL


@pytest.fixture(scope="module")
def expired(short_lived: Api) -> dict[str, Any]:
    view = short_lived.start_ok()
    assert_expired(wait_expired(short_lived, view["tracking_id"]))
    return view


def test_expired_session_is_410_on_read(short_lived: Api, expired: dict[str, Any]) -> None:
    assert_expired(short_lived.get(expired["tracking_id"]))


def test_expired_session_is_410_on_update(short_lived: Api, expired: dict[str, Any]) -> None:
    assert_expired(short_lived.update(expired["tracking_id"], 5.61, -0.18,
                                      rider=expired["rider_id"]))
    assert_expired(short_lived.update(expired["tracking_id"], 5.61, -0.18))


def test_expired_session_is_410_on_history(short_lived: Api, expired: dict[str, Any]) -> None:
    assert_expired(short_lived.http.get(f"/tracking/{expired['tracking_id']}/history"))


def test_expired_session_is_no_riders_current_session(
    short_lived: Api, expired: dict[str, Any]
) -> None:
    resp = short_lived.http.get(f"/tracking/rider/{expired['rider_id']}",
                                headers=short_lived.auth("merchant", "m"))
    # The newest *live* session: there is none (404), or the expired one says so (410).
    assert resp.status_code in (404, 410), resp.text
    if resp.status_code == 410:
        assert resp.json()["detail"] == EXPIRED_DETAIL


def test_watching_an_expired_session_is_an_error_then_1008(
    short_lived: Api, expired: dict[str, Any]
) -> None:
    async def body() -> str:
        async with ws_connect(short_lived.srv, expired["tracking_id"]) as ws:
            return await expect_error_then_close(ws, 1008)

    assert run(body()) == EXPIRED_DETAIL


def test_an_expired_session_frees_its_order_and_leaves_the_statistics(
    short_lived: Api, expired: dict[str, Any]
) -> None:
    stats = short_lived.stats()
    assert stats["total_active_sessions"] == sum(stats["status_distribution"].values())
    again = short_lived.start_ok(expired["rider_id"], order=expired["order_id"])
    assert again["tracking_id"] != expired["tracking_id"]


def test_watchers_of_an_expiring_session_get_the_error_and_1008(short_lived: Api) -> None:
    view = short_lived.start_ok()

    async def watch() -> str:
        async with ws_connect(short_lived.srv, view["tracking_id"]) as ws:
            msg = await recv_json(ws)
            if msg["type"] == "initial_state":
                # Connected in time (the normal case): the expiry arrives on its own.
                msg = await recv_json(ws, 30)
            text = assert_error_message(msg)
            await expect_closed(ws, 1008)
            return text

    async def body() -> list[str]:
        return list(await asyncio.gather(watch(), watch(), watch()))

    assert run(body()) == [EXPIRED_DETAIL] * 3
    assert_expired(short_lived.get(view["tracking_id"]))


def test_statistics_count_only_live_sessions(short_lived: Api) -> None:
    # Everything on this server expires within seconds; once it has, nothing is counted.
    view = short_lived.start_ok()
    wait_expired(short_lived, view["tracking_id"])
    stats = eventually(short_lived.stats, lambda s: s["total_active_sessions"] == 0,
                       "no live sessions after expiry", seconds=30)
    assert set(stats["status_distribution"].values()) == {0}


def test_a_delivered_session_expires_after_the_delivered_ttl(quick_delivery: Api) -> None:
    api = quick_delivery
    waiting = api.start_ok()
    delivered = api.advance_to(api.start_ok(), "DELIVERED")
    assert_expired(wait_expired(api, delivered["tracking_id"]))
    # Only delivery shortened its life: the undelivered one is still live.
    assert api.view(waiting["tracking_id"]) == waiting
    assert_expired(api.update(delivered["tracking_id"], 5.6, -0.18))


def test_average_speed_setting_drives_the_eta(quick_delivery: Api) -> None:
    api = quick_delivery
    view = api.start_ok(dropoff=(0.0, 0.0))
    lat, lng = north_of(0.0, 0.0, 2.5)
    assert api.update_ok(view, lat, lng)["eta_seconds"] == 150  # 2.5 km at 60 km/h
