"""A watcher that never reads must not delay another watcher of the same session."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from api.launcher import ServerProcess
from tests.e2e.clients import Api, initial_state, recv_json, run, send_update, ws_connect
from tests.e2e.netinspect import ESTABLISHED, server_side
from tests.support import timeout

UPDATES = 1500  # enough bytes to fill a stalled peer's socket buffers many times over


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


def stalled_watcher(srv: ServerProcess, tid: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that completes the handshake, then never
    reads again, so the server's writes to it back up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    # A small segment size keeps the server's kernel send buffer small too (Linux sizes it
    # from the MSS), so the stall reaches the server process instead of vanishing into
    # megabytes of loopback buffering.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(timeout(20))
    sock.connect((srv.host, srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /ws/tracking/{tid} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"server closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_stalled_watcher_does_not_delay_another(api: Api) -> None:
    view = api.start_ok()
    tid, rider = view["tracking_id"], view["rider_id"]
    first_seq = view["seq"] + 1
    last_seq = view["seq"] + UPDATES
    statuses = {UPDATES // 3: "PICKED_UP", 2 * UPDATES // 3: "IN_TRANSIT"}
    stalled = stalled_watcher(api.srv, tid)
    stalled_port = stalled.getsockname()[1]
    stream_bytes = 0  # what a watcher that keeps up is sent

    async def drain(ws: Any) -> None:
        # The rider's own socket is a watcher too; keep it read so it is not the slow one.
        while True:
            msg = await recv_json(ws, 120)
            if msg["type"] == "location_update" and msg["data"]["seq"] == last_seq:
                return

    async def watch(ws: Any) -> tuple[list[int], list[str]]:
        nonlocal stream_bytes
        seqs: list[int] = []
        changes: list[str] = []
        while not seqs or seqs[-1] < last_seq:
            msg = await recv_json(ws, 60)
            stream_bytes += len(json.dumps(msg))
            if msg["type"] == "location_update":
                seqs.append(msg["data"]["seq"])
            elif msg["type"] == "status_change":
                changes.append(msg["data"]["status"])
        return seqs, changes

    async def body() -> tuple[list[int], list[str]]:
        # max_queue=None: the healthy client reads off the socket as fast as frames arrive.
        # No client keep-alive pings: the server answers one only after the thousands of
        # pipelined updates queued before it, which says nothing about the server's health.
        opts: dict[str, Any] = {"max_queue": None, "ping_interval": None}
        async with ws_connect(api.srv, tid, **opts) as healthy, \
                ws_connect(api.srv, tid, api.srv.token("rider", rider), **opts) as rider_ws:
            await initial_state(healthy)
            await initial_state(rider_ws)
            watcher = asyncio.create_task(watch(healthy))
            drainer = asyncio.create_task(drain(rider_ws))
            for i in range(UPDATES):
                await send_update(rider_ws, 5.0 + i * 1e-5, -0.18, statuses.get(i))
            await drainer
            return await watcher

    try:
        seqs, changes = run(body(), seconds=300)
        # The stall was real: the server still has bytes queued toward the stalled socket
        # (or gave up on it and closed it), so its writes were blocked while the healthy
        # watcher got everything.
        entry = server_side(api.srv.port, stalled_port)
        if entry is not None and entry.state == ESTABLISHED:
            # Bytes wait in the kernel toward the stalled peer, and the kernel could not have
            # held the whole stream: the server process itself had to cope with the stall.
            assert entry.tx_queue > 0, entry
            assert entry.tx_queue < stream_bytes / 4, (entry, stream_bytes)
    finally:
        stalled.close()
    # The healthy watcher kept up, so it got every update, in order, and both status changes.
    assert seqs == list(range(first_seq, last_seq + 1)), _gaps(seqs)
    assert changes == ["PICKED_UP", "IN_TRANSIT"]
    assert api.view(tid)["seq"] == last_seq


def _gaps(seqs: list[int]) -> str:
    missing = len(set(range(seqs[0], seqs[-1] + 1)) - set(seqs)) if seqs else 0
    return f"{len(seqs)} updates from {seqs[:1]} to {seqs[-1:]}, {missing} missing"
