"""What a run measured: counters, latency samples, per-second series; mergeable across processes."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; nan when empty."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summary_ms(samples_s: list[float]) -> dict[str, float | int | None]:
    values = sorted(samples_s)

    def ms(q: float) -> float | None:
        v = percentile(values, q)
        return None if math.isnan(v) else round(v * 1000, 2)

    return {
        "count": len(values),
        "p50": ms(50),
        "p90": ms(90),
        "p99": ms(99),
        "max": None if not values else round(values[-1] * 1000, 2),
    }


@dataclass
class Metrics:
    """Everything one simulator process counted. Times are seconds since the run's start."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    latency_t: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    ack_s: array[float] = field(default_factory=lambda: array("d"))
    ack_ws_s: array[float] = field(default_factory=lambda: array("d"))  # the WS riders' share
    loop_lag_s: array[float] = field(default_factory=lambda: array("d"))
    sent_per_s: Counter[int] = field(default_factory=Counter)
    received_per_s: Counter[int] = field(default_factory=Counter)
    open_per_s: dict[int, int] = field(default_factory=dict)  # sockets open, sampled each second
    sessions: list[dict[str, Any]] = field(default_factory=list)  # outcome of each delivery
    max_violations: int = 50

    def error(self, kind: str, example: str | None = None) -> None:
        self.errors[kind] += 1
        if example is not None:
            self.violation(f"{kind}: {example}")

    def violation(self, text: str) -> None:
        if len(self.violations) < self.max_violations:
            self.violations.append(text)

    def latency(self, t: float, seconds: float) -> None:
        self.latency_t.append(t)
        self.latency_s.append(seconds)

    def merge(self, other: Metrics) -> None:
        self.counts.update(other.counts)
        self.errors.update(other.errors)
        for v in other.violations:
            self.violation(v)
        self.latency_t.extend(other.latency_t)
        self.latency_s.extend(other.latency_s)
        self.ack_s.extend(other.ack_s)
        self.ack_ws_s.extend(other.ack_ws_s)
        self.loop_lag_s.extend(other.loop_lag_s)
        self.sent_per_s.update(other.sent_per_s)
        self.received_per_s.update(other.received_per_s)
        for sec, n in other.open_per_s.items():
            self.open_per_s[sec] = self.open_per_s.get(sec, 0) + n
        self.sessions.extend(other.sessions)

    def timeline(self) -> dict[str, list[Any]]:
        """Per-second series: updates sent, messages received, sockets open, latency p50/p99."""
        last = max([0, *self.sent_per_s, *self.received_per_s, *self.open_per_s])
        by_sec: dict[int, list[float]] = {}
        for t, v in zip(self.latency_t, self.latency_s, strict=True):
            by_sec.setdefault(int(t), []).append(v)
        p50: list[float | None] = []
        p99: list[float | None] = []
        for sec in range(last + 1):
            values = sorted(by_sec.get(sec, []))
            p50.append(round(percentile(values, 50) * 1000, 2) if values else None)
            p99.append(round(percentile(values, 99) * 1000, 2) if values else None)
        return {
            "t": list(range(last + 1)),
            "updates_per_s": [self.sent_per_s.get(s, 0) for s in range(last + 1)],
            "messages_per_s": [self.received_per_s.get(s, 0) for s in range(last + 1)],
            "open_sockets": [self.open_per_s.get(s, 0) for s in range(last + 1)],
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
        }

    def peak_open_sockets(self) -> int:
        return max(self.open_per_s.values(), default=0)
