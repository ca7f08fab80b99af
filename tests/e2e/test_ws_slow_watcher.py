"""A watcher that stops reading must not delay another watcher of the same session, and the
server must cope with it on its own: that watcher's bounded queue drops its older location
updates (it sees a `seq` gap, status changes kept) or it is closed with 1013, while the watcher
that keeps up gets every message, in order (DESIGN.md, "Events flow to the gateways")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness import ServerProcess
from tests.e2e.clients import Api, initial_state, recv_json, run, send_update, uid, ws_connect
from tests.e2e.netinspect import server_side
from tests.support import timeout

# Enough messages to fill what sits between the session and a stalled reader (the kernel
# buffers, the server transport's 64 KiB, the per-socket queue of TRACKING_WS_QUEUE_MAX = 256
# messages) three times over: measured here, the first drop came after about 450.
UPDATES = 1500
# The server pings every 20 s and drops a peer that has not answered 20 s after a ping (api/cli.py);
# a reader that has stopped answers nothing, so the stall ends within this long of its
# handshake, whatever the test's timeout factor: the limit is the server's clock.
STALL_BUDGET_S = 25.0
TOO_SLOW = 1013
# Long ids make every message bigger, so fewer of them fit in the buffers before the queue.
LONG_ID = 120


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


def stalled_socket(srv: ServerProcess) -> socket.socket:
    """A connected TCP socket that buffers next to nothing on our side."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    # A small segment size keeps the server's kernel send buffer small too (Linux sizes it
    # from the MSS), so the stall reaches the server process instead of vanishing into
    # megabytes of loopback buffering.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(timeout(20))
    sock.connect((srv.host, srv.port))
    return sock


@dataclass
class Seen:
    """What one watcher received after its initial_state."""

    seqs: list[int] = field(default_factory=list)  # of location_updates, as received
    changes: list[str] = field(default_factory=list)  # statuses of status_changes
    close_code: int | None = None  # set when the server closed the socket
    stalled_for_s: float = 0.0

    def missing(self, first: int, last: int) -> int:
        return len(set(range(first, last + 1)) - set(self.seqs))

    def summary(self) -> str:
        return (f"{len(self.seqs)} location updates {self.seqs[:1]}..{self.seqs[-1:]}, "
                f"status changes {self.changes}, close {self.close_code}, "
                f"stalled {self.stalled_for_s:.1f} s")


async def read_until(ws: ClientConnection, last_seq: int, seen: Seen) -> Seen:
    """Read until the location_update of `last_seq`, or until the server closes the socket."""
    while not seen.seqs or seen.seqs[-1] < last_seq:
        try:
            msg = await recv_json(ws, 60)
        except ConnectionClosed as exc:
            seen.close_code = exc.rcvd.code if exc.rcvd is not None else None
            return seen
        if msg["type"] == "location_update":
            seen.seqs.append(msg["data"]["seq"])
        elif msg["type"] == "status_change":
            seen.changes.append(msg["data"]["status"])
        else:
            raise AssertionError(f"unexpected message {str(msg)[:200]}")
    return seen


def test_a_stalled_watcher_does_not_delay_another(api: Api) -> None:
    rider = uid("RIDER").ljust(LONG_ID, "r")
    view = api.start_ok(rider, order=uid("ORD").ljust(LONG_ID, "o"))
    tid = view["tracking_id"]
    first_seq = view["seq"] + 1
    last_seq = view["seq"] + UPDATES
    statuses = {UPDATES // 3: "PICKED_UP", 2 * UPDATES // 3: "IN_TRANSIT"}
    kernel_backlog: list[Any] = []  # the server's side of the stalled socket, when it resumed

    async def drain(ws: ClientConnection) -> None:
        # The rider's own socket is a watcher too; keep it read so it is not a slow one.
        await read_until(ws, last_seq, Seen())

    async def stall(ws: ClientConnection, port: int, released: asyncio.Event, since: float
                    ) -> Seen:
        # Not reading: max_queue=2 makes the client stop reading the socket once two frames
        # wait, so the server's writes back up through the tiny buffers into the server.
        # Past the budget the flood may still be going (a slow box): read on regardless.
        budget = STALL_BUDGET_S - (time.monotonic() - since)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), max(0.0, budget))
        seen = Seen(stalled_for_s=time.monotonic() - since)
        kernel_backlog.append(server_side(api.srv.port, port))
        return await read_until(ws, last_seq, seen)

    async def body() -> tuple[Seen, Seen]:
        # The healthy watcher reads off the socket as fast as frames arrive (max_queue=None).
        # No client keep-alive pings on any socket: the server answers one only after the
        # thousands of messages queued before it, which says nothing about its health.
        fast: dict[str, Any] = {"max_queue": None, "ping_interval": None}
        sock = await asyncio.to_thread(stalled_socket, api.srv)
        port = sock.getsockname()[1]
        # No compression: consecutive views deflate to a few bytes each, and the buffers in
        # between would swallow the whole stream without the server ever feeling the stall.
        stalled_opts: dict[str, Any] = {
            "sock": sock, "max_queue": 2, "ping_interval": None, "compression": None,
        }
        async with ws_connect(api.srv, tid, **stalled_opts) as slow:
            stalled_at = time.monotonic()
            await initial_state(slow)
            async with ws_connect(api.srv, tid, **fast) as healthy, \
                    ws_connect(api.srv, tid, api.srv.token("rider", rider), **fast) as rider_ws:
                await initial_state(healthy)
                await initial_state(rider_ws)
                released = asyncio.Event()
                stalled = asyncio.create_task(stall(slow, port, released, stalled_at))
                watcher = asyncio.create_task(read_until(healthy, last_seq, Seen()))
                drainer = asyncio.create_task(drain(rider_ws))
                for i in range(UPDATES):
                    await send_update(rider_ws, 5.0 + i * 1e-5, -0.18, statuses.get(i))
                got = await watcher
                released.set()
                await drainer
                return got, await stalled

    healthy, slow = run(body(), seconds=300)
    # The healthy watcher kept up, so it got every update, in order, and both status changes.
    assert healthy.seqs == list(range(first_seq, last_seq + 1)), healthy.summary()
    assert healthy.changes == ["PICKED_UP", "IN_TRANSIT"], healthy.summary()
    assert api.view(tid)["seq"] == last_seq

    # The stall reached the server process, and it coped: what the stalled watcher got is in
    # order, and either older location updates were dropped for it (a gap) or it was closed
    # as too slow. Without either, the stall never backed up into the server.
    detail = f"stalled watcher: {slow.summary()}; server's kernel backlog then: {kernel_backlog}"
    assert slow.seqs == sorted(set(slow.seqs)), f"out of order: {detail}"
    assert all(first_seq <= s <= last_seq for s in slow.seqs), detail
    if slow.close_code is not None:
        assert slow.close_code == TOO_SLOW, (
            f"closed with {slow.close_code}, not 1013 (too slow): a close for missed keep-alive "
            f"pings means the stall outlasted STALL_BUDGET_S; {detail}")
        return
    assert slow.seqs[-1] == last_seq, detail
    assert slow.missing(first_seq, last_seq) > 0, f"no seq gap: the stall was absorbed; {detail}"
    # Only location updates may be dropped: both status changes still arrive, in order.
    assert slow.changes == ["PICKED_UP", "IN_TRANSIT"], detail
