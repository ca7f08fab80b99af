"""API.md "WebSocket": messages, fan-out, ordering, errors that keep the socket, 1008 closes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    assert_error_message,
    assert_view,
    close_code,
    expect_error_then_close,
    initial_state,
    ping_pong,
    recv_json,
    recv_type,
    run,
    send_update,
    ws_connect,
)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


async def _watchers(stack: AsyncExitStack, api: Api, tid: str, tokens: list[str | None]
                    ) -> list[ClientConnection]:
    sockets = []
    for token in tokens:
        ws = await stack.enter_async_context(ws_connect(api.srv, tid, token))
        await initial_state(ws)
        sockets.append(ws)
    return sockets


def test_initial_state_comes_first_and_is_the_view(api: Api) -> None:
    view = api.update_ok(api.start_ok(), 5.6045, -0.1875, "PICKED_UP")

    async def body() -> dict[str, Any]:
        async with ws_connect(api.srv, view["tracking_id"]) as ws:
            return await recv_type(ws, "initial_state")

    msg = run(body())
    assert msg["data"] == view


def test_http_updates_reach_every_watcher(api: Api) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            tokens = [None, api.srv.token("merchant", "m"), api.srv.token("customer", "c"),
                      api.srv.token("rider", view["rider_id"])]
            sockets = await _watchers(stack, api, tid, tokens)
            resp = await asyncio.to_thread(api.update, tid, 5.6045, -0.1875,
                                           rider=view["rider_id"])
            assert resp.status_code == 200, resp.text
            for ws in sockets:
                msg = await recv_type(ws, "location_update")
                assert msg["data"] == resp.json()

    run(body())


def test_websocket_updates_reach_every_watcher(api: Api) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            rider_ws, *others = await _watchers(
                stack, api, tid, [api.srv.token("rider", view["rider_id"]), None, None])
            await send_update(rider_ws, 5.6045, -0.1875)
            got = [await recv_type(ws, "location_update") for ws in (rider_ws, *others)]
            current = await asyncio.to_thread(api.view, tid)
            for msg in got:
                assert msg["data"] == current
            loc = current["current_location"]
            assert (loc["lat"], loc["lng"]) == (5.6045, -0.1875)

    run(body())


def test_status_change_follows_its_location_update(api: Api) -> None:
    view = api.start_ok()
    tid, rider = view["tracking_id"], view["rider_id"]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            rider_ws, watcher = await _watchers(
                stack, api, tid, [api.srv.token("rider", rider), None])
            plain = await asyncio.to_thread(api.update, tid, 5.61, -0.18, rider=rider)
            picked = await asyncio.to_thread(api.update, tid, 5.62, -0.18, "PICKED_UP",
                                             rider=rider)
            await send_update(rider_ws, 5.63, -0.18, "IN_TRANSIT")
            for ws in (watcher, rider_ws):
                # An update that keeps the status: a location_update and no status_change.
                msg = await recv_type(ws, "location_update")
                assert msg["data"] == plain.json()
                msg = await recv_type(ws, "location_update")
                assert msg["data"] == picked.json()
                change = await recv_type(ws, "status_change")
                assert change["data"]["previous_status"] == "ASSIGNED"
                assert_view(change["data"], status="PICKED_UP", tracking_id=tid)
                assert {k: v for k, v in change["data"].items() if k != "previous_status"} == \
                    picked.json()
                msg = await recv_type(ws, "location_update")
                assert_view(msg["data"], status="IN_TRANSIT")
                change = await recv_type(ws, "status_change")
                assert change["data"]["previous_status"] == "PICKED_UP"
                assert_view(change["data"], status="IN_TRANSIT")

    run(body())


def test_ping_gets_pong(api: Api) -> None:
    view = api.start_ok()

    async def body() -> None:
        async with ws_connect(api.srv, view["tracking_id"]) as ws:
            await initial_state(ws)
            for _ in range(3):
                await ping_pong(ws)

    run(body())


BAD_MESSAGES: dict[str, str] = {
    "not-json": "this is not json",
    "truncated-json": '{"type": "location_update", "location": {"lat": 5.6',
    "json-array": "[1, 2, 3]",
    "json-string": '"ping"',
    "no-type": '{"location": {"lat": 5.6, "lng": -0.18}}',
    "unknown-type": '{"type": "teleport", "location": {"lat": 5.6, "lng": -0.18}}',
    "type-not-a-string": '{"type": 7}',
    "no-location": '{"type": "location_update"}',
    "location-not-object": '{"type": "location_update", "location": [5.6, -0.18]}',
    "lat-out-of-range": '{"type": "location_update", "location": {"lat": 90.5, "lng": 0}}',
    "lng-out-of-range": '{"type": "location_update", "location": {"lat": 0, "lng": -180.5}}',
    "lat-string": '{"type": "location_update", "location": {"lat": "5.6", "lng": 0}}',
    "lng-missing": '{"type": "location_update", "location": {"lat": 5.6}}',
    "lat-nan": '{"type": "location_update", "location": {"lat": NaN, "lng": 0}}',
    "lng-infinity": '{"type": "location_update", "location": {"lat": 0, "lng": Infinity}}',
    "lat-bool": '{"type": "location_update", "location": {"lat": true, "lng": 0}}',
    "unknown-status": '{"type": "location_update", '
                      '"location": {"lat": 5.6, "lng": 0, "status": "LOST"}}',
    "huge-status": '{"type": "location_update", '
                   '"location": {"lat": 5.6, "lng": 0, "status": "' + "X" * 30_000 + '"}}',
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_refused_messages_get_an_error_and_keep_the_connection(api: Api, name: str) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]

    async def body() -> None:
        async with ws_connect(api.srv, tid, api.srv.token("rider", view["rider_id"])) as ws:
            await initial_state(ws)
            await ws.send(BAD_MESSAGES[name])
            assert_error_message(await recv_json(ws))
            await ping_pong(ws)
            # The same socket still carries a valid update afterwards.
            await send_update(ws, 5.61, -0.18)
            msg = await recv_type(ws, "location_update")
            assert msg["data"]["seq"] == view["seq"] + 1

    run(body())
    after = api.view(tid)
    assert after["seq"] == view["seq"] + 1
    assert after["status"] == view["status"]


@pytest.mark.parametrize(("current", "requested", "allowed"), [
    ("ASSIGNED", "IN_TRANSIT", "PICKED_UP"),
    ("ASSIGNED", "DELIVERED", "PICKED_UP"),
    ("PICKED_UP", "ASSIGNED", "IN_TRANSIT"),
    ("DELIVERED", "DELIVERED", "DELIVERED"),
])
def test_illegal_transition_over_websocket_names_the_rule(
    api: Api, current: str, requested: str, allowed: str
) -> None:
    view = api.advance_to(api.start_ok(), current)

    async def body() -> str:
        async with ws_connect(api.srv, view["tracking_id"],
                              api.srv.token("rider", view["rider_id"])) as ws:
            await initial_state(ws)
            await send_update(ws, 5.7, -0.2, requested)
            text = assert_error_message(await recv_json(ws), allowed)
            await ping_pong(ws)
            return text

    run(body())
    assert api.view(view["tracking_id"]) == view


def test_oversized_message_is_refused_and_changes_nothing(api: Api) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]
    big = json.dumps({"type": "location_update", "location": {"lat": 5.61, "lng": -0.18},
                      "padding": "x" * (70 * 1024)})
    assert len(big) > 64 * 1024

    async def body() -> None:
        async with AsyncExitStack() as stack:
            rider_ws, watcher = await _watchers(
                stack, api, tid, [api.srv.token("rider", view["rider_id"]), None])
            await rider_ws.send(big)
            # Either an error that keeps the socket, or a close for "message too big" (1009).
            try:
                msg = await recv_json(rider_ws)
            except ConnectionClosed:
                code = await close_code(rider_ws)
                assert code == 1009, f"oversized message: expected error or 1009, got {code}"
            else:
                assert_error_message(msg)
                await ping_pong(rider_ws)
            # Nothing changed: the session is as it was, so a valid change made now gets the
            # next seq, and since watchers get a session's messages in the order it accepted
            # them, that change's location_update being the other watcher's next message
            # proves the refused one sent it nothing (and that it is still served).
            assert await asyncio.to_thread(api.view, tid) == view
            resp = await asyncio.to_thread(api.update, tid, 5.62, -0.18, rider=view["rider_id"])
            assert resp.status_code == 200, resp.text
            msg = await recv_type(watcher, "location_update")
            assert msg["data"] == resp.json()
            assert msg["data"]["seq"] == view["seq"] + 1

    run(body())


def test_unknown_session_gets_an_error_then_1008(api: Api) -> None:
    async def body() -> str:
        async with ws_connect(api.srv, "TRK-" + "Z" * 26) as ws:
            return await expect_error_then_close(ws, 1008)

    text = run(body()).lower()
    assert "not found" in text or "unknown" in text, text
    assert "expired" not in text, text
    assert "token" not in text, text


def test_huge_session_id_gets_an_error_then_1008(api: Api) -> None:
    async def body() -> str:
        async with ws_connect(api.srv, "TRK-" + "Z" * 10_000) as ws:
            return await expect_error_then_close(ws, 1008)

    run(body())


def test_messages_reach_watchers_in_the_order_accepted(api: Api) -> None:
    view = api.start_ok()
    tid, rider = view["tracking_id"], view["rider_id"]
    n = 60
    lats = [5.0 + i / 1000 for i in range(n)]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            rider_ws, *watchers = await _watchers(
                stack, api, tid, [api.srv.token("rider", rider), None, None])
            # Half over the socket (pipelined), half over HTTP, interleaved.
            for i, lat in enumerate(lats):
                status = {20: "PICKED_UP", 40: "IN_TRANSIT"}.get(i)
                if i % 2:
                    resp = await asyncio.to_thread(api.update, tid, lat, 0.0, status, rider=rider)
                    assert resp.status_code == 200, resp.text
                else:
                    await send_update(rider_ws, lat, 0.0, status)
            for ws in (rider_ws, *watchers):
                updates: list[dict[str, Any]] = []
                while len(updates) < n:
                    msg = await recv_json(ws)
                    if msg["type"] == "location_update":
                        updates.append(msg["data"])
                    else:
                        assert msg["type"] == "status_change", msg
                seqs = [u["seq"] for u in updates]
                assert seqs == list(range(view["seq"] + 1, view["seq"] + 1 + n)), seqs
                # Pipelined socket updates keep their order relative to each other.
                sent_by_ws = [u["current_location"]["lat"] for u in updates]
                ws_lats = [x for x in sent_by_ws if x in lats[0::2]]
                assert ws_lats == lats[0::2]

    run(body(), seconds=120)
    assert api.view(tid)["seq"] == view["seq"] + n


def test_an_anonymous_watcher_cannot_update(api: Api) -> None:
    view = api.start_ok()

    async def body() -> None:
        async with ws_connect(api.srv, view["tracking_id"]) as ws:
            await initial_state(ws)
            await send_update(ws, 5.61, -0.18, "PICKED_UP")
            assert_error_message(await recv_json(ws))
            await ping_pong(ws)

    run(body())
    assert api.view(view["tracking_id"]) == view


def test_closing_a_watcher_leaves_the_others_served(api: Api) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            a, b = await _watchers(stack, api, tid, [None, None])
            await a.close()
            resp = await asyncio.to_thread(api.update, tid, 5.61, -0.18, rider=view["rider_id"])
            msg = await recv_type(b, "location_update")
            assert msg["data"] == resp.json()

    run(body())
