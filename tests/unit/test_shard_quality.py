"""A shard's side of tracking quality: dropped fixes answered with the view and a reason, batches,
milestones as events, resuming watchers from the journal, presence reported by gateways, and all
of it surviving a reload."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from engine.clock import ManualClock
from engine.domain.status import Status
from engine.host import ShardHost
from engine.protocol import (
    BatchAnswer,
    BatchFix,
    Channel,
    EventKind,
    FixResult,
    Get,
    Update,
    UpdateBatch,
    Watch,
    Watched,
)
from engine.store.base import NullStore
from tests.unit.test_shard import DROP, Harness, err, h, hs, ok

__all__ = ["h", "hs"]  # fixtures
M_PER_DEG = 111_195.0
PICKED_UP, IN_TRANSIT, DELIVERED = Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED
M = EventKind.MILESTONE


def away(metres: float) -> tuple[float, float]:
    return DROP[0] + metres / M_PER_DEG, DROP[1]


def fix(metres: float, at: float, status: Status | None = None) -> BatchFix:
    return BatchFix(*away(metres), status, at, None)


def update(h: Harness, tid: str, metres: float, status: Status | None = None,
           at: float | None = None) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = ok(h.one(Update(tid, *away(metres), status, "RIDER-1", at)))
    return result


def batch(h: Harness, tid: str, fixes: list[BatchFix]) -> BatchAnswer:
    answer = ok(h.one(UpdateBatch(tid, fixes, "RIDER-1")))
    assert isinstance(answer, BatchAnswer)
    return answer


def test_a_dropped_fix_answers_the_unchanged_view_with_the_reason(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    view = update(h, tid, 2000)
    dropped = ok(h.one(Update(tid, 0.0, 0.0, None, "RIDER-1", h.clock())))
    assert dropped.pop("filtered") == "null_island"
    assert dropped == view
    _, seen = h.events("gw-1")
    assert [(e.kind, e.seq) for e in seen] == [(EventKind.LOCATION, 2)]  # never broadcast
    assert h.stats().filtered == {"null_island": 1}


def test_the_status_of_a_dropped_fix_applies(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    before = update(h, tid, 2000)
    h.clock.advance(5)
    view = ok(h.one(Update(tid, 0.0, 0.0, PICKED_UP, "RIDER-1", h.clock())))
    assert view["filtered"] == "null_island"
    assert (view["status"], view["seq"]) == ("PICKED_UP", 3)
    assert view["current_location"] == before["current_location"]
    _, seen = h.events("gw-1")
    assert [(e.kind, e.seq) for e in seen][-2:] == [(EventKind.LOCATION, 3), (EventKind.STATUS, 3)]


def test_a_batch_is_judged_fix_by_fix_in_one_command(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    t = h.clock()
    answer = batch(h, tid, [
        fix(3000, t - 60), fix(2800, t - 50, PICKED_UP), fix(2800, t - 50),
        fix(20000, t - 40), fix(2700, t - 30), fix(2750, t - 35),
    ])  # fmt: skip
    assert answer.fixes == [
        FixResult(True, 2), FixResult(True, 3), FixResult(False, None, "duplicate"),
        FixResult(False, None, "too_fast"), FixResult(True, 4), FixResult(True, 5, None, True),
    ]  # fmt: skip
    view = orjson.loads(answer.view)
    assert view["seq"] == 5
    assert view["current_location"]["timestamp"] == int(t - 30)  # the late fix did not move it
    _, seen = h.events("gw-1")
    assert [(e.kind, e.seq) for e in seen] == [
        (EventKind.LOCATION, 2), (EventKind.LOCATION, 3), (EventKind.STATUS, 3),
        (EventKind.LOCATION, 4), (EventKind.LOCATION, 5),
    ]  # fmt: skip
    stats = h.stats()
    assert (stats.filtered, stats.late_fixes) == ({"duplicate": 1, "too_fast": 1}, 1)


def test_a_batch_with_a_refused_status_step_changes_nothing(h: Harness) -> None:
    tid = h.start()
    t = h.clock()
    code, detail = err(h.one(UpdateBatch(tid, [
        fix(3000, t - 30), fix(2900, t - 20, PICKED_UP), fix(2800, t - 10, DELIVERED),
    ], "RIDER-1")))  # fmt: skip
    assert code == "conflict"
    assert detail.startswith("fixes[2]: ")
    assert "IN_TRANSIT" in detail
    assert ok(h.get(tid))["seq"] == 1
    assert err(h.one(UpdateBatch(tid, [fix(10, t)], "RIDER-2")))[0] == "forbidden"


def milestone_run(h: Harness, tid: str) -> None:
    """A delivery with every kind of change: late, status-only, both milestones."""
    t = h.clock()
    update(h, tid, 5000, PICKED_UP, t - 600)
    update(h, tid, 4000, IN_TRANSIT, t - 500)
    update(h, tid, 450, None, t - 200)
    update(h, tid, 480, None, t - 250)  # late
    update(h, tid, 400, None, t - 150)  # approaching
    ok(h.one(Update(tid, 0.0, 0.0, None, "RIDER-1", h.clock())))  # dropped, no change
    update(h, tid, 20, None, t - 100)
    update(h, tid, 10, None, t - 90)  # arrived
    ok(h.one(Update(tid, 0.0, 0.0, DELIVERED, "RIDER-1", h.clock())))  # status only


def test_milestones_are_events_once_each(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    milestone_run(h, tid)
    _, seen = h.events("gw-1")
    fired = [(e.seq, e.msg["type"], e.msg["data"]["proximity"]) for e in seen if e.kind is M]
    assert fired == [(6, "rider_approaching", "approaching"), (8, "rider_arrived", "arrived")]
    assert h.stats().milestones == {"approaching": 1, "arrived": 1}


def test_a_resuming_watcher_gets_exactly_what_a_live_one_got(hs: Harness) -> None:
    tid = hs.start()
    hs.watch(tid, "gw-live")
    milestone_run(hs, tid)
    _, live = hs.shard.take("gw-live", 0, 1)
    assert live[-1].seq == 9
    for since in range(1, 10):  # byte for byte, whatever each change was (see milestone_run)
        w = ok(hs.one(Watch(tid, "gw-2", since)))
        assert isinstance(w, Watched)
        assert w.recovered is True
        want = [(e.kind, e.seq, e.frame) for e in live if e.seq > since]
        assert [(e.kind, e.seq, e.frame) for e in w.missed] == want, since
    assert w.missed == []
    # From 0: the start too (what initial_state showed a watcher that came first), then the rest.
    w = ok(hs.one(Watch(tid, "gw-2", 0)))
    assert [(e.kind, e.seq) for e in w.missed[:2]] == [(EventKind.LOCATION, 1)] * 1 + [
        (EventKind.LOCATION, 2)]
    assert orjson.loads(w.missed[0].frame)["data"]["current_location"] is None
    w = ok(hs.one(Watch(tid, "gw-2", 10)))  # a seq the session never reached
    assert (w.recovered, w.missed) == (False, [])


def test_too_old_or_impossible_positions_are_not_recovered(hs: Harness) -> None:
    tid = hs.start()
    for i in range(5):
        update(hs, tid, 3000 - 10 * i)
    w = ok(hs.one(Watch(tid, "gw", 99)))
    assert (w.recovered, w.missed) == (False, [])
    assert ok(hs.one(Watch(tid, "gw", None))).recovered is None  # not resuming
    hs.shard.cfg = dataclasses.replace(hs.shard.cfg, resume_max=3)
    assert ok(hs.one(Watch(tid, "gw", 2))).recovered is False  # 4 changes missed
    assert ok(hs.one(Watch(tid, "gw", 3))).recovered is True


def test_without_a_journal_there_is_nothing_to_replay() -> None:
    h = Harness(NullStore, ManualClock())
    tid = h.start()
    update(h, tid, 100)
    assert ok(h.one(Watch(tid, "gw", 1))).recovered is False
    assert ok(h.one(Watch(tid, "gw", 2))).recovered is True  # nothing missed


def test_milestones_and_locations_survive_a_reload(hs: Harness) -> None:
    tid = hs.start()
    milestone_run(hs, tid)
    view = ok(hs.get(tid))
    history = hs.history(tid)
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert ok(hs.get(tid)) == view
    assert view["proximity"] == "arrived"
    assert hs.history(tid) == history
    assert [(i.seq, i.late, i.milestones) for i in history if i.late or i.milestones] == [
        (5, True, ()), (6, False, ("approaching",)), (8, False, ("arrived",)),
    ]  # fmt: skip
    assert history[-1].lat is None  # the status-only change


def test_a_checkpoint_keeps_the_location_time_and_milestones(hs: Harness) -> None:
    tid = hs.start()
    milestone_run(hs, tid)
    view = ok(hs.get(tid))
    assert ShardHost(hs.shard, sweep_interval_s=60, background=False).checkpoint()
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert ok(hs.get(tid)) == view


@pytest.mark.parametrize("n", [1, 3])
def test_presence_is_summed_over_gateways(h: Harness, n: int) -> None:
    tid, other = h.start("ORD-1"), h.start("ORD-2")
    host = ShardHost(h.shard, sweep_interval_s=60, background=False)
    host.call([Watch(tid, "gw-a")], Channel("gw-a", 0, n, {tid: n}))
    host.call([Watch(tid, "gw-b")], Channel("gw-b", 0, 2, {tid: 2, "TRK-unknown": 1}))
    assert ok(h.one(Get(tid, True)))["watchers"] == n + 2
    assert ok(h.one(Get(other, True)))["watchers"] == 0
    assert "watchers" not in ok(h.get(tid))  # only where asked for
    assert h.stats().presence == (1, n + 2, n + 2)
    host.poll(Channel("gw-a", 0, 0, {tid: 0}), 0)
    assert ok(h.one(Get(tid, True)))["watchers"] == 2
    # A gateway that stops polling is forgotten, and so are its sockets.
    h.clock.advance(200)
    host.poll(Channel("gw-a", 0, 0), 0)
    h.shard.sweep()
    assert ok(h.one(Get(tid, True)))["watchers"] == 0
    assert h.stats().presence == (0, 0, 0)


def test_a_resume_in_the_batch_that_made_the_changes_replays_them(hs: Harness) -> None:
    # The replay reads the journal: it is answered once the batch is journaled, and ends at
    # the seq the watch saw; later changes of the batch reach the gateway as events (which
    # also carry the earlier ones: its watchers skip what their initial_state covered).
    tid = hs.start()
    hs.watch(tid, "gw-live")
    t = hs.clock()
    results = hs.shard.handle([
        Update(tid, *away(900), None, "RIDER-1", t - 30),
        Update(tid, *away(800), None, "RIDER-1", t - 20),
        Watch(tid, "gw-2", 1),
        Update(tid, *away(700), None, "RIDER-1", t - 10),
    ])  # fmt: skip
    w = ok(results[2])
    assert isinstance(w, Watched)
    assert (w.seq, w.recovered) == (3, True)
    assert [(e.kind, e.seq) for e in w.missed] == [(EventKind.LOCATION, 2), (EventKind.LOCATION, 3)]
    _, events = hs.shard.take("gw-2", 0, 1)
    assert [e.seq for e in events if e.seq > w.seq] == [4]
