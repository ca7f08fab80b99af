"""`/asyncapi.json` describes the WebSocket channels, and every message the server sends on them
validates against it: initial state, location updates, status changes, pongs, errors, the expiry
notice and the ops feed's snapshots, captured from a real server over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import jsonschema
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from harness import ServerProcess
from tests.e2e import quality
from tests.e2e.clients import Api, recv_json, run, send_update, ws_connect
from tests.support import timeout

ServerFactory = Callable[..., AbstractContextManager[ServerProcess]]
TTL_S = timeout(12.0)


@pytest.fixture(scope="module")
def srv(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    # Sessions expire while watched, so the expiry notice is among the messages checked.
    with server_factory(TRACKING_SESSION_TTL_S=str(TTL_S), TRACKING_SWEEP_INTERVAL_S="0.2") as s:
        yield s


def _validator(doc: dict[str, Any], channel: str) -> Callable[[Any], None]:
    """Validates what the server sends on `channel`: the messages of its `send` operations."""
    names = [ref["$ref"].rsplit("/", 1)[1]
             for op in doc["operations"].values()
             if op["action"] == "send" and op["channel"]["$ref"] == f"#/channels/{channel}"
             for ref in op["messages"]]  # fmt: skip
    messages = doc["channels"][channel]["messages"]
    refs = [doc["components"]["messages"][messages[n]["$ref"].rsplit("/", 1)[1]]["payload"]
            for n in names]  # fmt: skip
    assert refs, f"no send operation on {channel}"
    schema = {"oneOf": refs, "components": doc["components"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return validator.validate


def test_the_document_names_both_channels(srv: ServerProcess) -> None:
    doc = httpx.get(srv.base_url + "/asyncapi.json", timeout=timeout(10)).json()
    assert doc["asyncapi"].startswith("3.")
    assert {c["address"] for c in doc["channels"].values()} == {
        "/ws/tracking/{tracking_id}", "/ws/ops"
    }
    sent = {m["name"] for m in doc["components"]["messages"].values()}
    assert {"initial_state", "location_update", "status_change", "error", "pong",
            "ops_snapshot", "report_location", "ping"} <= sent  # fmt: skip


def test_every_message_sent_validates(srv: ServerProcess) -> None:
    doc = httpx.get(srv.base_url + "/asyncapi.json", timeout=timeout(10)).json()
    watch_ok, ops_ok = _validator(doc, "watch"), _validator(doc, "ops")
    seen: dict[str, int] = {}

    def check(msg: dict[str, Any], validate: Callable[[Any], None]) -> None:
        validate(msg)
        seen[msg["type"]] = seen.get(msg["type"], 0) + 1

    with Api(srv) as api:
        view = api.start_ok()
        tid, rider = view["tracking_id"], view["rider_id"]

        async def body() -> None:
            admin = srv.token("superadmin", "ops-1")
            async with ws_connect(srv, tid) as watcher, \
                    ws_connect(srv, tid, srv.token("rider", rider)) as reporter:
                check(await recv_json(watcher), watch_ok)
                check(await recv_json(reporter), watch_ok)
                # A report over the socket, one over HTTP with a status step.
                await send_update(reporter, 5.61, -0.18)
                await asyncio.to_thread(api.update_ok, view, 5.62, -0.18, "PICKED_UP")
                for _ in range(3):  # location, location, status change
                    check(await recv_json(watcher), watch_ok)
                await reporter.send('{"type": "dance"}')
                await reporter.send('{"type": "ping"}')
                got = [await recv_json(reporter) for _ in range(5)]
                for msg in got:
                    check(msg, watch_ok)
                assert {"error", "pong"} <= {m["type"] for m in got}
                async with connect(f"{srv.ws_url}/ws/ops?token={admin}", proxy=None,
                                   open_timeout=timeout(20)) as ops:
                    check(await recv_json(ops), ops_ok)
                    await ops.send('{"type": "ping"}')
                    msg = await recv_json(ops)
                    while msg["type"] != "pong":
                        check(msg, ops_ok)
                        msg = await recv_json(ops)
                    check(msg, ops_ok)
                # The session expires while watched: an error, then a close.
                expiry = await recv_json(watcher, seconds=TTL_S + 15)
                check(expiry, watch_ok)
                await _drain(watcher)

        run(body(), seconds=TTL_S + 60)
    assert set(seen) == {"initial_state", "location_update", "status_change", "error", "pong",
                         "ops_snapshot"}, seen  # fmt: skip


async def _drain(ws: ClientConnection) -> None:
    """The server closes with 1008 after the expiry notice, sending nothing more."""
    try:
        async with asyncio.timeout(timeout(10)):
            extra = await ws.recv()
        pytest.fail(f"a message after the expiry notice: {extra!r}")
    except TimeoutError:
        pytest.fail("the socket stayed open after the expiry notice")
    except ConnectionClosed:
        assert ws.close_code == 1008


def test_the_quality_messages_validate(srv: ServerProcess) -> None:
    """Milestones, a dropped fix's answer, a batch's answer and a resumed initial_state, captured
    from a real server, validate against /asyncapi.json too."""
    doc = httpx.get(srv.base_url + "/asyncapi.json", timeout=timeout(10)).json()
    validate = _validator(doc, "watch")
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert {"rider_approaching", "rider_arrived", "fix_filtered", "location_batch_result",
            "location_batch"} <= names  # fmt: skip
    seen: dict[str, int] = {}
    with Api(srv) as api:
        view = api.start_ok()
        tid, rider = view["tracking_id"], view["rider_id"]
        t = time.time() - 300

        async def body() -> None:
            token = srv.token("rider", rider)
            async with ws_connect(srv, f"{tid}?milestones=true&token={token}") as phone:
                msgs = [await recv_json(phone)]
                await phone.send(json.dumps({"type": "location_batch", "fixes": [
                    quality.fix(3000, t, "PICKED_UP"), quality.fix(2900, t + 10, "IN_TRANSIT"),
                    quality.fix(400, t + 200), quality.fix(300, t + 210),
                    quality.fix(20, t + 240), quality.fix(10, t + 250),
                ]}))
                await phone.send(json.dumps({"type": "location_update",
                                             "location": quality.fix(10, t + 250)}))
                msgs += await quality.drain(phone, 1.5)
            async with ws_connect(srv, f"{tid}?since_seq=3&milestones=true") as back:
                msgs += [await recv_json(back), *await quality.drain(back, 1.0)]
            for msg in msgs:
                validate(msg)
                seen[msg["type"]] = seen.get(msg["type"], 0) + 1
            assert any(m.get("recovered") is True for m in msgs)

        run(body(), seconds=60)
    wanted = {"initial_state", "location_update", "status_change", "rider_approaching",
              "rider_arrived", "fix_filtered", "location_batch_result"}  # fmt: skip
    assert wanted <= set(seen), seen
