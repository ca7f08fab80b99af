"""Sockets that join a session already watched in this API process start from the view the
process holds (api/gateway.py): each one's stream is initial_state at some seq, then every later
seq once, in order, with no gap at the seam, however the joins fall among the updates."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from harness import ServerProcess
from tests.e2e.clients import Api, recv_json, run, send_update, ws_connect

UPDATES = 60
JOINERS = 12


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


async def _stream(ws: ClientConnection, last: int) -> list[dict[str, Any]]:
    """Messages until the location_update with seq `last`."""
    out = [await recv_json(ws)]
    while not (out[-1]["type"] == "location_update" and out[-1]["data"]["seq"] == last):
        out.append(await recv_json(ws))
    return out


def test_sockets_joining_while_updates_flow_see_no_gap(api: Api) -> None:
    view = api.start_ok()
    tid, rider = view["tracking_id"], view["rider_id"]
    last = view["seq"] + UPDATES

    async def body() -> list[list[dict[str, Any]]]:
        async with AsyncExitStack() as stack:
            reporter = await stack.enter_async_context(
                ws_connect(api.srv, tid, api.srv.token("rider", rider)))
            await recv_json(reporter)
            first = await stack.enter_async_context(ws_connect(api.srv, tid))
            streams = [asyncio.create_task(_stream(first, last))]
            for k in range(UPDATES):
                await send_update(reporter, 5.6 + k * 1e-4, -0.18)
                if k % (UPDATES // JOINERS) == 0:  # joins spread through the stream
                    ws = await stack.enter_async_context(ws_connect(api.srv, tid))
                    streams.append(asyncio.create_task(_stream(ws, last)))
            return list(await asyncio.gather(*streams))

    streams = run(body(), 120)
    views = {m["data"]["seq"]: m["data"] for m in streams[0]}
    starts = set()
    for stream in streams:
        assert stream[0]["type"] == "initial_state", stream[0]
        start = stream[0]["data"]["seq"]
        starts.add(start)
        seqs = [m["data"]["seq"] for m in stream[1:]]
        assert seqs == list(range(start + 1, last + 1)), (start, seqs)
        assert all(m["type"] == "location_update" for m in stream[1:])
        # A joiner starts from the session's view at that seq, as the first watcher saw it.
        assert stream[0]["data"] == views[start]
    assert len(starts) > 2  # the joins really fell at different points of the stream
