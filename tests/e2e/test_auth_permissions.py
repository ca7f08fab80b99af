"""API.md "Identity": the whole permission table, over HTTP and over the WebSocket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    assert_error,
    assert_error_message,
    assert_view,
    initial_state,
    ping_pong,
    recv_type,
    run,
    send_update,
    uid,
    ws_connect,
)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


# (role, whose subject) -> allowed?  "self" is the rider named in the body / owning the session.
START_TABLE = [
    ("rider", "self", True),
    ("rider", "other", False),
    ("merchant", "other", False),
    ("customer", "other", False),
    ("superadmin", "other", True),
]


@pytest.mark.parametrize(("role", "who", "allowed"), START_TABLE)
def test_start_tracking(api: Api, role: str, who: str, allowed: bool) -> None:
    rider, order = uid("RIDER"), uid("ORD")
    sub = rider if who == "self" else uid("USER")
    resp = api.start(rider, order, headers=api.auth(role, sub))
    if allowed:
        assert resp.status_code == 201, resp.text
        assert_view(resp.json(), rider_id=rider, order_id=order, status="ASSIGNED")
    else:
        assert_error(resp, 403)
        # Refused means nothing was created: the order is still free for its rider.
        assert api.start(rider, order).status_code == 201


UPDATE_TABLE = [
    ("rider", "self", True),
    ("rider", "other", False),
    ("merchant", "other", False),
    ("customer", "other", False),
    ("superadmin", "other", True),
]


@pytest.mark.parametrize(("role", "who", "allowed"), UPDATE_TABLE)
def test_update_over_http(api: Api, role: str, who: str, allowed: bool) -> None:
    view = api.start_ok()
    sub = view["rider_id"] if who == "self" else uid("USER")
    resp = api.update(view["tracking_id"], 5.61, -0.18, "PICKED_UP", headers=api.auth(role, sub))
    if allowed:
        assert resp.status_code == 200, resp.text
        assert_view(resp.json(), status="PICKED_UP")
    else:
        assert_error(resp, 403)
        assert api.view(view["tracking_id"]) == view


@pytest.mark.parametrize(("role", "who", "allowed"), [*UPDATE_TABLE, (None, "anonymous", False)])
def test_update_over_websocket(api: Api, role: str | None, who: str, allowed: bool) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]
    token = None
    if role is not None:
        token = api.srv.token(role, view["rider_id"] if who == "self" else uid("USER"))

    async def body() -> dict[str, Any]:
        async with ws_connect(api.srv, tid, token) as ws:
            await initial_state(ws)
            await send_update(ws, 5.61, -0.18, "PICKED_UP")
            if allowed:
                msg = await recv_type(ws, "location_update")
            else:
                msg = await recv_type(ws, "error")
                assert_error_message(msg)
                await ping_pong(ws)  # the refusal keeps the connection open
            return msg

    msg = run(body())
    if allowed:
        assert_view(msg["data"], status="PICKED_UP", tracking_id=tid)
    else:
        assert api.view(tid) == view


@pytest.mark.parametrize("role", ["rider", "merchant", "customer", "superadmin", None])
def test_anyone_reads_one_session(api: Api, role: str | None) -> None:
    view = api.start_ok()
    headers = api.auth(role, uid("USER")) if role else None
    resp = api.get(view["tracking_id"], headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == view


RIDER_LOOKUP_TABLE = [
    ("rider", "self", True),
    ("rider", "other", False),
    ("merchant", "other", True),
    ("customer", "other", False),
    ("superadmin", "other", True),
]


@pytest.mark.parametrize(("role", "who", "allowed"), RIDER_LOOKUP_TABLE)
def test_a_riders_current_session(api: Api, role: str, who: str, allowed: bool) -> None:
    view = api.start_ok()
    sub = view["rider_id"] if who == "self" else uid("USER")
    resp = api.http.get(f"/tracking/rider/{view['rider_id']}", headers=api.auth(role, sub))
    if allowed:
        assert resp.status_code == 200, resp.text
        assert resp.json() == view
    else:
        assert_error(resp, 403)


@pytest.mark.parametrize(("role", "allowed"), [
    ("rider", False), ("merchant", False), ("customer", False), ("superadmin", True),
])
def test_statistics_are_superadmin_only(api: Api, role: str, allowed: bool) -> None:
    resp = api.http.get("/stats/tracking", headers=api.auth(role, uid("USER")))
    if allowed:
        assert resp.status_code == 200, resp.text
    else:
        assert_error(resp, 403)
