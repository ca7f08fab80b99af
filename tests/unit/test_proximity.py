"""Approaching and arrived (engine.domain.proximity): thresholds, confirmation, hysteresis, and
the property that matters to customers: nothing fires twice, whatever the GPS does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.proximity import (
    START,
    Milestone,
    Proximity,
    ProximityRules,
    step,
)

RULES = ProximityRules(approach_eta_s=60, approach_radius_m=300, arrival_radius_m=30)
A, D = Milestone.APPROACHING, Milestone.ARRIVED


def eta(metres: float) -> int:
    return max(60, round(metres / 1000 / 30 * 3600))


def walk(distances: list[float], rules: ProximityRules = RULES,
         state: Proximity = START) -> tuple[Proximity, list[tuple[int, Milestone]]]:
    """Feed fixes at these distances; (final state, (index, milestone) fired)."""
    fired = []
    for i, d in enumerate(distances):
        state, ms = step(state, d, eta(d), rules)
        fired.extend((i, m) for m in ms)
    return state, fired


def test_a_rider_riding_in_approaches_then_arrives_once_each() -> None:
    state, fired = walk([3000, 2000, 1000, 450, 400, 200, 100, 40, 20, 10, 5, 5])
    # ETA <= 60 s means within 500 m at 30 km/h: the second fix inside confirms.
    assert fired == [(4, A), (9, D)]
    assert state.milestone is D


def test_one_fix_jumping_into_a_zone_is_not_enough() -> None:
    _, fired = walk([2000, 10, 2000, 1900, 15, 1800])
    assert fired == []


def test_jitter_in_the_band_neither_counts_nor_resets() -> None:
    # Arrival zone 30 m, band to 50 m: in, band, in -> two inside fixes, arrived.
    _, fired = walk([100, 100, 25, 45, 28])
    assert (4, D) in fired
    # Clearly outside (beyond the band) resets the run.
    _, fired = walk([100, 100, 25, 80, 28])
    assert all(m is not D for _, m in fired)


def test_arrival_implies_approach_and_fires_both_in_order() -> None:
    rules = ProximityRules(approach_eta_s=0, approach_radius_m=0, arrival_radius_m=30)
    _, fired = walk([5000, 10, 10], rules)
    assert fired == [(2, A), (2, D)]


def test_a_delivering_fix_inside_confirms_at_once() -> None:
    state, ms = step(START, 12, eta(12), RULES, delivers=True)
    assert ms == (A, D)
    assert state.arrived
    state, ms = step(START, 900, eta(900), RULES, delivers=True)
    assert ms == ()


def test_once_arrived_nothing_changes() -> None:
    state, _ = walk([10, 10])
    assert state.arrived
    assert step(state, 5000, eta(5000), RULES) == (state, ())


def test_the_eta_threshold_alone_approaches() -> None:
    rules = ProximityRules(approach_eta_s=300, approach_radius_m=0, arrival_radius_m=30)
    _, fired = walk([5000, 2400, 2300], rules)  # 2.4 km at 30 km/h is 288 s
    assert fired == [(2, A)]


# -- properties -----------------------------------------------------------------------------------

_noisy_trip = st.lists(
    st.one_of(
        st.floats(0, 80),  # at the door, GPS jitter
        st.floats(250, 650),  # around the approach boundary
        st.floats(0, 20_000),  # anywhere, jumps included
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None)
@given(_noisy_trip, st.booleans())
def test_hysteresis_never_emits_twice(distances: list[float], deliver_last: bool) -> None:
    state = START
    fired: list[Milestone] = []
    shown: list[Milestone | None] = []
    for i, d in enumerate(distances):
        delivers = deliver_last and i == len(distances) - 1
        state, ms = step(state, d, eta(d), RULES, delivers=delivers)
        fired.extend(ms)
        shown.append(state.milestone)
    assert fired.count(A) <= 1
    assert fired.count(D) <= 1
    if D in fired:
        assert A in fired
        assert fired.index(A) < fired.index(D)
    # What the view shows never goes back (no flapping).
    order = {None: 0, A: 1, D: 2}
    assert [order[m] for m in shown] == sorted(order[m] for m in shown)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 29.9), min_size=2, max_size=10))
def test_staying_at_the_door_always_arrives(at_door: list[float]) -> None:
    _, fired = walk([3000, *at_door])
    assert [m for _, m in fired] == [A, D]
