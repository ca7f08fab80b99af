"""The simulator's tracking-quality parts, without a server: the noisy phone's schedule, the
stream checks for milestones, flaps and resumed sockets, and the notifications then owed."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sim.checks import StreamCheck
from sim.integrations import expected_calls
from sim.phone import Noise, schedule
from sim.plan import PlanSettings, plan_delivery
from sim.scenario import ScenarioError, parse_scenario
from tests.unit.test_sim_checks import good_stream, view

SETTINGS = PlanSettings()
NOISY = Noise(jump_ratio=0.1, duplicate_ratio=0.1, late_ratio=0.1)


def test_a_clean_phone_sends_the_plan_as_it_is() -> None:
    plan = plan_delivery(3, 0, SETTINGS)
    sends = schedule(plan, 3, Noise())
    assert [s.fixes for s in sends] == [(u,) for u in plan.updates]
    assert {s.kind for s in sends} == {"fix"}


@pytest.mark.parametrize("index", range(6))
def test_a_noisy_phone_sends_every_fix_once_plus_noise(index: int) -> None:
    plan = plan_delivery(3, index, SETTINGS)
    noise = Noise(NOISY.jump_ratio, NOISY.duplicate_ratio, NOISY.late_ratio, 10, 6)
    sends = schedule(plan, 3, noise)
    assert sends == schedule(plan, 3, noise)  # seeded: the same run every time
    real = [u for s in sends if s.kind in ("fix", "late", "batch") for u in s.fixes]
    assert sorted(real, key=lambda u: u.t_s) == list(plan.updates)
    kinds = Counter(s.kind for s in sends)
    assert kinds["batch"] == 1
    [batch] = [s for s in sends if s.kind == "batch"]
    assert batch.fixes == plan.updates[10:16]
    assert all(u.status is None for s in sends if s.kind != "fix" and s.kind != "batch"
               for u in s.fixes)  # fmt: skip
    for i, s in enumerate(sends):
        if s.kind == "late":  # sent after the fix that overtook it
            assert sends[i - 1].fixes[0].t_s > s.fixes[0].t_s
        if s.kind == "duplicate":
            assert sends[i - 1].fixes == s.fixes
        if s.kind == "jump":
            assert s.dropped
    # Statuses go out in order, each once.
    statuses = [u.status for s in sends if not s.dropped for u in s.fixes if u.status]
    assert statuses == ["PICKED_UP", "IN_TRANSIT", "DELIVERED"]


def test_noise_needs_device_times_and_sane_ratios() -> None:
    base: dict[str, Any] = {"name": "x", "fleet": {"riders": 1}}
    with pytest.raises(ScenarioError, match="device_time"):
        parse_scenario({**base, "fleet": {"riders": 1, "jump_ratio": 0.1}})
    with pytest.raises(ScenarioError, match=r"at most 0\.5"):
        parse_scenario({**base, "fleet": {"riders": 1, "device_time": True,
                                          "jump_ratio": 0.3, "late_ratio": 0.3}})  # fmt: skip
    cfg = parse_scenario({**base, "fleet": {"riders": 2, "device_time": True, "late_ratio": 0.1},
                          "faults": [{"kind": "rider_offline", "deliveries": 1, "fixes": 4}]})
    assert cfg.deliveries_with("rider_offline") == frozenset({0})


def milestone(name: str, seq: int, status: str, proximity: str) -> dict[str, Any]:
    return {"type": f"rider_{name}", "data": view(seq, status, 5.6040, proximity=proximity)}


def with_milestones() -> list[dict[str, Any]]:
    msgs = good_stream()
    # After seq 5's location_update: approaching; after seq 6's: arrived.
    at5 = next(i for i, m in enumerate(msgs) if m["data"]["seq"] == 5)
    msgs.insert(at5 + 1, milestone("approaching", 5, "IN_TRANSIT", "approaching"))
    at6 = next(i for i, m in enumerate(msgs) if m["data"]["seq"] == 6)
    msgs.insert(at6 + 1, milestone("arrived", 6, "IN_TRANSIT", "arrived"))
    for m in msgs:
        if m["data"]["seq"] >= 5 and m["type"] in ("location_update", "status_change"):
            m["data"]["proximity"] = "arrived" if m["data"]["seq"] >= 6 else "approaching"
    return msgs


def feed(msgs: list[dict[str, Any]]) -> StreamCheck:
    check = StreamCheck("TRK-x")
    for m in msgs:
        check.feed(m)
    check.finish(7)
    return check


def test_milestones_once_each_pass() -> None:
    check = feed(with_milestones())
    assert check.problems == 0, check.violations
    assert (check.approaching, check.arrived, check.flaps) == (1, 1, 0)
    assert check.approach_status == "IN_TRANSIT"


def test_a_milestone_twice_or_a_proximity_going_back_is_a_flap() -> None:
    msgs = with_milestones()
    again = next(i for i, m in enumerate(msgs) if m["type"] == "rider_arrived")
    msgs.insert(again + 1, dict(msgs[again]))
    assert feed(msgs).flaps == 1
    msgs = with_milestones()
    for m in msgs:
        if m["data"]["seq"] == 7:
            m["data"]["proximity"] = "approaching"  # back from arrived
    assert feed(msgs).flaps >= 1


def test_a_resumed_socket_continues_the_stream() -> None:
    msgs = with_milestones()
    check = StreamCheck("TRK-x")
    cut = next(i for i, m in enumerate(msgs) if m["data"]["seq"] == 5)
    for m in msgs[: cut + 1]:  # up to seq 5's location_update, not its milestone
        check.feed(m)
    since = check.rewind_last()
    assert since == 4
    check.reconnected(resume=True)
    current = msgs[-1]["data"]
    check.feed({"type": "initial_state", "data": current, "recovered": True})
    for m in msgs:
        if m["type"] != "initial_state" and m["data"]["seq"] > since:
            check.feed(m)
    check.finish(7)
    assert check.problems == 0, check.violations
    assert (check.resumed, check.approaching, check.arrived, check.flaps) == (1, 1, 1, 0)
    assert check.received + check.replayed == 6  # seqs 2..7, each counted once


def test_the_notifications_owed_include_the_approach() -> None:
    session = {"tracking_id": "T", "order_id": "O", "rider_id": "R", "phone": "+1 555",
               "statuses": ["PICKED_UP", "IN_TRANSIT", "DELIVERED"]}  # fmt: skip
    keys = expected_calls({**session, "approach_status": "IN_TRANSIT"}).notifications
    assert keys == ("T:tracking_started:ASSIGNED", "T:status_changed:PICKED_UP",
                    "T:status_changed:IN_TRANSIT", "T:rider_approaching:IN_TRANSIT",
                    "T:delivered:DELIVERED")  # fmt: skip
    keys = expected_calls({**session, "approach_status": "DELIVERED"}).notifications
    assert keys[-2:] == ("T:rider_approaching:DELIVERED", "T:delivered:DELIVERED")
    no_phone = expected_calls({**session, "phone": None, "approach_status": "IN_TRANSIT"})
    assert "T:rider_approaching:IN_TRANSIT" not in no_phone.notifications
