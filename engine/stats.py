"""Platform statistics over live sessions (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from engine.status import ORDER, Status


def empty_stats() -> dict[str, Any]:
    return {
        "total_active_sessions": 0,
        "status_distribution": {s.value: 0 for s in ORDER},
        "sessions_by_recency": {"last_5_min": 0, "last_hour": 0, "older": 0},
    }


def session_stats(items: Iterable[tuple[Status, float]], now: float) -> dict[str, Any]:
    """Counts over (status, updated_at) of live sessions, by status and by recency of update."""
    out = empty_stats()
    dist = out["status_distribution"]
    rec = out["sessions_by_recency"]
    n = 0
    for status, updated_at in items:
        n += 1
        dist[status.value] += 1
        age = now - updated_at
        if age <= 300:
            rec["last_5_min"] += 1
        elif age <= 3600:
            rec["last_hour"] += 1
        else:
            rec["older"] += 1
    out["total_active_sessions"] = n
    return out


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the statistics of several shards."""
    out = empty_stats()
    for p in parts:
        out["total_active_sessions"] += p["total_active_sessions"]
        for key in ("status_distribution", "sessions_by_recency"):
            for k, v in p[key].items():
                out[key][k] += v
    return out
