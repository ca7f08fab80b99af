"""Presence over real WebSockets: how many sockets watch a session, counted across API processes
(two `tracking serve` joined to one cluster), in the view (`?presence=true`) and the stats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager, AsyncExitStack
from typing import Any

from harness import ServerProcess
from tests.e2e.clients import Api, eventually, initial_state, run, ws_connect

Factory = Callable[..., AbstractContextManager[ServerProcess]]


def watchers(api: Api, tid: str) -> int:
    resp = api.http.get(f"/tracking/{tid}", params={"presence": "true"})
    assert resp.status_code == 200, resp.text
    n: int = resp.json()["watchers"]
    return n


def test_sockets_are_counted_in_every_process(server: ServerProcess, server_factory: Factory
                                              ) -> None:  # fmt: skip
    a = server
    joined = {
        "TRACKING_RAY_NAMESPACE": a.env["TRACKING_RAY_NAMESPACE"],
        "TRACKING_DATA_DIR": a.data_dir,
        "TRACKING_JWT_SECRET": a.secret,
    }
    with server_factory(**joined) as b, Api(a) as api_a, Api(b) as api_b:
        view = api_a.start_ok()
        quiet = api_a.start_ok()
        tid = view["tracking_id"]
        assert "watchers" not in api_a.view(tid)  # only where asked for
        assert watchers(api_a, tid) == 0

        async def body() -> None:
            async with AsyncExitStack() as stack:
                on_a = [await stack.enter_async_context(ws_connect(a, tid)) for _ in range(2)]
                on_b = [await stack.enter_async_context(ws_connect(b, tid)) for _ in range(3)]
                for ws in on_a + on_b:
                    await initial_state(ws)
                for api in (api_a, api_b):
                    await asyncio.to_thread(
                        eventually, lambda api=api: watchers(api, tid), lambda n: n == 5,
                        "sockets on both servers", 20,
                    )
                stats = await asyncio.to_thread(api_a.stats)
                presence: dict[str, Any] = stats["presence"]
                assert presence["watching_sockets"] >= 5
                assert presence["max_per_session"] >= 5
                assert watchers(api_a, quiet["tracking_id"]) == 0
                await on_b[0].close()
                await on_a[0].close()
                await asyncio.to_thread(
                    eventually, lambda: watchers(api_b, tid), lambda n: n == 3,
                    "closed sockets are no longer counted", 20,
                )

        run(body(), seconds=90)
        eventually(lambda: watchers(api_a, tid), lambda n: n == 0, "all closed", 20)
