"""A shard's worker process (or the outbox dispatcher's) is SIGKILLed under load; Ray restarts
it, the shard reloads its sessions from the store, and nothing acknowledged or owed is lost.

The test process runs the session's Ray instance, so it finds the server's actors by name in the
server's namespace (through engine.runtime.ray_cluster) and kills their processes with a real
SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from engine.domain.routing import shard_of
from engine.runtime import ray_cluster as ray_runtime
from engine.settings import Settings
from harness import ServerProcess
from sim.stubs import IntegrationStubs
from tests.e2e.clients import recv_json, ws_connect
from tests.e2e.durability import RiderStream, verify_durable
from tests.support import timeout, until

ServerFactory = Callable[..., AbstractContextManager[ServerProcess]]
SHARDS = 2


@pytest.fixture
def stubs() -> Iterator[IntegrationStubs]:
    with IntegrationStubs() as s:
        yield s


def _settings(srv: ServerProcess) -> Settings:
    return Settings(ray_namespace=srv.env["TRACKING_RAY_NAMESPACE"], shards=SHARDS)


def test_shard_worker_killed_under_load_loses_nothing_and_answers_again(
    server_factory: ServerFactory, stubs: IntegrationStubs, record_property: Callable[..., None]
) -> None:
    stream = RiderStream("", n=8, steps=40)
    stubs.notifications.set_failing(503, seconds=3)  # some calls still owed at the kill
    with server_factory(TRACKING_SHARDS=str(SHARDS), **stubs.env()) as srv:
        stream.secret = srv.secret
        settings = _settings(srv)
        victim = 0
        victim_key = f"shard-{victim:03d}"  # as engine.runtime.ray_cluster.process_ids names it
        old_pid = ray_runtime.process_ids(settings)[victim_key]

        async def scenario() -> float:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=timeout(30)) as client:
                await stream.start_sessions(client)
                on_victim = [r for r in stream.rides
                             if shard_of(r.tracking_id, SHARDS) == victim]
                assert on_victim, "no session landed on the shard to kill"
                probe = on_victim[0].tracking_id
                watching = await ws_connect(srv, probe)
                seen = asyncio.create_task(_watch_until_delivered(watching))
                riding = asyncio.create_task(stream.run(client))
                assert await until(lambda: stream.acked_total() >= 80, 60)
                os.kill(old_pid, signal.SIGKILL)
                killed_at = time.monotonic()
                # Recovery: until a read of a session on the killed shard answers again.
                while (await client.get(f"/tracking/{probe}")).status_code != 200:
                    assert time.monotonic() - killed_at < timeout(60), "shard never came back"
                    await asyncio.sleep(0.02)
                recovery = time.monotonic() - killed_at
                await riding
                assert all(r.done for r in stream.rides)
                await verify_durable(client, stream, stubs, srv.service_secret)
                # The watcher of a session on the killed shard: the gateway watched again and
                # pushed the current state, but never an event the socket already had.
                first, events = await asyncio.wait_for(seen, timeout(30))
                await watching.close()
                assert len(set(events)) == len(events), f"an event came twice: {events}"
                seqs = [seq for _, seq in events]
                assert seqs == sorted(seqs), f"events out of order: {events}"
                assert seqs[-1] == on_victim[0].acked[-1].seq
                # Every change after the socket's initial_state, none missing: also the ones a
                # shard killed between its commit and its publish never sent (replayed).
                locations = [seq for kind, seq in events if kind == "location_update"]
                assert locations == list(range(first + 1, seqs[-1] + 1)), events
                return recovery

        recovery_s = asyncio.run(scenario())
        new_pid = ray_runtime.process_ids(settings)[victim_key]
        assert new_pid != old_pid  # it really was a new worker process
        health = httpx.get(srv.base_url + "/health", timeout=timeout(30))
        assert health.status_code == 200, health.text
    # A figure, not a check (tests never assert wall-clock time): see the report with `-s`.
    record_property("shard_recovery_s", round(recovery_s, 3))
    print(f"\nshard recovery after SIGKILL: {recovery_s:.2f} s "
          f"(riders saw {stream.unanswered} unanswered requests)")


async def _watch_until_delivered(ws: ClientConnection) -> tuple[int, list[tuple[str, int]]]:
    """The initial_state's seq, and (type, seq) of every location_update and status_change
    after it, up to DELIVERED."""
    first = await recv_json(ws)
    assert first["type"] == "initial_state", first
    events: list[tuple[str, int]] = []
    while True:
        msg = await recv_json(ws, 60)
        if msg["type"] in ("location_update", "status_change"):
            events.append((msg["type"], msg["data"]["seq"]))
            if msg["type"] == "status_change" and msg["data"]["status"] == "DELIVERED":
                return int(first["data"]["seq"]), events


def test_dispatcher_killed_is_restarted_by_ray_and_delivers_what_is_owed(
    server_factory: ServerFactory, stubs: IntegrationStubs
) -> None:
    stream = RiderStream("", n=4, steps=12)
    stubs.notifications.set_failing(503)  # everything owed to it piles up
    with server_factory(TRACKING_SHARDS=str(SHARDS), **stubs.env()) as srv:
        stream.secret = srv.secret
        settings = _settings(srv)

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=timeout(30)) as client:
                await stream.start_sessions(client)
                await stream.run(client)
                assert await until(lambda: len(stubs.notifications.requests) >= 4, 30)
                # The dispatcher's pid: the actor answers `pid()` like a shard does.
                pid = ray_runtime.process_ids(settings)["outbox"]
                os.kill(pid, signal.SIGKILL)
                stubs.notifications.clear_failing()
                # Nobody calls start() again: the restarted actor resumes by itself.
                await verify_durable(client, stream, stubs, srv.service_secret)

        asyncio.run(scenario())
