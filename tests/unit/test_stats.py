"""Platform statistics over live sessions: counts by status and by recency, merged over shards."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stats import empty_stats, merge_stats, session_stats
from engine.status import Status

NOW = 1_704_067_800.0
STATUSES = ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"]

items = st.lists(
    st.tuples(st.sampled_from(list(Status)), st.floats(min_value=0, max_value=10_000)).map(
        lambda t: (t[0], NOW - t[1])
    ),
    max_size=30,
)


def test_empty() -> None:
    assert empty_stats() == {
        "total_active_sessions": 0,
        "status_distribution": dict.fromkeys(STATUSES, 0),
        "sessions_by_recency": {"last_5_min": 0, "last_hour": 0, "older": 0},
    }
    assert session_stats([], NOW) == empty_stats()
    assert merge_stats([]) == empty_stats()


def test_empty_stats_are_fresh_objects() -> None:
    a = empty_stats()
    a["status_distribution"]["ASSIGNED"] = 5
    assert empty_stats()["status_distribution"]["ASSIGNED"] == 0


def test_counts_by_status_and_recency() -> None:
    out = session_stats(
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
    assert out == {
        "total_active_sessions": 7,
        "status_distribution": {"ASSIGNED": 2, "PICKED_UP": 1, "IN_TRANSIT": 2, "DELIVERED": 2},
        "sessions_by_recency": {"last_5_min": 3, "last_hour": 2, "older": 2},
    }


def test_accepts_any_iterable_once() -> None:
    gen = ((Status.PICKED_UP, NOW - i) for i in range(4))
    assert session_stats(gen, NOW)["total_active_sessions"] == 4


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(items)
def test_totals_agree(xs: list[tuple[Status, float]]) -> None:
    out = session_stats(xs, NOW)
    assert out["total_active_sessions"] == len(xs)
    assert sum(out["status_distribution"].values()) == len(xs)
    assert sum(out["sessions_by_recency"].values()) == len(xs)
    assert set(out["status_distribution"]) == set(STATUSES)


@settings(max_examples=50, deadline=None)
@given(st.lists(items, max_size=5))
def test_merging_shards_equals_counting_everything(parts: list[list[tuple[Status, float]]]) -> None:
    merged = merge_stats([session_stats(p, NOW) for p in parts])
    everything = session_stats([x for p in parts for x in p], NOW)
    assert merged == everything


def test_merge_ignores_extra_per_shard_fields_and_keeps_the_contract_shape() -> None:
    part: dict[str, Any] = session_stats([(Status.ASSIGNED, NOW)], NOW)
    part["watched_sessions"] = 3
    merged = merge_stats([part, part])
    assert merged["total_active_sessions"] == 2
    assert merged["status_distribution"]["ASSIGNED"] == 2
    assert merged["sessions_by_recency"]["last_5_min"] == 2
