"""The fix-filtering rule (engine.domain.fixes): each reason, lateness, and two properties —
judging is idempotent, and a re-sent sequence changes nothing."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.fixes import (
    MEMORY,
    OPEN,
    Fix,
    FixRules,
    Memory,
    Reason,
    Verdict,
    judge,
)
from engine.domain.geo import haversine_km

NOW = 1_704_067_800.0
RULES = FixRules(max_age_s=3600, max_future_s=60, max_accuracy_m=100, max_speed_kmh=150)
HOME = (5.6037, -0.1869)
M_PER_DEG = 111_195.0  # metres per degree of latitude at R = 6371 km


def north(metres: float, at: float | None = None, acc: float | None = None) -> Fix:
    return Fix(HOME[0] + metres / M_PER_DEG, HOME[1], at, acc)


def run(fixes: list[Fix], memory: Memory | None = None, now: float = NOW,
        rules: FixRules = RULES) -> tuple[list[Verdict], Memory]:
    """Judge a sequence as a session does: remember each judged device-time fix."""
    memory = memory if memory is not None else Memory()
    out = []
    for f in fixes:
        v = judge(f, now, memory, rules)
        memory.take(f, v)
        out.append(v)
    return out, memory


def reasons(verdicts: list[Verdict]) -> list[str]:
    return ["late" if v.late else (v.reason.value if v.reason else "kept") for v in verdicts]


@pytest.mark.parametrize("fix", [
    Fix(math.nan, 0.5, NOW), Fix(5.6, math.inf, NOW), Fix(91.0, 0.0, NOW), Fix(5.6, -181.0, NOW),
    Fix(5.6, -0.18, recorded_at=math.nan), Fix(5.6, -0.18, recorded_at=-5.0),
    Fix(5.6, -0.18, accuracy_m=-1.0), Fix(5.6, -0.18, accuracy_m=math.inf),
])  # fmt: skip
def test_invalid_fixes_are_dropped(fix: Fix) -> None:
    assert judge(fix, NOW, None, OPEN).reason is Reason.INVALID


def test_null_island_is_dropped_even_without_bounds() -> None:
    assert judge(Fix(0.0, 0.0, NOW), NOW, None, OPEN).reason is Reason.NULL_ISLAND
    assert judge(Fix(0.0, 0.0, accuracy_m=5.0), NOW, None, OPEN).reason is Reason.NULL_ISLAND
    assert judge(Fix(0.0, 1e-3, NOW), NOW, None, OPEN).kept  # a real place on the equator


def test_a_plain_update_is_taken_as_the_contract_says() -> None:
    # Neither recorded_at nor accuracy_m: API.md's update, (0, 0) included, whatever the rules.
    assert judge(Fix(0.0, 0.0), NOW, None, RULES).kept
    _, memory = run([north(0, NOW - 1)])
    assert judge(north(90_000), NOW, memory, RULES).kept


def test_accuracy_bound() -> None:
    assert judge(north(0, acc=100.0), NOW, None, RULES).kept
    assert judge(north(0, acc=100.5), NOW, None, RULES).reason is Reason.INACCURATE
    assert judge(north(0, acc=5000.0), NOW, None, OPEN).kept


def test_age_and_future_bounds_use_the_device_time() -> None:
    assert judge(north(0, NOW - 3600), NOW, None, RULES).kept
    assert judge(north(0, NOW - 3601), NOW, None, RULES).reason is Reason.TOO_OLD
    assert judge(north(0, NOW + 60), NOW, None, RULES).kept
    assert judge(north(0, NOW + 61), NOW, None, RULES).reason is Reason.IN_FUTURE


def test_without_a_device_time_only_the_fix_itself_is_judged() -> None:
    # Received times say nothing about when a fix was taken: no speed, age or duplicate rules.
    _, memory = run([north(0, NOW - 10)])
    far = north(50_000)  # 50 km away, no recorded_at
    assert judge(far, NOW, memory, RULES).kept
    assert judge(far, NOW, memory, RULES).kept  # the same again is not a duplicate either


def test_implied_speed_is_measured_by_each_fixs_own_time() -> None:
    # 150 km/h is 41.7 m/s: 400 m in 10 s passes, 500 m does not.
    assert reasons(run([north(0, NOW - 20), north(400, NOW - 10)])[0]) == ["kept", "kept"]
    assert reasons(run([north(0, NOW - 20), north(500, NOW - 10)])[0]) == ["kept", "too_fast"]
    # Two fixes taken 30 s apart are judged by those 30 s, however they arrive.
    assert reasons(run([north(0, NOW - 40), north(1000, NOW - 10)])[0]) == ["kept", "kept"]


def test_a_jump_is_dropped_and_the_next_real_fix_kept() -> None:
    verdicts, memory = run([
        north(0, NOW - 30), north(5000, NOW - 20), north(100, NOW - 10),
    ])  # fmt: skip
    assert reasons(verdicts) == ["kept", "too_fast", "kept"]
    assert memory.lat == pytest.approx(north(100).lat)


def test_jitter_a_fraction_of_a_second_apart_is_not_an_impossible_speed() -> None:
    assert reasons(run([north(0, NOW - 10.0), north(8, NOW - 9.8)])[0]) == ["kept", "kept"]


def test_duplicates_and_late_fixes() -> None:
    a, b, c = north(0, NOW - 30), north(100, NOW - 20), north(200, NOW - 10)
    verdicts, memory = run([a, c, b, c, a])
    assert reasons(verdicts) == ["kept", "kept", "late", "duplicate", "duplicate"]
    assert memory.newest == NOW - 10  # the late fix did not move the current location


def test_a_late_jump_is_dropped_too() -> None:
    verdicts, _ = run([north(0, NOW - 30), north(100, NOW - 10), north(9000, NOW - 20)])
    assert reasons(verdicts) == ["kept", "kept", "too_fast"]


# -- properties -----------------------------------------------------------------------------------

# Fixes of one rider over ten minutes: mostly a walk along a line with metres of jitter, some jumps
# of kilometres, some repeats, in any order; times are whole seconds so repeats happen.
_fix = st.builds(
    lambda t, metres, jump, acc: north(metres + jump, NOW - 600 + t, acc),
    t=st.integers(0, 600),
    metres=st.floats(0, 3000),
    jump=st.sampled_from([0.0, 0.0, 0.0, 20_000.0, -8_000.0]),
    acc=st.one_of(st.none(), st.floats(0, 300)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_fix, max_size=40))
def test_filtering_is_idempotent(fixes: list[Fix]) -> None:
    verdicts, _ = run(fixes)
    kept = [f for f, v in zip(fixes, verdicts, strict=True) if v.kept]
    again, _ = run(kept)
    assert all(v.kept for v in again)
    assert [v.late for v in again] == [v.late for v in verdicts if v.kept]


@settings(max_examples=300, deadline=None)
@given(st.lists(_fix, max_size=MEMORY))
def test_a_resent_sequence_changes_nothing(fixes: list[Fix]) -> None:
    _, memory = run(fixes)
    before = (memory.newest, memory.lat, memory.lng)
    again, memory = run(list(fixes), memory)  # a phone retrying its batch
    assert not any(v.kept for v in again), reasons(again)
    assert (memory.newest, memory.lat, memory.lng) == before


@settings(max_examples=200, deadline=None)
@given(st.lists(_fix, max_size=40))
def test_kept_fixes_in_order_never_exceed_the_speed_bound(fixes: list[Fix]) -> None:
    verdicts, _ = run(fixes)
    current = [f for f, v in zip(fixes, verdicts, strict=True) if v.kept and not v.late]
    for a, b in itertools.pairwise(current):
        assert a.recorded_at is not None
        assert b.recorded_at is not None
        assert b.recorded_at > a.recorded_at
        dt = max(b.recorded_at - a.recorded_at, 1.0)
        assert haversine_km(a.lat, a.lng, b.lat, b.lng) / dt * 3600 <= RULES.max_speed_kmh
