"""The whole service crashes (SIGKILL) mid-stream and restarts on the same data dir.

How the crash is staged: the servers join the test session's Ray instance, where shards and the
outbox dispatcher are detached actors, so SIGKILLing the API process alone leaves them running
with their memory (a restart in the same namespace would just find them again, which proves
nothing about the store). So after the SIGKILL the test also kills that namespace's actors (as
abruptly: `ray.kill`), then starts the new server in a fresh namespace on the same data dir and
secret: every shard and the dispatcher start from the SQLite files alone. Running the server
standalone (its own Ray) would do the same at the cost of a second Ray instance (~0.7 GB and
5-8 s here) and of Ray daemons that a SIGKILL of the server's process group may orphan.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness import ServerProcess
from sim.stubs import IntegrationStubs
from tests.e2e.durability import RiderStream, kill_namespace, verify_durable
from tests.support import SERVER_STARTUP_S, timeout, until

SHARDS = 2


@pytest.fixture
def stubs() -> Iterator[IntegrationStubs]:
    with IntegrationStubs() as s:
        yield s


def _server(ray_address: str | None, namespace: str, data_dir: Path, secret: str,
            stubs: IntegrationStubs) -> ServerProcess:
    env = {"TRACKING_SHARDS": str(SHARDS), **stubs.env()}
    if ray_address is None:
        env["TRACKING_ENGINE"] = "local"  # shards and dispatcher live in the server process
    else:
        env.update(TRACKING_RAY_ADDRESS=ray_address, TRACKING_RAY_NAMESPACE=namespace)
    return ServerProcess(env=env, data_dir=str(data_dir), secret=secret,
                         service_secret=secret + "-service",
                         log_path=str(data_dir.parent / f"server-{namespace}.log"),
                         startup_timeout_s=timeout(SERVER_STARTUP_S))


def _crash_and_restart(first: ServerProcess, second: ServerProcess, stubs: IntegrationStubs,
                       after_kill: Callable[[], None]) -> None:
    stream = RiderStream(first.secret, n=8, steps=40)
    # The notification service answers 503 until after the crash, so calls are still owed
    # (pending in the outbox) when the service dies.
    stubs.notifications.set_failing(503)
    first.start()

    async def before_crash() -> None:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=timeout(10)) as client:
            await stream.start_sessions(client)
            riding = asyncio.create_task(stream.run(client))
            # Crash once the stream is well under way, with requests in flight.
            assert await until(lambda: stream.acked_total() >= 80, 60)
            await asyncio.to_thread(first.kill)
            # Let the riders hit the dead server for a moment, then stop them.
            assert await until(lambda: stream.unanswered >= 8, 30)
            stream.stopped = True
            await riding

    asyncio.run(before_crash())
    assert not all(r.done for r in stream.rides), "the crash came after the stream ended"
    after_kill()
    acked_before = stream.acked_total()

    second.start()
    stubs.notifications.clear_failing()
    stream.stopped = False

    async def after_restart() -> None:
        async with httpx.AsyncClient(base_url=second.base_url, timeout=timeout(30)) as client:
            # Every acknowledged update survived, and the sessions carry on from there.
            await stream.run(client)
            assert all(r.done for r in stream.rides)
            await verify_durable(client, stream, stubs, second.service_secret)

    asyncio.run(after_restart())
    assert stream.acked_total() > acked_before


def test_sigkill_mid_stream_then_restart_keeps_every_acknowledged_update_and_owed_call(
    ray_address: str, tmp_path: Path, stubs: IntegrationStubs
) -> None:
    data_dir = tmp_path / "data"
    secret = secrets.token_urlsafe(32)
    first_ns, second_ns = ("dur-" + uuid.uuid4().hex[:8] for _ in range(2))
    first = _server(ray_address, first_ns, data_dir, secret, stubs)
    second = _server(ray_address, second_ns, data_dir, secret, stubs)
    try:
        _crash_and_restart(first, second, stubs, lambda: kill_namespace(first_ns, SHARDS))
    finally:
        first.stop()
        second.stop()
        kill_namespace(first_ns, SHARDS)
        kill_namespace(second_ns, SHARDS)


def test_local_engine_sigkill_then_restart_loses_nothing(
    tmp_path: Path, stubs: IntegrationStubs
) -> None:
    # TRACKING_ENGINE=local: the SIGKILL takes the shards and the dispatcher down with the API.
    data_dir = tmp_path / "data"
    secret = secrets.token_urlsafe(32)
    first = _server(None, "local-1", data_dir, secret, stubs)
    second = _server(None, "local-2", data_dir, secret, stubs)
    try:
        _crash_and_restart(first, second, stubs, lambda: None)
    finally:
        first.stop()
        second.stop()
