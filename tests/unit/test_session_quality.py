"""A session's reports judged by the quality rules: dropped fixes, late fixes, device times,
status carried by a dropped fix, milestones (journal flags), and restoring what fired."""

from __future__ import annotations

from typing import Any

import pytest

from engine.clock import ManualClock
from engine.domain.errors import Conflict
from engine.domain.fixes import Fix, Reason
from engine.domain.integrations import owed_calls
from engine.domain.proximity import Milestone
from engine.domain.session import (
    APPROACHING,
    ARRIVED,
    LATE,
    Change,
    Lifetimes,
    Outcome,
    Rules,
    Session,
)
from engine.domain.status import Status
from engine.domain.view import Location

LT = Lifetimes(session_ttl_s=10_000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
def report(s: Session, fix: Fix, status: Status | None, now: float, rules: Rules) -> Outcome:
    return s.report(fix.lat, fix.lng, status, now, LT, rules, fix.recorded_at, fix.accuracy_m)

DROP = (5.6037, -0.1869)
RULES = Rules()
M_PER_DEG = 111_195.0
PICKED, TRANSIT, DELIVERED = Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED


def away(metres: float, at: float | None = None) -> Fix:
    return Fix(DROP[0] + metres / M_PER_DEG, DROP[1], at)


def new(clock: ManualClock, phone: str | None = "+233 20 555 0101") -> Session:
    return Session("TRK-q", "ORD-q", "RIDER-q", *DROP, phone, clock())


def test_a_dropped_fix_changes_nothing_and_says_why() -> None:
    clock = ManualClock()
    s = new(clock)
    report(s, away(2000, clock() - 5), None, clock(), RULES)
    before = s.view()
    out = report(s, Fix(0.0, 0.0, accuracy_m=5.0), None, clock(), RULES)
    assert out.change is None
    assert out.filtered is Reason.NULL_ISLAND
    assert s.view() == before


def test_a_status_carried_by_a_dropped_fix_still_applies() -> None:
    clock = ManualClock()
    s = new(clock)
    report(s, away(2000), None, clock(), RULES)
    loc = s.view().current_location
    clock.advance(10)
    out = report(s, Fix(0.0, 0.0, accuracy_m=5.0), PICKED, clock(), RULES)
    assert out.filtered is Reason.NULL_ISLAND
    assert out.change == Change("TRK-q", 3, PICKED, Status.ASSIGNED, None, None, clock())
    v = s.view()
    assert (v.status, v.seq, v.current_location) == (PICKED, 3, loc)


def test_a_refused_status_step_refuses_the_fix_too() -> None:
    clock = ManualClock()
    s = new(clock)
    with pytest.raises(Conflict):
        report(s, away(100, clock()), TRANSIT, clock(), RULES)
    assert s.seq == 1
    assert s.fixes is None


def test_device_time_is_the_locations_timestamp_and_late_fixes_stay_out_of_it() -> None:
    clock = ManualClock()
    s = new(clock)
    t = clock()
    report(s, away(2000, t - 30), None, t, RULES)
    report(s, away(1900, t - 10), None, t, RULES)
    out = report(s, away(1950, t - 20), None, t, RULES)  # from the offline buffer
    assert out.change is not None
    assert out.change.flags == LATE
    assert out.filtered is None
    assert (out.change.lat, out.change.fix_at) == (away(1950).lat, t - 20)
    v = s.view()
    assert v.seq == 4
    assert v.current_location == Location(away(1900).lat, DROP[1], int(t - 10))


def test_fixes_of_one_batch_are_judged_by_their_own_times() -> None:
    # One engine batch shares one `now`; 600 m in 20 s of device time is 108 km/h, allowed.
    clock = ManualClock()
    s = new(clock)
    now = clock()
    a = report(s, away(3000, now - 25), None, now, RULES)
    b = report(s, away(2400, now - 5), None, now, RULES)
    assert a.filtered is None
    assert b.filtered is None


def ride(s: Session, clock: ManualClock, metres: float, status: Status | None = None) -> Any:
    """A fix with the phone's time, 10 s after the last."""
    clock.advance(10)
    return report(s, away(metres, clock()), status, clock(), RULES)


def test_milestones_fire_once_with_flags_and_owe_one_notification() -> None:
    clock = ManualClock()
    s = new(clock)
    ride(s, clock, 5000, PICKED)
    ride(s, clock, 4900, TRANSIT)
    fired: list[tuple[int, Milestone]] = []
    calls = []
    for d in (4800, 400, 300, 200, 100, 20, 10, 8):
        if d == 400:
            clock.advance(400)  # riding in
        out = ride(s, clock, d)
        assert out.change is not None
        fired.extend((out.change.seq, m) for m in out.milestones)
        assert out.change.milestones == out.milestones
        calls.extend(owed_calls(s, out.change, order_service=True, notification_service=True))
    assert fired == [(6, Milestone.APPROACHING), (10, Milestone.ARRIVED)]
    assert [c.idempotency_key for c in calls] == ["TRK-q:rider_approaching:IN_TRANSIT"]
    assert s.view().proximity is Milestone.ARRIVED
    assert s.milestone_flags() == APPROACHING | ARRIVED


def test_no_phone_no_approach_notification() -> None:
    clock = ManualClock()
    s = new(clock, phone=None)
    ride(s, clock, 100, PICKED)
    change = ride(s, clock, 90).change
    assert change is not None
    assert change.flags == APPROACHING
    assert owed_calls(s, change, True, True) == []


def test_a_rider_first_seen_at_the_door_approaches_before_delivering() -> None:
    clock = ManualClock()
    s = new(clock)
    ride(s, clock, 5000, PICKED)
    ride(s, clock, 5000, TRANSIT)
    clock.advance(1000)
    out = ride(s, clock, 5, DELIVERED)
    assert out.milestones == (Milestone.APPROACHING, Milestone.ARRIVED)
    assert out.change is not None
    keys = [c.idempotency_key for c in owed_calls(s, out.change, True, True)]
    assert keys == ["TRK-q:rider_approaching:DELIVERED", "TRK-q:DELIVERED",
                    "TRK-q:delivered:DELIVERED"]  # fmt: skip


def test_no_milestones_before_pickup_nor_for_plain_updates() -> None:
    clock = ManualClock()
    s = new(clock)
    for _ in range(3):
        assert ride(s, clock, 5).milestones == ()  # ASSIGNED: riding to the merchant
    for status in (PICKED, None, TRANSIT, None):
        # A plain API.md update (no recorded_at, no accuracy_m): nothing new happens.
        assert report(s, Fix(*DROP), status, clock(), RULES).milestones == ()
    assert s.view().proximity is None


def test_restore_keeps_what_fired_and_the_locations_device_time() -> None:
    clock = ManualClock()
    s = new(clock)
    last = Change("TRK-q", 9, TRANSIT, None, 5.6, -0.18, clock(), clock() - 7, APPROACHING)
    r = Session.restore(s.to_row(), last, LT)
    assert r.prox.approached
    assert not r.prox.arrived
    assert r.view().proximity is Milestone.APPROACHING
    assert r.view().current_location == Location(5.6, -0.18, int(clock() - 7))
    # Approach does not fire again after a restart; arrival still can.
    fired = [m for d in (10, 10) for m in ride(r, clock, d).milestones]
    assert fired == [Milestone.ARRIVED]
