"""Platform statistics over live sessions: counts by status and by recency, merged over shards."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.stats import SessionCounts, session_counts
from engine.domain.status import Status

NOW = 1_704_067_800.0
STATUSES = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"]
CONTRACT = {"total_active_sessions", "status_distribution", "sessions_by_recency"}

items = st.lists(
    st.tuples(st.sampled_from(list(Status)), st.floats(min_value=0, max_value=10_000)).map(
        lambda t: (t[0], NOW - t[1])
    ),
    max_size=30,
)


def merge(parts: Iterable[SessionCounts]) -> SessionCounts:
    """Sum shards' counts, as the engine client does."""
    out = SessionCounts()
    for p in parts:
        out.add(p)
    return out


def test_empty() -> None:
    assert msgspec.to_builtins(SessionCounts()) == {
        "total_active_sessions": 0,
        "status_distribution": dict.fromkeys(STATUSES, 0),
        "sessions_by_recency": {"last_5_min": 0, "last_hour": 0, "older": 0},
    }
    assert session_counts([], NOW) == SessionCounts()
    assert merge([]) == SessionCounts()


def test_empty_counts_are_fresh_objects() -> None:
    a = SessionCounts()
    a.status_distribution["ASSIGNED"] = 5
    a.sessions_by_recency["older"] = 5
    assert SessionCounts().status_distribution["ASSIGNED"] == 0
    assert SessionCounts().sessions_by_recency["older"] == 0


def test_counts_by_status_and_recency() -> None:
    out = session_counts(
        [
            (Status.ASSIGNED, NOW),
            (Status.ASSIGNED, NOW - 10),
            (Status.PICKED_UP, NOW - 299),
            (Status.IN_TRANSIT, NOW - 301),
            (Status.IN_TRANSIT, NOW - 3599),
            (Status.DELIVERED, NOW - 3601),
            (Status.DELIVERED, NOW - 86_000),
        ],
        NOW,
    )
    assert msgspec.to_builtins(out) == {
        "total_active_sessions": 7,
        "status_distribution": {"ASSIGNED": 2, "PICKED_UP": 1, "IN_TRANSIT": 2, "DELIVERED": 2},
        "sessions_by_recency": {"last_5_min": 3, "last_hour": 2, "older": 2},
    }


def test_accepts_any_iterable_once() -> None:
    gen = ((Status.PICKED_UP, NOW - i) for i in range(4))
    assert session_counts(gen, NOW).total_active_sessions == 4


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(items)
def test_totals_agree(xs: list[tuple[Status, float]]) -> None:
    out = session_counts(xs, NOW)
    assert out.total_active_sessions == len(xs)
    assert sum(out.status_distribution.values()) == len(xs)
    assert sum(out.sessions_by_recency.values()) == len(xs)
    assert set(out.status_distribution) == set(STATUSES)


@settings(max_examples=50, deadline=None)
@given(st.lists(items, max_size=5))
def test_merging_shards_equals_counting_everything(parts: list[list[tuple[Status, float]]]) -> None:
    merged = merge([session_counts(p, NOW) for p in parts])
    everything = session_counts([x for p in parts for x in p], NOW)
    assert merged == everything


def test_merging_leaves_the_parts_alone_and_keeps_the_contract_shape() -> None:
    part = session_counts([(Status.ASSIGNED, NOW)], NOW)
    merged = merge([part, part])
    assert merged.total_active_sessions == 2
    assert merged.status_distribution["ASSIGNED"] == 2
    assert merged.sessions_by_recency["last_5_min"] == 2
    assert part == session_counts([(Status.ASSIGNED, NOW)], NOW)  # summed into, never aliased
    out = msgspec.to_builtins(merged)
    assert set(out) == CONTRACT
    assert set(out["status_distribution"]) == set(STATUSES)
    assert set(out["sessions_by_recency"]) == {"last_5_min", "last_hour", "older"}
