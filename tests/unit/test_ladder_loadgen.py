"""The pure parts of the locust users: routes, the delivery pool, push matching, shapes."""

from __future__ import annotations

import random

import pytest

from loadtests.plan import MIN_UPDATES, plan_delivery, status_schedule
from loadtests.pool import REMEMBERED_SENDS, DeliveryPool, LiveDelivery
from loadtests.push import (
    GAP,
    NO_SEQ,
    ORDER,
    OVERDUE,
    STREAM,
    UNMATCHED,
    Latency,
    PushCursor,
    view_seq,
)
from loadtests.shapes import Stage, launch_spike, step_ladder, tick_at

STATUSES = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"]


@pytest.mark.parametrize("updates", [MIN_UPDATES, 5, 12, 20, 101])
def test_a_plan_walks_the_statuses_one_step_at_a_time_and_ends_at_the_dropoff(
    updates: int,
) -> None:
    plan = plan_delivery(random.Random(updates), 5.6037, -0.1870, updates)
    assert len(plan.steps) == updates
    status = "ASSIGNED"
    for step in plan.steps:
        if step.status is not None:
            assert STATUSES.index(step.status) == STATUSES.index(status) + 1
            status = step.status
    assert status == "DELIVERED"
    assert plan.steps[-1].status == "DELIVERED"
    assert plan.steps[0].status is None
    assert (plan.steps[-1].lat, plan.steps[-1].lng) == (plan.dropoff_lat, plan.dropoff_lng)
    assert len({(s.lat, s.lng) for s in plan.steps}) == updates
    assert all(-90 <= s.lat <= 90 and -180 <= s.lng <= 180 for s in plan.steps)


def test_plans_are_reproducible_from_the_seed_and_stay_near_the_center() -> None:
    a = plan_delivery(random.Random("7:rider:3"), 5.6, -0.19, 20)
    b = plan_delivery(random.Random("7:rider:3"), 5.6, -0.19, 20)
    c = plan_delivery(random.Random("7:rider:4"), 5.6, -0.19, 20)
    assert a == b
    assert a != c
    assert all(abs(s.lat - 5.6) < 0.05 and abs(s.lng + 0.19) < 0.05 for s in a.steps)


def test_too_few_updates_cannot_walk_the_statuses() -> None:
    with pytest.raises(ValueError, match="at least"):
        status_schedule(MIN_UPDATES - 1)


def test_the_pool_spreads_watchers_over_live_deliveries() -> None:
    pool = DeliveryPool(random.Random(1))
    assert pool.pick() is None
    deliveries = [pool.open(f"TRK-{i}") for i in range(3)]
    picked = []
    for _ in range(6):
        d = pool.pick()
        assert d is not None
        pool.attach(d)
        picked.append(d)
    assert sorted(d.watchers for d in deliveries) == [2, 2, 2]
    assert pool.peak_watching == 6
    pool.finish(deliveries[0])
    assert deliveries[0].finished
    assert pool.live_count() == 2
    assert all(pool.pick() is not deliveries[0] for _ in range(20))
    for d in picked:
        pool.detach(d)
    assert (pool.watching, pool.peak_watching, pool.watch_sessions) == (0, 6, 6)
    assert (pool.started, pool.finished) == (3, 1)
    pool.finish(deliveries[0])
    assert pool.finished == 1


def test_a_delivery_remembers_a_bounded_number_of_sends() -> None:
    d = LiveDelivery("TRK-x")
    for seq in range(2, REMEMBERED_SENDS + 12):
        d.record_send(seq, float(seq))
    assert len(d.sent_at) == REMEMBERED_SENDS
    assert d.send_time(2) is None
    assert d.send_time(REMEMBERED_SENDS + 11) == float(REMEMBERED_SENDS + 11)
    d.record_send(REMEMBERED_SENDS + 11, 1e6)  # a retried send of the same seq: latest wins
    assert d.send_time(REMEMBERED_SENDS + 11) == 1e6


def test_view_seq_accepts_only_integers() -> None:
    assert view_seq({"seq": 3}) == 3
    assert view_seq({"seq": True}) is None
    assert view_seq({"seq": "3"}) is None
    assert view_seq({}) is None
    assert view_seq(None) is None


def cursor_after_sends(*seqs: int, initial: int = 1) -> PushCursor:
    d = LiveDelivery("TRK-y")
    for seq in seqs:
        d.record_send(seq, 10.0 + seq)
    return PushCursor(d, initial)


