"""A closed watcher socket leaves nothing for the cyclic garbage collector (api/wsproto.py):
reference counting frees it, so the API process's full collections stay short with thousands of
sockets open and closing (api/gcpolicy.py). The real app and protocol under uvicorn, in this
process (local engine), with the watchers in another process."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from pathlib import Path

import httpx
import uvicorn

from api.app import create_app
from engine.settings import Settings
from harness import free_port, mint
from tests.support import timeout, until

SOCKETS = 200
SECRET = "garbage-test-secret-" + "x" * 24
CLIENT = r"""
import asyncio, sys
from websockets.asyncio.client import connect
async def main(url, n):
    socks = []
    for _ in range(n):
        ws = await connect(url, compression=None, proxy=None)
        await ws.recv()  # initial_state
        socks.append(ws)
    print("open", flush=True)
    sys.stdin.readline()
    for ws in socks:
        await ws.close()
    print("closed", flush=True)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _scenario(data_dir: Path) -> tuple[int, int]:
    port = free_port()
    settings = Settings(engine="local", shards=1, data_dir=data_dir, jwt_secret=SECRET)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning",
        ws="api.wsproto:TrackingWebSocketProtocol", ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        assert await until(lambda: server.started, 60)
        token = mint(SECRET, "rider", "R1")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            started = await http.post(
                "/tracking/start", headers={"Authorization": f"Bearer {token}"},
                json={"order_id": "O1", "rider_id": "R1", "dropoff_lat": 5.6, "dropoff_lng": 0},
            )
        tid = started.json()["tracking_id"]
        gc.collect()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"ws://127.0.0.1:{port}/ws/tracking/{tid}",
            str(SOCKETS), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        async with asyncio.timeout(timeout(120)):
            assert await client.stdout.readline() == b"open\n"
            open_now = server.server_state.connections
            opened = len(open_now)
            client.stdin.write(b"\n")
            await client.stdin.drain()
            assert await client.stdout.readline() == b"closed\n"
            await client.wait()
            assert await until(lambda: not server.server_state.connections, 60)
        del open_now
        await asyncio.sleep(0.2)  # let the handlers' tasks finish
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = [o for o in gc.garbage if type(o).__module__.startswith(
                ("api.", "websockets", "uvicorn.protocols.websockets", "starlette"))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        return opened, len(left)
    finally:
        server.should_exit = True
        await serving


def test_closed_sockets_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    opened, left = asyncio.run(_scenario(tmp_path / "data"))
    assert opened >= SOCKETS  # the sockets really were open at once
    assert left == 0
