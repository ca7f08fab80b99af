"""Platform statistics over live sessions (pure)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from engine.domain.status import ORDER, Status

RECENT_S = 300.0
HOUR_S = 3600.0


class SessionCounts(msgspec.Struct):
    """API.md's statistics over live sessions, summable across shards."""

    total_active_sessions: int = 0
    status_distribution: dict[str, int] = msgspec.field(
        default_factory=lambda: {s.value: 0 for s in ORDER}
    )
    sessions_by_recency: dict[str, int] = msgspec.field(
        default_factory=lambda: {"last_5_min": 0, "last_hour": 0, "older": 0}
    )

    def add(self, other: SessionCounts) -> None:
        """Add another shard's counts to these."""
        self.total_active_sessions += other.total_active_sessions
        for mine, theirs in ((self.status_distribution, other.status_distribution),
                             (self.sessions_by_recency, other.sessions_by_recency)):  # fmt: skip
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


def session_counts(items: Iterable[tuple[Status, float]], now: float) -> SessionCounts:
    """Counts over (status, updated_at) of live sessions, by status and by recency of update."""
    out = SessionCounts()
    dist = out.status_distribution
    rec = out.sessions_by_recency
    n = 0
    for status, updated_at in items:
        n += 1
        dist[status.value] += 1
        age = now - updated_at
        if age <= RECENT_S:
            rec["last_5_min"] += 1
        elif age <= HOUR_S:
            rec["last_hour"] += 1
        else:
            rec["older"] += 1
    out.total_active_sessions = n
    return out
