"""Which of a rider's fixes count (pure: the shard passes the time in).

A fix is a position the phone reports, maybe with the time it was taken (`recorded_at`, the
device's clock) and its accuracy. As Traccar's FilterHandler does, a fix is dropped when it is
invalid or (0, 0), a duplicate, too old or in the future, less accurate than a bound, or when
reaching it from the last kept fix would need more than a rider's top speed. A dropped fix is not
an error (the phone did nothing wrong); the caller answers it with the unchanged view and the
reason.

Only fixes that carry `recorded_at` or `accuracy_m` are judged: a plain update (`lat`, `lng`,
maybe `status`) is taken as API.md says, any in-range position included, so clients of the
contract see nothing change. Rules that compare times need the device's time: without
`recorded_at` a fix's time is when the shard accepted it, which includes network delays and bursts
(a phone's buffered sends arrive together), so such a fix is judged only by what it carries
(validity, (0, 0), accuracy). With it, each fix is judged by its own time, never by the batch it
arrived in.

A fix older than the newest kept one (it arrived late, or from an offline buffer) is *late*: it
goes into the history but does not move the current location. Its implied speed is measured
against that newest fix too (a rider cannot have been far from where it was seconds later).

A session remembers the device times of the fixes it judged, kept or dropped, so a fix sent
again (a phone retrying a batch it got no answer for) is a duplicate, whatever became of it the
first time; judging is idempotent: judging the kept fixes again from the start keeps them all.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from enum import StrEnum

from engine.domain.geo import haversine_km

# Device times of recently taken fixes a session remembers, to tell a re-sent fix (a phone retrying
# a batch) from a late one: a batch re-sent after more than this many newer fixes were taken may
# add its late fixes to the history again.
MEMORY = 64
# Implied speeds are measured over at least this long: fixes a fraction of a second apart would
# otherwise turn a few metres of GPS jitter into an impossible speed.
MIN_SPEED_INTERVAL_S = 1.0
# (0, 0) within this many degrees (about 10 cm): what a phone reports with no fix at all.
NULL_ISLAND_DEG = 1e-6


class Reason(StrEnum):
    """Why a fix was dropped (the `filtered` field of the answer, a label of the counts)."""

    INVALID = "invalid"
    NULL_ISLAND = "null_island"
    DUPLICATE = "duplicate"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"
    INACCURATE = "inaccurate"
    TOO_FAST = "too_fast"


@dataclass(frozen=True, slots=True)
class FixRules:
    """The bounds, from settings; `math.inf` turns a bound off."""

    max_age_s: float = 86400.0
    max_future_s: float = 300.0
    max_accuracy_m: float = 100.0
    max_speed_kmh: float = 150.0


OPEN = FixRules(math.inf, math.inf, math.inf, math.inf)
"""No bounds: only invalid fixes, (0, 0) and duplicates are dropped."""


@dataclass(slots=True)
class Fix:
    """A position a phone reported (treated as immutable; not frozen: one is made per fix)."""

    lat: float
    lng: float
    recorded_at: float | None = None
    accuracy_m: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """`reason` None: the fix is kept; `late` then says it only goes into the history."""

    reason: Reason | None = None
    late: bool = False

    @property
    def kept(self) -> bool:
        return self.reason is None


KEPT = Verdict()
LATE = Verdict(late=True)
_DROPPED = {r: Verdict(r) for r in Reason}


class Memory:
    """What a session remembers of its phone's device-time fixes: the newest kept one (the
    current location, for implied speeds and lateness) and the times of the last `MEMORY` it
    judged (duplicates). Allocated only for sessions whose phone sends `recorded_at`."""

    __slots__ = ("lat", "lng", "newest", "times")

    def __init__(self) -> None:
        self.newest = -math.inf
        self.lat = 0.0
        self.lng = 0.0
        self.times = array("d")

    def take(self, fix: Fix, verdict: Verdict) -> None:
        """Remember a fix `judge` judged (invalid ones and duplicates are not remembered)."""
        at = fix.recorded_at
        if at is None or verdict.reason is Reason.INVALID or verdict.reason is Reason.DUPLICATE:
            return
        if verdict.kept and not verdict.late:
            self.newest, self.lat, self.lng = at, fix.lat, fix.lng
        times = self.times
        times.append(at)
        if len(times) > MEMORY:
            del times[0]


def _valid(fix: Fix) -> bool:
    lat, lng, at, acc = fix.lat, fix.lng, fix.recorded_at, fix.accuracy_m
    return (
        math.isfinite(lat) and math.isfinite(lng) and -90.0 <= lat <= 90.0
        and -180.0 <= lng <= 180.0
        and (at is None or (math.isfinite(at) and at > 0))
        and (acc is None or (math.isfinite(acc) and acc >= 0))
    )  # fmt: skip


def judge(fix: Fix, now: float, memory: Memory | None, rules: FixRules) -> Verdict:
    """Keep, keep as late, or drop `fix`, given what the session remembers and the time now."""
    if fix.recorded_at is None and fix.accuracy_m is None:
        return KEPT  # a plain API.md update
    if not _valid(fix):
        return _DROPPED[Reason.INVALID]
    if abs(fix.lat) < NULL_ISLAND_DEG and abs(fix.lng) < NULL_ISLAND_DEG:
        return _DROPPED[Reason.NULL_ISLAND]
    if fix.accuracy_m is not None and fix.accuracy_m > rules.max_accuracy_m:
        return _DROPPED[Reason.INACCURATE]
    at = fix.recorded_at
    if at is None:
        return KEPT
    if at > now + rules.max_future_s:
        return _DROPPED[Reason.IN_FUTURE]
    if at < now - rules.max_age_s:
        return _DROPPED[Reason.TOO_OLD]
    if memory is None:
        return KEPT
    if at in memory.times:
        return _DROPPED[Reason.DUPLICATE]
    newest = memory.newest
    if newest == -math.inf:
        return KEPT
    dt = max(abs(at - newest), MIN_SPEED_INTERVAL_S)
    km = haversine_km(memory.lat, memory.lng, fix.lat, fix.lng)
    if km / dt * 3600.0 > rules.max_speed_kmh:
        return _DROPPED[Reason.TOO_FAST]
    return LATE if at < newest else KEPT
