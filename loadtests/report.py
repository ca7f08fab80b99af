"""Reading locust's CSV output and judging a ladder step: pure functions, no locust import."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loadtests.push import PUSH

UPDATE = "POST /tracking/update/[id]"
# A step holds only if riders got at least this share of the updates they meant to send:
# with paced riders, a slow server shows up as fewer updates, not as errors.
MIN_PACE_RATIO = 0.9


@dataclass(frozen=True)
class Entry:
    """One row of `<prefix>_stats.csv`; times in ms, None where locust wrote N/A."""

    type: str
    name: str
    count: int
    failures: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class Failure:
    """One row of `<prefix>_failures.csv`."""

    method: str
    name: str
    error: str
    occurrences: int


def _num(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "N/A"):
        return None
    return float(text)


def parse_stats(text: str) -> dict[tuple[str, str], Entry]:
    """Rows of a stats CSV keyed by (type, name); the total row is ("", "Aggregated")."""
    out: dict[tuple[str, str], Entry] = {}
    for row in csv.DictReader(io.StringIO(text)):
        entry = Entry(
            type=row["Type"],
            name=row["Name"],
            count=int(row["Request Count"]),
            failures=int(row["Failure Count"]),
            rps=float(row["Requests/s"]),
            p50_ms=_num(row.get("50%")),
            p99_ms=_num(row.get("99%")),
            max_ms=_num(row.get("Max Response Time")),
        )
        out[(entry.type, entry.name)] = entry
    return out


def parse_failures(text: str) -> list[Failure]:
    return [
        Failure(row["Method"], row["Name"], row["Error"], int(row["Occurrences"]))
        for row in csv.DictReader(io.StringIO(text))
    ]


def parse_exceptions(text: str) -> int:
    """How many exceptions locust caught in user code (each row carries a count)."""
    return sum(int(row["Count"]) for row in csv.DictReader(io.StringIO(text)))


@dataclass(frozen=True)
class StepSpec:
    """One step of the ladder: `riders` reporting every `interval_s`, `watchers` watching."""

    riders: int
    interval_s: float
    watchers: int
    updates_per_delivery: int

    def target_updates_per_s(self) -> float:
        # Each delivery spends one pacing slot on POST /tracking/start.
        k = self.updates_per_delivery
        return self.riders / self.interval_s * k / (k + 1)

    def label(self) -> str:
        return f"{self.riders} riders @ {self.interval_s:g}s, {self.watchers} watchers"


@dataclass(frozen=True)
class StepResult:
    spec: StepSpec
    updates_per_s: float
    target_updates_per_s: float
    pushes_per_s: float
    pushes: int
    http_p50_ms: float | None
    http_p99_ms: float | None
    push_p50_ms: float | None
    push_p99_ms: float | None
    failures: int
    failure_kinds: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_max_percent: float | None = None
    peak_watching: int | None = None
    # The machine's 1-minute load average at the end of the step: on a shared box, the
    # context without which a latency figure cannot be read.
    host_load_1m: float | None = None

    def held(self, max_p99_ms: float) -> bool:
        """Pushes measured with p99 under the threshold, nothing failed, riders kept pace."""
        return (
            self.pushes > 0
            and self.push_p99_ms is not None
            and self.push_p99_ms < max_p99_ms
            and self.failures == 0
            and self.updates_per_s >= MIN_PACE_RATIO * self.target_updates_per_s
        )

    def why_not(self, max_p99_ms: float) -> str:
        reasons = []
        if self.pushes == 0 or self.push_p99_ms is None:
            reasons.append("no push measured")
        elif self.push_p99_ms >= max_p99_ms:
            reasons.append(f"push p99 {self.push_p99_ms:g} ms")
        if self.failures:
            reasons.append(f"{self.failures} failures")
        if self.updates_per_s < MIN_PACE_RATIO * self.target_updates_per_s:
            reasons.append("riders fell behind")
        return ", ".join(reasons)


def summarize_step(
    spec: StepSpec,
    stats: Mapping[tuple[str, str], Entry],
    failures: Sequence[Failure],
    exceptions: int = 0,
    run_summary: Mapping[str, Any] | None = None,
) -> StepResult:
    """One ladder step from its CSVs: HTTP figures are those of the location update, the
    rider's hot path; push figures are the watchers' `push location_update` entries."""
    update = stats.get(("POST", UPDATE))
    push = stats.get(("WS", PUSH))
    kinds: dict[str, int] = {}
    for f in failures:
        key = f"{f.method} {f.name}: {f.error}"
        kinds[key] = kinds.get(key, 0) + f.occurrences
    if exceptions:
        kinds["locustfile exceptions"] = exceptions
    summary = run_summary or {}
    cpu = summary.get("loadgen_cpu_max_percent")
    peak = summary.get("peak_watching")
    return StepResult(
        spec=spec,
        updates_per_s=update.rps if update else 0.0,
        target_updates_per_s=spec.target_updates_per_s(),
        pushes_per_s=push.rps if push else 0.0,
        pushes=push.count if push else 0,
        http_p50_ms=update.p50_ms if update else None,
        http_p99_ms=update.p99_ms if update else None,
        push_p50_ms=push.p50_ms if push else None,
        push_p99_ms=push.p99_ms if push else None,
        failures=sum(kinds.values()),
        failure_kinds=kinds,
        loadgen_cpu_max_percent=float(cpu) if isinstance(cpu, int | float) else None,
        peak_watching=int(peak) if isinstance(peak, int) else None,
    )


def highest_held(results: Iterable[StepResult], max_p99_ms: float) -> StepResult | None:
    """The last step of the unbroken run of held steps from the bottom of the ladder.

    A higher step that happens to pass after a lower one broke is not counted: capacity
    is what the service carries on the way up, not a lucky sample.
    """
    best = None
    for result in results:
        if not result.held(max_p99_ms):
            break
        best = result
    return best


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def render_table(results: Sequence[StepResult], max_p99_ms: float) -> str:
    """A Markdown table, one row per step, and the verdict line under it."""
    lines = [
        "| step | riders | interval s | watchers | updates/s (target) | pushes/s "
        "| HTTP p50 / p99 ms | push p50 / p99 ms | failures | load-gen CPU % | host load "
        "| held |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(results, 1):
        held = "yes" if r.held(max_p99_ms) else f"no ({r.why_not(max_p99_ms)})"
        cpu = _ms(r.loadgen_cpu_max_percent)
        lines.append(
            f"| {i} | {r.spec.riders} | {r.spec.interval_s:g} | {r.spec.watchers} "
            f"| {r.updates_per_s:.1f} ({r.target_updates_per_s:.1f}) | {r.pushes_per_s:.1f} "
            f"| {_ms(r.http_p50_ms)} / {_ms(r.http_p99_ms)} "
            f"| {_ms(r.push_p50_ms)} / {_ms(r.push_p99_ms)} | {r.failures} | {cpu} "
            f"| {_ms(r.host_load_1m)} | {held} |"
        )
    best = highest_held(results, max_p99_ms)
    verdict = (
        f"Highest step held at p99 push < {max_p99_ms:g} ms: "
        + (f"{best.spec.label()} ({best.updates_per_s:.1f} updates/s)" if best else "none")
    )
    return "\n".join([*lines, "", verdict])


def to_json(results: Sequence[StepResult], max_p99_ms: float) -> dict[str, Any]:
    best = highest_held(results, max_p99_ms)
    return {
        "max_p99_ms": max_p99_ms,
        "steps": [
            {**asdict(r), "held": r.held(max_p99_ms)} for r in results
        ],
        "highest_held": None if best is None else {**asdict(best), "label": best.spec.label()},
    }


def steps_from_json(payload: Mapping[str, Any]) -> list[StepResult]:
    """The steps of a `to_json` document (a ladder's summary.json), read back; fields an older
    summary lacks take their defaults."""
    known = {f.name for f in fields(StepResult)} - {"spec"}
    return [
        StepResult(spec=StepSpec(**step["spec"]),
                   **{k: v for k, v in step.items() if k in known})
        for step in payload.get("steps", [])
    ]
