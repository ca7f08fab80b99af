"""A rider posting to one API process reaches watchers held by another (issue 3, item 1)."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    bearer,
    eventually,
    initial_state,
    recv_type,
    run,
    send_update,
    ws_connect,
)
from tests.e2e.netinspect import serving_process
from tests.support import timeout

Factory = Callable[..., AbstractContextManager[ServerProcess]]
MAX_ATTEMPTS = 40  # connections tried before concluding the sockets never spread
BURST = 8


@pytest.fixture(scope="module")
def two_workers(server_factory: Factory) -> Iterator[ServerProcess]:
    with server_factory(workers=2) as srv:
        yield srv


def _pid_of(srv: ServerProcess, client_port: int) -> int | None:
    assert srv.proc is not None
    return serving_process(srv.proc.pid, srv.port, client_port)


def _http_update(srv: ServerProcess, tid: str, rider: str, lat: float) -> tuple[int, Any]:
    """POST an update over a fresh connection; returns (serving pid, the view)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout(30))
    try:
        conn.request("POST", f"/tracking/update/{tid}", json.dumps({"lat": lat, "lng": 0.0}),
                     {"Content-Type": "application/json", **bearer(srv.token("rider", rider))})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        # Still open (keep-alive), so the worker that answered still holds its end.
        assert conn.sock is not None
        pid = _pid_of(srv, conn.sock.getsockname()[1])
        assert pid is not None, "no server process holds the HTTP connection"
        return pid, json.loads(body)
    finally:
        conn.close()


async def _spread_watchers(stack: AsyncExitStack, srv: ServerProcess, tid: str
                           ) -> dict[int, list[ClientConnection]]:
    """Open watchers until some sit on each of the two worker processes.

    Connections made one after another all go to whichever worker wakes first, so they are
    opened in concurrent bursts, which the kernel hands to both.
    """
    by_pid: dict[int, list[ClientConnection]] = {}
    opened = 0
    while opened < MAX_ATTEMPTS:
        burst = [ws_connect(srv, tid) for _ in range(BURST)]
        sockets = await asyncio.gather(*(stack.enter_async_context(c) for c in burst))
        opened += BURST
        for ws in sockets:
            await initial_state(ws)
            pid = await asyncio.to_thread(_pid_of, srv, ws.local_address[1])
            assert pid is not None, "no server process holds this WebSocket"
            by_pid.setdefault(pid, []).append(ws)
        if len(by_pid) == 2 and all(len(v) >= 2 for v in by_pid.values()):
            break
    spread = {pid: len(v) for pid, v in by_pid.items()}
    assert len(by_pid) == 2, f"{opened} WebSockets never reached a second process: {spread}"
    return by_pid


def test_updates_cross_worker_processes(two_workers: ServerProcess) -> None:
    srv = two_workers
    with Api(srv) as api:
        view = api.start_ok()
    tid, rider = view["tracking_id"], view["rider_id"]

    async def body() -> None:
        async with AsyncExitStack() as stack:
            by_pid = await _spread_watchers(stack, srv, tid)
            watchers = [ws for group in by_pid.values() for ws in group]
            # HTTP posts over fresh connections; each lands on one worker, and the watchers
            # on the other worker must see it too.
            served_by = set()
            expected = []
            for i in range(4):
                pid, v = await asyncio.to_thread(_http_update, srv, tid, rider, 5.0 + i / 100)
                served_by.add(pid)
                expected.append(v)
            # A rider on a WebSocket held by one worker.
            rider_ws = await stack.enter_async_context(
                ws_connect(srv, tid, srv.token("rider", rider)))
            await initial_state(rider_ws)
            rider_pid = await asyncio.to_thread(_pid_of, srv, rider_ws.local_address[1])
            await send_update(rider_ws, 6.0, 0.0)
            for ws in watchers:
                got = [(await recv_type(ws, "location_update"))["data"] for _ in range(5)]
                assert got[:4] == expected
                assert got[4]["current_location"]["lat"] == 6.0
                assert got[4]["seq"] == expected[-1]["seq"] + 1
            # Watchers sit on both workers, so every post had watchers on the other one.
            assert served_by <= set(by_pid), (served_by, set(by_pid))
            assert rider_pid in by_pid, (rider_pid, set(by_pid))

    run(body(), seconds=120)


def test_statistics_count_sockets_in_every_process(two_workers: ServerProcess) -> None:
    srv = two_workers
    with Api(srv) as api:
        view = api.start_ok()

    def from_fresh_connections() -> list[int]:
        # Several fresh HTTP connections: they land on both workers, and all must agree.
        counts = []
        for _ in range(6):
            with Api(srv) as fresh:
                counts.append(fresh.stats()["total_websocket_connections"])
        return counts

    # This module's server serves this module's tests only, and they close every socket they
    # open; each process reports its count with its polls (every <= 2 s), so sockets an
    # earlier test closed may still be counted for a moment. The baseline is therefore known
    # (none), and reaching it is a condition to wait for, not a pause to hope through.
    eventually(from_fresh_connections, lambda counts: all(c == 0 for c in counts),
               "the sockets earlier tests closed should stop being counted", 30)

    async def body() -> None:
        async with AsyncExitStack() as stack:
            by_pid = await _spread_watchers(stack, srv, view["tracking_id"])
            n = sum(len(v) for v in by_pid.values())
            await asyncio.to_thread(
                eventually, from_fresh_connections,
                lambda counts: all(c == n for c in counts),
                f"every process should count all {n} sockets", 30)

    run(body(), seconds=120)
    eventually(from_fresh_connections, lambda counts: all(c == 0 for c in counts),
               "closed sockets should stop being counted in every process", 30)


def test_a_second_server_joined_to_the_same_cluster_shares_sessions(
    server: ServerProcess, server_factory: Factory
) -> None:
    # The shared server is A; B is another `tracking serve` joined to A's Ray namespace, data
    # dir and secret. B joining (and later leaving) must not disturb A.
    a = server
    joined = {
        "TRACKING_RAY_NAMESPACE": a.env["TRACKING_RAY_NAMESPACE"],
        "TRACKING_DATA_DIR": a.data_dir,
        "TRACKING_JWT_SECRET": a.secret,
    }
    with server_factory(**joined) as b, Api(a) as api_a, Api(b) as api_b:
        view = api_a.start_ok()
        tid, rider = view["tracking_id"], view["rider_id"]
        assert api_b.view(tid) == view

        async def body() -> None:
            async with ws_connect(a, tid) as on_a, ws_connect(b, tid) as on_b:
                await initial_state(on_a)
                await initial_state(on_b)
                # Posted to A, then to B: both watchers get both, in that order.
                for api, lat in ((api_a, 5.61), (api_b, 5.62)):
                    resp = await asyncio.to_thread(api.update, tid, lat, -0.18, rider=rider)
                    assert resp.status_code == 200, resp.text
                    for ws in (on_a, on_b):
                        msg = await recv_type(ws, "location_update")
                        assert msg["data"] == resp.json()

        run(body())
    with Api(a) as api_a:
        assert api_a.view(tid)["seq"] == view["seq"] + 2
        assert api_a.start_ok()["status"] == "ASSIGNED"