def test_a_push_is_matched_to_its_send() -> None:
    cursor = cursor_after_sends(2, 3)
    assert cursor.location_update({"seq": 2}, 12.004) == [Latency(2, pytest.approx(4.0))]
    assert cursor.location_update({"seq": 3}, 13.25) == [Latency(3, pytest.approx(250.0))]
    assert cursor.last_seq == 3


def names(outcomes: list[object]) -> list[str]:
    return [getattr(o, "name", "latency") for o in outcomes]


def test_contract_breaches_are_named_problems() -> None:
    cursor = cursor_after_sends(2, 3, 4, 5)
    assert names(cursor.location_update({"lat": 1}, 20.0)) == [NO_SEQ]
    assert names(cursor.location_update({"seq": 1}, 20.0)) == [ORDER]  # not after initial_state
    assert names(cursor.location_update({"seq": 4}, 20.0)) == [GAP, "latency"]
    assert names(cursor.location_update({"seq": 3}, 20.0)) == [ORDER]
    assert names(cursor.location_update({"seq": 4}, 20.0)) == [ORDER]
    assert names(cursor.location_update({"seq": 5}, 20.0)) == ["latency"]
    assert names(cursor.location_update({"seq": 6}, 20.0)) == [UNMATCHED]


def test_a_send_not_pushed_within_the_patience_is_overdue() -> None:
    cursor = cursor_after_sends(2, 3)  # sent at 12.0 and 13.0
    assert cursor.overdue(now=20.0, patience_s=10.0) is None
    problem = cursor.overdue(now=22.5, patience_s=10.0)
    assert problem is not None
    assert problem.name == OVERDUE
    cursor.location_update({"seq": 2}, 22.6)
    cursor.location_update({"seq": 3}, 22.7)
    assert cursor.overdue(now=100.0, patience_s=10.0) is None


def test_ladder_shape_adds_users_every_step_then_ends() -> None:
    stages = step_ladder(step_users=20, steps=3, step_s=60, spawn_rate=10)
    assert tick_at(stages, 0) == (20, 10)
    assert tick_at(stages, 59.9) == (20, 10)
    assert tick_at(stages, 60) == (40, 10)
    assert tick_at(stages, 179) == (60, 10)
    assert tick_at(stages, 180) is None


def test_spike_shape_jumps_holds_and_returns_to_the_fleet() -> None:
    stages = launch_spike(50, 200, spike_at_s=60, spike_hold_s=30, after_s=40,
                          base_spawn_rate=10, spike_spawn_rate=100)
    assert tick_at(stages, 10) == (50, 10)
    assert tick_at(stages, 60) == (250, 100)
    assert tick_at(stages, 95) == (50, 100)
    assert tick_at(stages, 130) is None
    no_after = launch_spike(5, 5, 1, 1, 0, 1, 1)
    assert no_after[-1] == Stage(2, 10, 1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: step_ladder(0, 3, 60, 10),
        lambda: step_ladder(10, 3, 0, 10),
        lambda: launch_spike(50, 200, 60, 30, -1, 10, 100),
        lambda: launch_spike(50, 200, 60, 30, 0, 10, 0),
    ],
)
def test_shapes_refuse_nonsense(build: object) -> None:
    with pytest.raises(ValueError, match="must"):
        build()  # type: ignore[operator]


def test_messages_decide_what_is_recorded_and_whether_to_keep_watching() -> None:
    cursor = cursor_after_sends(2)
    outcomes, keep = cursor.message({"type": "location_update", "data": {"seq": 2}}, 12.0)
    assert (names(outcomes), keep) == (["latency"], True)
    assert cursor.message({"type": "pong"}, 12.0) == ([], True)
    assert cursor.message({"type": "status_change", "data": {"status": "IN_TRANSIT"}}, 1) == (
        [], True
    )
    assert cursor.message({"type": "status_change", "data": {"status": "DELIVERED"}}, 1) == (
        [], False
    )
    outcomes, keep = cursor.message({"type": "error", "message": "Tracking session expired"}, 1)
    assert (names(outcomes), keep) == ([STREAM], False)
    assert "expired" in outcomes[0].message  # type: ignore[union-attr]
    outcomes, keep = cursor.message(None, 1)
    assert (names(outcomes), keep) == ([STREAM], True)
