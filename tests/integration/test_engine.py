"""The engine on a real local Ray instance and in-process: same behaviour on both."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from engine.client import EngineClient
from engine.domain.errors import Conflict, Expired, Forbidden, NotFound, Unavailable
from engine.domain.status import Status
from engine.domain.view import View
from engine.protocol import EXPIRED_MESSAGE, Channel, Event, EventKind, decode_view
from tests.integration.conftest import EngineUnderTest, run
from tests.support import RecordingSink, timeout, until

DROP = (5.6037, -0.1869)
LOCATION, STATUS, EXPIRED = EventKind.LOCATION, EventKind.STATUS, EventKind.EXPIRED


async def _start(c: EngineClient, i: int, rider: str | None = None) -> View:
    return decode_view(await c.start(f"ORD-{i}", rider or f"RIDER-{i}", *DROP, None))


async def _events_for(
    c: EngineClient, shard: int, gw: str, want: int, deadline_s: float
) -> list[Event]:
    """Poll gateway `gw`'s queue on `shard` (as a gateway's event channel does) until `want`
    events came, or the deadline passed."""
    got: list[Event] = []
    ack = 0
    end = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        feed = await c.transport.poll(shard, Channel(gw, ack, 0), 0.5)
        got.extend(feed.events)
        ack = feed.base + len(feed.events)
    return got


def test_sessions_spread_over_all_shards_and_read_back(eut: EngineUnderTest) -> None:
    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            views = await asyncio.gather(*(_start(c, i) for i in range(150)))
            shards = {c.shard_for(v.tracking_id) for v in views}
            assert shards == set(range(c.n_shards))
            for v in views:
                got = decode_view(await c.get(v.tracking_id))
                assert got == v
                assert c.shard_for(v.tracking_id) == c.shard_for(v.order_id)

    run(go())


def test_200_concurrent_updates_to_one_session_give_gap_free_seqs(eut: EngineUnderTest) -> None:
    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            tid = (await _start(c, 1)).tracking_id
            views = await asyncio.gather(
                *(c.update(tid, 5.6 + i * 1e-5, -0.18, None, "RIDER-1") for i in range(200))
            )
            assert sorted(decode_view(x).seq for x in views) == list(range(2, 202))
            assert decode_view(await c.get(tid)).seq == 201
            history = await c.history(tid, 0, 1000)
            assert [h.seq for h in history] == list(range(1, 202))

    run(go())


def test_gateway_gets_every_event_of_watched_session_in_order_and_none_of_others(
    eut: EngineUnderTest,
) -> None:
    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            ta = (await _start(c, 1)).tracking_id
            tb = decode_view(await c.start("ORD-2", "RIDER-2", *DROP, None)).tracking_id
            gw = "gw-test"
            watched = await c.watch(ta, gw)
            assert watched.seq == 1
            assert decode_view(watched.view) == decode_view(await c.get(ta))
            await c.watch(tb, "gw-other")
            statuses = [None] * 10 + [Status.PICKED_UP] + [None] * 10 + [Status.IN_TRANSIT]
            for st in statuses:
                await c.update(ta, 5.61, -0.18, st, "RIDER-1")
                await c.update(tb, 5.61, -0.18, None, "RIDER-2")
            events = await _events_for(c, c.shard_for(ta), gw, 24, timeout(20))
            assert {e.tracking_id for e in events} == {ta}
            kinds_seqs = [(e.kind, e.seq) for e in events]
            updates = [s for k, s in kinds_seqs if k is LOCATION]
            assert updates == list(range(2, 2 + len(statuses)))
            # each status change comes right after the location_update of the same seq
            for i, (k, s) in enumerate(kinds_seqs):
                if k is STATUS:
                    assert kinds_seqs[i - 1] == (LOCATION, s)
            assert [s for k, s in kinds_seqs if k is STATUS] == [12, 23]
            await c.unwatch(ta, gw)
            await c.update(ta, 5.62, -0.18, None, "RIDER-1")
            after = await c.transport.poll(c.shard_for(ta), Channel(gw, 0, 0), 0.3)
            assert [e for e in after.events if e.seq > 23] == []

    run(go())


def test_event_channel_brings_own_and_others_events_once_in_order(
    eut: EngineUnderTest,
) -> None:
    """Events of this process's calls ride on their replies; other processes' come by poll."""

    async def go() -> None:
        async with eut.engine() as engine:
            mine = engine.client
            other = EngineClient(mine.transport)  # stands for another API process
            sink = RecordingSink(connections=3)
            mine.open_events("gw-mine", sink)
            try:
                tid = (await _start(mine, 1)).tracking_id
                await mine.watch(tid, "gw-mine")
                for i in range(10):
                    await mine.update(tid, 5.61, -0.18, None, "RIDER-1")
                    # this process's own events are delivered with the reply, before it returns
                    assert [e.seq for e in sink.events if e.kind is LOCATION][-1] == 2 + 2 * i
                    await other.update(tid, 5.62, -0.18, None, "RIDER-1")
                assert await until(lambda: len(sink.events) >= 20, 20)
                assert [(e.kind, e.seq) for e in sink.events] == [
                    (LOCATION, s) for s in range(2, 22)
                ]
                assert sink.resyncs == []
                stats = await mine.stats()
                assert stats.total_websocket_connections == sink.connections
                assert stats.api_processes == 1  # only `mine` has an event channel open
            finally:
                await mine.close_events()

    run(go())


def test_rules_hold_across_shards(eut: EngineUnderTest) -> None:
    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            v1 = decode_view(await c.start("ORD-X", "RIDER-9", *DROP, "+233501234567"))
            with pytest.raises(Conflict):
                await c.start("ORD-X", "RIDER-8", *DROP, None)
            v2 = decode_view(await c.start("ORD-Y", "RIDER-9", *DROP, None))
            newest = decode_view(await c.rider_session("RIDER-9"))
            assert newest.tracking_id in {v1.tracking_id, v2.tracking_id}
            assert newest.started_at >= v1.started_at
            with pytest.raises(NotFound):
                await c.rider_session("RIDER-none")
            with pytest.raises(Forbidden):
                await c.update(v1.tracking_id, 5.6, -0.18, None, "RIDER-8")
            with pytest.raises(Conflict, match="allowed next status is PICKED_UP"):
                # from ASSIGNED, by a superadmin
                await c.update(v1.tracking_id, 5.6, -0.18, Status.DELIVERED, None)
            with pytest.raises(NotFound):
                await c.get("TRK-doesnotexist000000000")
            stats = await c.stats()
            assert stats.total_active_sessions == 2
            assert stats.status_distribution["ASSIGNED"] == 2

    run(go())


def test_sessions_expire_and_watchers_are_told(eut: EngineUnderTest) -> None:
    eut.with_settings(session_ttl_s=1.0, purge_after_s=600.0)

    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            tid = (await _start(c, 1)).tracking_id
            await c.watch(tid, "gw-x")
            events = await _events_for(c, c.shard_for(tid), "gw-x", 1, timeout(20))
            assert [(e.tracking_id, e.kind) for e in events] == [(tid, EXPIRED)]
            assert events[0].frame == EXPIRED_MESSAGE
            with pytest.raises(Expired):
                await c.get(tid)
            with pytest.raises(Expired):
                await c.update(tid, 5.6, -0.18, None, "RIDER-1")
            # an expired session no longer blocks its order
            await c.start("ORD-1", "RIDER-1", *DROP, None)

    run(go())


@pytest.mark.ray
def test_second_process_joining_the_cluster_sees_the_same_sessions(
    ray_eut: EngineUnderTest,
) -> None:
    eut = ray_eut

    async def go() -> str:
        async with eut.engine() as engine:
            return (await _start(engine.client, 1)).tracking_id

    tid = run(go())
    # Another process (an API worker) joins the same cluster through the same assembly point.
    code = (
        "import asyncio\n"
        "from engine.protocol import decode_view\n"
        "from engine.runtime import connect, ray_cluster\n"
        "from engine.settings import Settings\n"
        f"s = Settings(engine='ray', shards=3, ray_namespace={eut.settings.ray_namespace!r},"
        f" ray_address={eut.ray_address!r}, data_dir={str(eut.settings.data_dir)!r},"
        f" store_url={eut.settings.store_url!r})\n"
        "async def main():\n"
        "    engine = await connect(s)\n"
        "    try:\n"
        f"        return decode_view(await engine.client.get({tid!r}))\n"
        "    finally:\n"
        "        await engine.close()\n"
        "v = asyncio.run(main())\n"
        "print(v.tracking_id, v.order_id)\n"
        "ray_cluster.shutdown()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout(120),
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [tid, "ORD-1"]


@pytest.mark.ray
def test_killed_shard_process_comes_back_with_its_sessions(ray_eut: EngineUnderTest) -> None:
    eut = ray_eut
    from engine.runtime import ray_cluster

    async def go() -> None:
        async with eut.engine() as engine:
            c = engine.client
            tid = (await _start(c, 1)).tracking_id
            v = decode_view(await c.update(tid, 5.61, -0.18, Status.PICKED_UP, "RIDER-1"))
            name = f"shard-{c.shard_for(tid):03d}"
            pids = ray_cluster.process_ids(eut.settings)
            assert set(pids) == {"shard-000", "shard-001", "shard-002", "outbox"}
            pid = pids[name]
            os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + timeout(60)
            while True:
                try:
                    got = decode_view(await c.get(tid))
                    break
                except Unavailable:
                    assert time.monotonic() < end, "engine did not answer again"
                    await asyncio.sleep(0.2)
            assert got.seq == v.seq
            assert got.status is Status.PICKED_UP
            after = ray_cluster.process_ids(eut.settings)
            assert after[name] != pid
            # only the killed shard was restarted
            assert {k: p for k, p in after.items() if k != name} == {
                k: p for k, p in pids.items() if k != name
            }
            updated = decode_view(await c.update(tid, 5.62, -0.18, None, "RIDER-1"))
            assert updated.seq == v.seq + 1

    run(go())
