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
from engine.errors import Conflict, Expired, Forbidden, NotFound, Unavailable
from engine.shard import Event
from tests.integration.conftest import EngineUnderTest, run
from tests.support import RecordingSink, timeout, until

DROP = (5.6037, -0.1869)


async def _start(c: EngineClient, i: int, rider: str | None = None) -> dict:
    return await c.start(f"ORD-{i}", rider or f"RIDER-{i}", *DROP, None)


async def _events_for(
    c: EngineClient, shard: int, gw: str, want: int, deadline_s: float
) -> list[Event]:
    got: list[Event] = []
    ack = 0
    end = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        _, base, events = await c.poll(shard, gw, ack, 0, 0.5)
        got.extend(events)
        ack = base + len(events)
    return got


def test_sessions_spread_over_all_shards_and_read_back(eut: EngineUnderTest) -> None:
    async def go() -> None:
        c = eut.client()
        views = await asyncio.gather(*(_start(c, i) for i in range(150)))
        shards = {c.shard_for(v["tracking_id"]) for v in views}
        assert shards == set(range(c.n_shards))
        for v in views:
            got = await c.get(v["tracking_id"])
            assert got == v
            assert c.shard_for(v["tracking_id"]) == c.shard_for(v["order_id"])

    run(go())


def test_200_concurrent_updates_to_one_session_give_gap_free_seqs(eut: EngineUnderTest) -> None:
    async def go() -> None:
        c = eut.client()
        v = await _start(c, 1)
        tid = v["tracking_id"]
        views = await asyncio.gather(
            *(c.update(tid, 5.6 + i * 1e-5, -0.18, None, "RIDER-1") for i in range(200))
        )
        assert sorted(x["seq"] for x in views) == list(range(2, 202))
        assert (await c.get(tid))["seq"] == 201
        history = await c.history(tid, 0, 1000)
        assert [h["seq"] for h in history] == list(range(1, 202))

    run(go())


def test_gateway_gets_every_event_of_watched_session_in_order_and_none_of_others(
    eut: EngineUnderTest,
) -> None:
    async def go() -> None:
        c = eut.client()
        a = await _start(c, 1)
        b = await c.start("ORD-2", "RIDER-2", *DROP, None)
        ta, tb = a["tracking_id"], b["tracking_id"]
        gw = "gw-test"
        assert (await c.watch(ta, gw))["seq"] == 1
        await c.watch(tb, "gw-other")
        statuses = [None] * 10 + ["PICKED_UP"] + [None] * 10 + ["IN_TRANSIT"]
        for st in statuses:
            await c.update(ta, 5.61, -0.18, st, "RIDER-1")
            await c.update(tb, 5.61, -0.18, None, "RIDER-2")
        events = await _events_for(c, c.shard_for(ta), gw, 24, timeout(20))
        assert {e[0] for e in events} == {ta}
        kinds_seqs = [(e[1], e[2]) for e in events]
        updates = [s for k, s in kinds_seqs if k == "u"]
        assert updates == list(range(2, 2 + len(statuses)))
        # each status change comes right after the location_update of the same seq
        for i, (k, s) in enumerate(kinds_seqs):
            if k == "s":
                assert kinds_seqs[i - 1] == ("u", s)
        assert [s for k, s in kinds_seqs if k == "s"] == [12, 23]
        await c.unwatch(ta, gw)
        await c.update(ta, 5.62, -0.18, None, "RIDER-1")
        _, _base, after = await c.poll(c.shard_for(ta), gw, 0, 0, 0.3)
        assert [e for e in after if e[2] > 23] == []

    run(go())


