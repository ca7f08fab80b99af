"""Issue 14 over real HTTP and WebSockets: what an attacker gets (findings 1-5).

Rate limits are per client address: each test that counts requests talks from its own loopback
address (127.0.0.0/8 is all loopback on Linux), so the tests' buckets never meet.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote, unquote

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection

from harness import ServerProcess, free_port
from sim.integrations import order_of
from sim.stubs import IntegrationStubs
from tests.e2e.clients import (
    DROPOFF,
    Api,
    assert_error,
    assert_error_message,
    assert_view,
    bearer,
    expect_closed,
    initial_state,
    ping_pong,
    recv_json,
    recv_type,
    run,
    send_update,
    uid,
    ws_connect,
)
from tests.support import timeout

Factory = Callable[..., AbstractContextManager[ServerProcess]]
TRY_AGAIN_LATER, POLICY_VIOLATION = 1013, 1008
LIMITS = {
    "TRACKING_LIMIT_START_PER_PRINCIPAL": "3/min",
    "TRACKING_LIMIT_START_PER_IP": "8/min",
    "TRACKING_LIMIT_UPDATE_PER_PRINCIPAL": "5/min",
    "TRACKING_LIMIT_UPDATE_PER_IP": "60/min",
    "TRACKING_LIMIT_CONNECT_PER_PRINCIPAL": "3/min",
    "TRACKING_LIMIT_CONNECT_PER_IP": "6/min",
    "TRACKING_MAX_SOCKETS": "4",
    "TRACKING_MAX_BODY_BYTES": "2048",
}


def start_body(rider: str, order: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"order_id": order or uid("ORD"), "rider_id": rider,
            "dropoff_lat": DROPOFF[0], "dropoff_lng": DROPOFF[1], **extra}


def client_from(srv: ServerProcess, address: str) -> httpx.Client:
    """An HTTP client whose requests come from `address` (a loopback address of its own)."""
    return httpx.Client(base_url=srv.base_url, timeout=timeout(30),
                        transport=httpx.HTTPTransport(local_address=address))


def retry_after(resp: httpx.Response) -> int:
    value = int(resp.headers["retry-after"])
    assert 1 <= value <= 3600, value
    return value


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


@pytest.fixture(scope="module")
def limited(server_factory: Factory) -> Iterator[tuple[ServerProcess, int]]:
    """A server with small limits, and a metrics port of its own."""
    metrics_port = free_port()
    with server_factory(**LIMITS, TRACKING_METRICS_PORT=str(metrics_port)) as srv:
        yield srv, metrics_port


# -- 1. the start policy ---------------------------------------------------------------------


def test_a_start_for_a_live_order_never_names_its_session(api: Api) -> None:
    rider, other, order = uid("RIDER"), uid("RIDER"), uid("ORD")
    first = api.http.post("/tracking/start", json=start_body(rider, order),
                          headers=api.auth("rider", rider))
    assert first.status_code == 201, first.text
    live = assert_view(first.json(), status="ASSIGNED")
    tid = live["tracking_id"]
    # Another rider: 409, and nothing in the answer that opens the live session's feed.
    squat = api.http.post("/tracking/start", json=start_body(other, order),
                          headers=api.auth("rider", other))
    detail = assert_error(squat, 409, order)
    assert tid not in squat.text
    assert "TRK-" not in squat.text
    assert rider not in detail
    # A superadmin starting it for another rider is told the same.
    assert "TRK-" not in assert_error(api.http.post(
        "/tracking/start", json=start_body(other, order), headers=api.auth("superadmin", "ops")
    ), 409)


def test_a_retried_start_by_the_orders_rider_returns_its_live_session(api: Api) -> None:
    rider, order = uid("RIDER"), uid("ORD")
    body = start_body(rider, order, phone="+233501234567")
    first = api.http.post("/tracking/start", json=body, headers=api.auth("rider", rider))
    assert first.status_code == 201, first.text
    moved = api.update_ok(first.json(), 5.61, -0.19, "PICKED_UP")
    again = api.http.post("/tracking/start", json=body, headers=api.auth("rider", rider))
    assert again.status_code == 200, again.text
    assert again.json() == api.view(moved["tracking_id"])
    assert again.json()["seq"] == moved["seq"]
    # The same through a superadmin acting for that rider.
    admin = api.http.post("/tracking/start", json=body, headers=api.auth("superadmin", "ops"))
    assert admin.status_code == 200, admin.text
    assert admin.json()["tracking_id"] == moved["tracking_id"]


# -- 2. /metrics -------------------------------------------------------------------------------


def test_metrics_need_a_superadmin_token(api: Api) -> None:
    assert_error(api.http.get("/metrics"), 401)
    assert_error(api.http.get("/metrics", headers=api.auth("merchant", "m-1")), 403, "superadmin")
    ok = api.http.get("/metrics", headers=api.auth("superadmin", "ops"))
    assert ok.status_code == 200
    assert "tracking_live_sessions" in ok.text
    assert ok.headers["content-type"].startswith("text/plain")


def test_the_metrics_port_serves_them_without_a_token_on_loopback(
    limited: tuple[ServerProcess, int],
) -> None:
    _, port = limited
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout(30)) as http:
        resp = http.get("/metrics")
        assert resp.status_code == 200, resp.text
        assert "tracking_http_requests_total" in resp.text
        assert "tracking_live_sessions" in resp.text
        assert http.get("/stats/tracking").status_code == 404
        assert http.post("/metrics").status_code == 405


# -- 3. limits ---------------------------------------------------------------------------------


def test_an_oversized_body_is_413_on_every_route(limited: tuple[ServerProcess, int]) -> None:
    srv, _ = limited
    with Api(srv) as api:
        rider = uid("RIDER")
        big = json.dumps(start_body(rider, padding="x" * 4096))
        assert_error(api.raw_post("/tracking/start", big, api.auth("rider", rider)), 413, "2048")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield big[:1000].encode()
            yield big[1000:].encode()

        chunked = api.http.post("/tracking/start", content=chunks(), headers={
            "Content-Type": "application/json", **api.auth("rider", rider)})
        assert_error(chunked, 413, "2048")
        view = api.start_ok()
        update = json.dumps({"lat": 5.6, "lng": -0.18, "pad": "y" * 4096})
        assert_error(api.raw_post(f"/tracking/update/{view['tracking_id']}", update,
                                  api.auth("rider", view["rider_id"])), 413)
        assert api.view(view["tracking_id"])["seq"] == 1


def test_starts_are_limited_per_principal_with_retry_after(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    rider = uid("RIDER")
    with client_from(srv, "127.0.0.11") as http:
        auth = bearer(srv.token("rider", rider))
        for _ in range(3):
            assert http.post("/tracking/start", json=start_body(rider), headers=auth
                             ).status_code == 201
        refused = http.post("/tracking/start", json=start_body(rider), headers=auth)
        assert_error(refused, 429, "too many", "session starts")
        assert retry_after(refused) >= 1
        other = uid("RIDER")
        assert http.post("/tracking/start", json=start_body(other),
                         headers=bearer(srv.token("rider", other))).status_code == 201


def test_starts_are_limited_per_address_even_for_superadmins(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    admin = bearer(srv.token("superadmin", "ops"))
    with client_from(srv, "127.0.0.12") as http:
        codes = [http.post("/tracking/start", json=start_body(uid("RIDER")), headers=admin
                           ).status_code for _ in range(9)]
        assert codes == [201] * 8 + [429]
        assert_error(http.post("/tracking/start", json=start_body(uid("RIDER")), headers=admin),
                     429, "from this address")
    with client_from(srv, "127.0.0.21") as http:  # another address is not held back
        assert http.post("/tracking/start", json=start_body(uid("RIDER")), headers=admin
                         ).status_code == 201


def test_updates_are_limited_per_principal_and_a_refused_one_changes_nothing(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    rider = uid("RIDER")
    auth = bearer(srv.token("rider", rider))
    with client_from(srv, "127.0.0.13") as http:
        view = http.post("/tracking/start", json=start_body(rider), headers=auth).json()
        path = f"/tracking/update/{view['tracking_id']}"
        for i in range(5):
            assert http.post(path, json={"lat": 5.6 + i / 1000, "lng": -0.18}, headers=auth
                             ).status_code == 200
        refused = http.post(path, json={"lat": 5.7, "lng": -0.18, "status": "PICKED_UP"},
                            headers=auth)
        assert_error(refused, 429, "location updates")
        assert retry_after(refused) >= 1
        now = http.get(f"/tracking/{view['tracking_id']}").json()
        assert (now["seq"], now["status"]) == (6, "ASSIGNED")


def test_a_websocket_reporting_past_its_limit_gets_an_error_then_1013(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    rider = uid("RIDER")
    with client_from(srv, "127.0.0.17") as http:
        view = http.post("/tracking/start", json=start_body(rider),
                         headers=bearer(srv.token("rider", rider))).json()

    async def body() -> None:
        async with ws_connect(srv, view["tracking_id"], srv.token("rider", rider),
                              local_addr=("127.0.0.17", 0)) as ws:
            await initial_state(ws)
            for i in range(5):
                await send_update(ws, 5.6 + i / 1000, -0.18)
                assert (await recv_type(ws, "location_update"))["data"]["seq"] == i + 2
            await send_update(ws, 5.7, -0.18)
            assert_error_message(await recv_type(ws, "error"), "too many")
            await expect_closed(ws, TRY_AGAIN_LATER)

    run(body())


def test_websocket_connects_are_limited_per_principal(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    with Api(srv) as api:
        tid = api.start_ok()["tracking_id"]
    token = srv.token("customer", uid("CUST"))

    async def body() -> None:
        for _ in range(3):
            async with ws_connect(srv, tid, token, local_addr=("127.0.0.14", 0)) as ws:
                await initial_state(ws)
        async with ws_connect(srv, tid, token, local_addr=("127.0.0.19", 0)) as ws:
            assert_error_message(await recv_type(ws, "error"), "too many", "WebSocket")
            await expect_closed(ws, TRY_AGAIN_LATER)

    run(body())


def test_websocket_connects_are_limited_per_address(limited: tuple[ServerProcess, int]) -> None:
    srv, _ = limited
    with Api(srv) as api:
        tid = api.start_ok()["tracking_id"]

    async def body() -> None:
        for _ in range(6):  # public watchers: no token, the address is all there is
            async with ws_connect(srv, tid, local_addr=("127.0.0.15", 0)) as ws:
                await initial_state(ws)
        async with ws_connect(srv, tid, local_addr=("127.0.0.15", 0)) as ws:
            assert_error_message(await recv_type(ws, "error"), "from this address")
            await expect_closed(ws, TRY_AGAIN_LATER)

    run(body())


def test_sockets_past_the_process_cap_are_refused_with_1013(
    limited: tuple[ServerProcess, int],
) -> None:
    srv, _ = limited
    with Api(srv) as api:
        tid = api.start_ok()["tracking_id"]

    async def body() -> None:
        held: list[ClientConnection] = []
        try:
            for k in range(4):
                ws = await ws_connect(srv, tid, local_addr=(f"127.0.1.{k + 1}", 0))
                held.append(ws)
                await initial_state(ws)
            async with ws_connect(srv, tid, local_addr=("127.0.1.9", 0)) as extra:
                assert_error_message(await recv_type(extra, "error"), "busy", "retry")
                await expect_closed(extra, TRY_AGAIN_LATER)
            for ws in held:  # the sockets already in are untouched
                await ping_pong(ws)
            await held.pop().close()
            await asyncio.sleep(0.2)
            async with ws_connect(srv, tid, local_addr=("127.0.1.10", 0)) as again:
                await initial_state(again)
        finally:
            for ws in held:
                await ws.close()

    run(body())


# -- 5. token expiry on sockets ----------------------------------------------------------------

TTL_S = 6


def _until_expired(token: str) -> float:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return max(0.0, exp - time.time() + 0.5)


def test_a_rider_socket_loses_its_right_to_report_when_its_token_expires(api: Api) -> None:
    view = api.start_ok()
    token = api.srv.token("rider", view["rider_id"], ttl_s=TTL_S)

    async def body() -> None:
        async with ws_connect(api.srv, view["tracking_id"], token) as ws:
            await initial_state(ws)
            await send_update(ws, 5.61, -0.18)
            assert (await recv_type(ws, "location_update"))["data"]["seq"] == 2
            await asyncio.sleep(_until_expired(token))
            await send_update(ws, 5.62, -0.18, "PICKED_UP")
            assert_error_message(await recv_type(ws, "error"), "expired")
            await ping_pong(ws)  # still watching: that needs no token
            # Someone with a valid token still reaches this socket.
            api.update_ok(api.view(view["tracking_id"]), 5.63, -0.18)
            assert (await recv_type(ws, "location_update"))["data"]["seq"] == 3

    run(body())
    assert api.view(view["tracking_id"])["status"] == "ASSIGNED"


def test_the_ops_feed_closes_with_1008_when_its_token_expires(api: Api) -> None:
    token = api.srv.token("superadmin", uid("ops"), ttl_s=TTL_S)

    async def body() -> None:
        from websockets.asyncio.client import connect

        url = f"{api.srv.ws_url}/ws/ops?token={token}"
        async with connect(url, open_timeout=timeout(20), proxy=None) as ws:
            assert (await recv_json(ws))["type"] == "ops_snapshot"
            deadline = asyncio.get_running_loop().time() + _until_expired(token) + timeout(10)
            while True:
                msg = await recv_json(ws)
                if msg["type"] == "error":
                    break
                assert msg["type"] == "ops_snapshot"
                assert asyncio.get_running_loop().time() < deadline, "the feed did not end"
            assert_error_message(msg, "expired")
            await expect_closed(ws, POLICY_VIOLATION)

    run(body())


# -- 1 (optional check) and 4: the order service -------------------------------------------------


@pytest.fixture(scope="module")
def checked(server_factory: Factory) -> Iterator[tuple[ServerProcess, IntegrationStubs]]:
    """A server that asks the order service (a stub) whether the order names the rider."""
    with IntegrationStubs() as stubs, server_factory(
        **stubs.env(), TRACKING_START_CHECK_ORDER="true"
    ) as srv:
        yield srv, stubs


def test_the_order_service_decides_who_may_start_an_order(
    checked: tuple[ServerProcess, IntegrationStubs],
) -> None:
    srv, stubs = checked
    rider, squatter, order = uid("RIDER"), uid("RIDER"), uid("ORD")
    stubs.orders.set_order(order, rider)
    with Api(srv) as api:
        # Another rider cannot take the order, even before anyone started it.
        assert_error(api.http.post("/tracking/start", json=start_body(squatter, order),
                                   headers=api.auth("rider", squatter)), 403, "another rider")
        assert_error(api.http.post("/tracking/start", json=start_body(rider, uid("ORD")),
                                   headers=api.auth("rider", rider)), 422, "not known")
        ok = api.http.post("/tracking/start", json=start_body(rider, order),
                           headers=api.auth("rider", rider))
        assert ok.status_code == 201, ok.text
    asked = [r for r in stubs.orders.requests if r.method == "GET"]
    assert asked, "the order service was not asked"
    check = asked[-1]
    assert check.path == f"/orders/{order}"
    claims = jwt.decode(check.headers["authorization"].removeprefix("Bearer "),
                        srv.service_secret, algorithms=["HS256"])
    assert claims["role"] == "service"


def test_a_start_is_503_while_the_order_service_cannot_answer(
    checked: tuple[ServerProcess, IntegrationStubs],
) -> None:
    srv, stubs = checked
    rider, order = uid("RIDER"), uid("ORD")
    stubs.orders.set_order(order, rider)
    stubs.orders.set_failing(500, calls=1)
    with Api(srv) as api:
        assert_error(api.http.post("/tracking/start", json=start_body(rider, order),
                                   headers=api.auth("rider", rider)), 503, "retry")
        assert api.http.post("/tracking/start", json=start_body(rider, order),
                             headers=api.auth("rider", rider)).status_code == 201


HOSTILE = "../../admin?x=1#%2F..%"


def test_a_hostile_order_id_reaches_the_order_service_as_one_encoded_segment(
    checked: tuple[ServerProcess, IntegrationStubs],
) -> None:
    srv, stubs = checked
    rider = uid("RIDER")
    order = HOSTILE + uid("")
    stubs.orders.set_order(order, rider)
    with Api(srv) as api:
        resp = api.http.post("/tracking/start", json=start_body(rider, order),
                             headers=api.auth("rider", rider))
        assert resp.status_code == 201, resp.text
        api.advance_to(resp.json(), "DELIVERED")
    encoded = "/orders/" + quote(order, safe="")
    assert stubs.orders.wait_for(
        lambda reqs: any(r.method == "POST" and r.ok for r in reqs if order_of(r.path) == order),
        timeout(60),
    ), [r.path for r in stubs.orders.requests]
    paths = {(r.method, r.path) for r in stubs.orders.requests if order in (
        order_of(r.path), _get_order_of(r.path))}
    assert paths == {("GET", encoded), ("POST", encoded + "/status")}, paths
    assert not [r for r in stubs.orders.requests if "admin" in r.path and order not in (
        order_of(r.path), _get_order_of(r.path))]


def _get_order_of(path: str) -> str | None:
    parts = path.split("/")
    return unquote(parts[2]) if len(parts) == 3 and parts[1] == "orders" else None