def test_event_channel_brings_own_and_others_events_once_in_order(
    eut: EngineUnderTest,
) -> None:
    """Events of this process's calls ride on their replies; other processes' come by poll."""

    async def go() -> None:
        mine = eut.client()
        other = EngineClient(mine.transport)  # stands for another API process
        sink = RecordingSink(connections=3)
        mine.open_events("gw-mine", sink)
        try:
            v = await _start(mine, 1)
            tid = v["tracking_id"]
            await mine.watch(tid, "gw-mine")
            for i in range(10):
                await mine.update(tid, 5.61, -0.18, None, "RIDER-1")
                # this process's own events are delivered with the reply, before it returns
                assert [e[2] for e in sink.events if e[1] == "u"][-1] == 2 + 2 * i
                await other.update(tid, 5.62, -0.18, None, "RIDER-1")
            assert await until(lambda: len(sink.events) >= 20, 20)
            assert [(e[1], e[2]) for e in sink.events] == [("u", s) for s in range(2, 22)]
            assert sink.resyncs == []
            stats = await mine.stats()
            assert stats["total_websocket_connections"] == sink.connections
        finally:
            await mine.close_events()

    run(go())


def test_rules_hold_across_shards(eut: EngineUnderTest) -> None:
    async def go() -> None:
        c = eut.client()
        v1 = await c.start("ORD-X", "RIDER-9", *DROP, "+233501234567")
        with pytest.raises(Conflict):
            await c.start("ORD-X", "RIDER-8", *DROP, None)
        v2 = await c.start("ORD-Y", "RIDER-9", *DROP, None)
        newest = await c.rider_session("RIDER-9")
        assert newest["tracking_id"] in {v1["tracking_id"], v2["tracking_id"]}
        assert newest["started_at"] >= v1["started_at"]
        with pytest.raises(NotFound):
            await c.rider_session("RIDER-none")
        with pytest.raises(Forbidden):
            await c.update(v1["tracking_id"], 5.6, -0.18, None, "RIDER-8")
        with pytest.raises(Conflict, match="allowed next status is PICKED_UP"):
            await c.update(v1["tracking_id"], 5.6, -0.18, "DELIVERED", None)  # from ASSIGNED
        with pytest.raises(NotFound):
            await c.get("TRK-doesnotexist000000000")
        stats = await c.stats()
        assert stats["total_active_sessions"] == 2
        assert stats["status_distribution"]["ASSIGNED"] == 2

    run(go())


def test_sessions_expire_and_watchers_are_told(eut: EngineUnderTest) -> None:
    eut.with_settings(session_ttl_s=1.0, purge_after_s=600.0)

    async def go() -> None:
        c = eut.client()
        v = await _start(c, 1)
        tid = v["tracking_id"]
        await c.watch(tid, "gw-x")
        events = await _events_for(c, c.shard_for(tid), "gw-x", 1, timeout(20))
        assert [(e[0], e[1]) for e in events] == [(tid, "x")]
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
        c = eut.client()
        return str((await _start(c, 1))["tracking_id"])

    tid = run(go())
    code = (
        "import asyncio, sys\n"
        "from engine import ray_runtime\n"
        "from engine.client import EngineClient\n"
        "from engine.settings import Settings\n"
        f"s = Settings(engine='ray', shards=3, ray_namespace={eut.settings.ray_namespace!r},"
        f" ray_address={eut.ray_address!r}, data_dir={str(eut.settings.data_dir)!r})\n"
        "ray_runtime.init(s)\n"
        "c = EngineClient(ray_runtime.RayTransport(s))\n"
        "async def main():\n"
        f"    return await c.get({tid!r})\n"
        "v = asyncio.run(main())\n"
        "print(v['tracking_id'], v['order_id'])\n"
        "ray_runtime.shutdown()\n"
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
    from engine import ray_runtime

    async def go() -> None:
        c = eut.client()
        v = await _start(c, 1)
        tid = v["tracking_id"]
        v = await c.update(tid, 5.61, -0.18, "PICKED_UP", "RIDER-1")
        handle = ray_runtime.find_shards(eut.settings)[c.shard_for(tid)]
        pid = ray_runtime.shard_pid(handle)
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + timeout(60)
        while True:
            try:
                got = await c.get(tid)
                break
            except Unavailable:
                assert time.monotonic() < end, "engine did not answer again"
                await asyncio.sleep(0.2)
        assert got["seq"] == v["seq"]
        assert got["status"] == "PICKED_UP"
        assert ray_runtime.shard_pid(handle) != pid
        after = await c.update(tid, 5.62, -0.18, None, "RIDER-1")
        assert after["seq"] == v["seq"] + 1

    run(go())
