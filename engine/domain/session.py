"""One tracking session's state, its public view and its rules (pure: time comes in as `now`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from engine.domain.errors import Expired, Forbidden
from engine.domain.eta import eta_from_km, eta_seconds
from engine.domain.fixes import Fix, FixRules, Memory, Reason, judge
from engine.domain.geo import haversine_km
from engine.domain.proximity import (
    NO_MILESTONES,
    START,
    Milestone,
    Proximity,
    ProximityRules,
    step,
)
from engine.domain.status import Status, check_transition
from engine.domain.view import Location, Point, View

# A session's fixed facts, as journaled once at its start (the order of ROW_COLUMNS).
SessionRow = tuple[str, str, str, str | None, float, float, float]


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long sessions live, from settings."""

    session_ttl_s: float
    delivered_ttl_s: float
    purge_after_s: float
    speed_kmh: float


@dataclass(frozen=True, slots=True)
class Rules:
    """How fixes are judged and milestones found, from settings."""

    fixes: FixRules = field(default_factory=FixRules)
    proximity: ProximityRules = field(default_factory=ProximityRules)


# Change.flags: what else a change is, beside its status and position.
LATE = 1  # its fix went into the history without moving the current location
APPROACHING = 2  # it fired the approaching milestone
ARRIVED = 4  # it fired the arrived milestone
_MILESTONE_FLAGS = {Milestone.APPROACHING: APPROACHING, Milestone.ARRIVED: ARRIVED}


def milestones_of(flags: int) -> tuple[Milestone, ...]:
    """The milestones a change's flags say it fired, in order."""
    return tuple(m for m, bit in _MILESTONE_FLAGS.items() if flags & bit)


@dataclass(slots=True)
class Change:
    """One accepted change of a session, as journaled and replayed in history. `lat`/`lng` are
    None for a status change whose fix was dropped; `fix_at` is the fix's device time (None: the
    fix's time is `at`). Treated as immutable; not declared frozen because one is made per
    update, and a frozen dataclass's __init__ costs a __setattr__ call per field."""

    tracking_id: str
    seq: int
    status: Status
    previous_status: Status | None
    lat: float | None
    lng: float | None
    at: float
    fix_at: float | None = None
    flags: int = 0

    @property
    def milestones(self) -> tuple[Milestone, ...]:
        return milestones_of(self.flags)


class Outcome(NamedTuple):
    """What a report did: the change accepted (None: nothing), why its fix was dropped, and the
    milestones it fired (in order). (A tuple: one is made per update.)"""

    change: Change | None
    filtered: Reason | None = None
    milestones: tuple[Milestone, ...] = NO_MILESTONES


class Session:
    """A delivery being tracked: created by the constructor (its start) or by `restore`, then
    changed only through `apply_update`."""

    __slots__ = (
        "delivered_at",
        "dropoff_lat",
        "dropoff_lng",
        "eta",
        "fixes",
        "head",
        "lat",
        "lng",
        "loc_ts",
        "order_id",
        "phone",
        "prox",
        "rider_id",
        "seq",
        "started_at",
        "status",
        "tracking_id",
        "updated_at",
        "watchers",
    )

    def __init__(
        self,
        tracking_id: str,
        order_id: str,
        rider_id: str,
        dropoff_lat: float,
        dropoff_lng: float,
        phone: str | None,
        started_at: float,
    ) -> None:
        self.tracking_id = tracking_id
        self.order_id = order_id
        self.rider_id = rider_id
        self.dropoff_lat = dropoff_lat
        self.dropoff_lng = dropoff_lng
        self.phone = phone
        self.started_at = started_at
        self.updated_at = started_at
        self.status = Status.ASSIGNED
        self.lat: float | None = None
        self.lng: float | None = None
        self.loc_ts: float | None = None
        self.delivered_at: float | None = None
        self.eta: int | None = None
        self.seq = 1
        self.fixes: Memory | None = None  # only once the phone sends device times
        self.prox: Proximity = START
        self.watchers = 0  # sockets watching, in every API process (the shard keeps it)
        # The journal id of the last change (the start of the walk back through its history);
        # set by the shard that journals it.
        self.head = 0

    def first_change(self) -> Change:
        return Change(self.tracking_id, 1, Status.ASSIGNED, None, None, None, self.started_at)

    # -- lifetime ---------------------------------------------------------------------------
    def expires_at(self, lt: Lifetimes) -> float:
        end = self.started_at + lt.session_ttl_s
        if self.delivered_at is not None:
            end = min(end, self.delivered_at + lt.delivered_ttl_s)
        return end

    def is_live(self, now: float, lt: Lifetimes) -> bool:
        return now < self.expires_at(lt)

    def is_purgeable(self, now: float, lt: Lifetimes) -> bool:
        return now >= self.expires_at(lt) + lt.purge_after_s

    def ensure_live(self, now: float, lt: Lifetimes) -> None:
        if not self.is_live(now, lt):
            raise Expired()

    # -- behaviour --------------------------------------------------------------------------
    def authorize_update(self, rider_id: str | None) -> None:
        """`rider_id` None means a superadmin; anyone else must be this session's rider."""
        if rider_id is not None and rider_id != self.rider_id:
            raise Forbidden("Only this session's rider or a superadmin may update it")

    def apply_update(
        self, lat: float, lng: float, requested: Status | None, now: float, lt: Lifetimes
    ) -> Change:
        """Accept a location (and maybe a status step) as it comes, judging nothing; raise
        Conflict and change nothing if the step is not allowed."""
        new_status = check_transition(self.status, requested)
        previous = self.status
        self.status = new_status
        self.lat = lat
        self.lng = lng
        self.loc_ts = now
        self.updated_at = now
        self.seq += 1
        if new_status is Status.DELIVERED and self.delivered_at is None:
            self.delivered_at = now
        self.eta = eta_seconds(
            lat, lng, self.dropoff_lat, self.dropoff_lng, new_status, lt.speed_kmh
        )
        return Change(
            self.tracking_id, self.seq, new_status,
            previous if previous is not new_status else None, lat, lng, now,
        )

    def report(
        self, lat: float, lng: float, requested: Status | None, now: float, lt: Lifetimes,
        rules: Rules | None, recorded_at: float | None = None, accuracy_m: float | None = None,
    ) -> Outcome:
        """A rider's report: its status step (Conflict, and nothing changes, if not allowed),
        then its fix, judged by `rules` (None: taken as it comes, no milestones). Only a fix that
        carries `recorded_at` or `accuracy_m` (a phone that knows these rules) is judged and
        counts towards milestones: a plain API.md update behaves exactly as the contract says."""
        if rules is None or (recorded_at is None and accuracy_m is None):
            return Outcome(self.apply_update(lat, lng, requested, now, lt))
        new_status = check_transition(self.status, requested)
        return self._judged(Fix(lat, lng, recorded_at, accuracy_m), new_status, now, lt, rules)

    def _judged(
        self, fix: Fix, new_status: Status, now: float, lt: Lifetimes, rules: Rules
    ) -> Outcome:
        previous = self.status
        moved = new_status is not previous
        verdict = judge(fix, now, self.fixes, rules.fixes)
        reason, late = verdict.reason, verdict.late
        if fix.recorded_at is not None and reason is not Reason.INVALID:
            if self.fixes is None:
                self.fixes = Memory()
            self.fixes.take(fix, verdict)
        if reason is not None and not moved:
            return Outcome(None, reason)
        self.status = new_status
        self.updated_at = now
        self.seq += 1
        if new_status is Status.DELIVERED and self.delivered_at is None:
            self.delivered_at = now
        flags = 0
        fired = NO_MILESTONES
        if reason is None and not late:
            self.lat, self.lng = fix.lat, fix.lng
            self.loc_ts = now if fix.recorded_at is None else fix.recorded_at
            km = haversine_km(fix.lat, fix.lng, self.dropoff_lat, self.dropoff_lng)
            self.eta = eta_from_km(km, new_status, lt.speed_kmh)
            if (new_status is Status.PICKED_UP or new_status is Status.IN_TRANSIT
                    or (moved and new_status is Status.DELIVERED)):
                # The travel ETA (the view's is 0 once DELIVERED)
                travel = eta_from_km(km, Status.IN_TRANSIT, lt.speed_kmh)
                self.prox, fired = step(
                    self.prox, km * 1000.0, travel, rules.proximity,
                    delivers=new_status is Status.DELIVERED,
                )
                for m in fired:
                    flags |= _MILESTONE_FLAGS[m]
        else:
            self.eta = eta_seconds(
                self.lat, self.lng, self.dropoff_lat, self.dropoff_lng, new_status, lt.speed_kmh
            )
            if late:
                flags |= LATE
        kept = reason is None
        change = Change(
            self.tracking_id, self.seq, new_status, previous if moved else None,
            fix.lat if kept else None, fix.lng if kept else None, now,
            fix.recorded_at if kept else None, flags,
        )
        return Outcome(change, reason, fired)

    def milestone_flags(self) -> int:
        """The milestones fired so far, as Change flags (what a checkpoint keeps)."""
        return (APPROACHING if self.prox.approached else 0) | (ARRIVED if self.prox.arrived else 0)

    # -- views ------------------------------------------------------------------------------
    def view(self, presence: bool = False) -> View:
        """The public view of API.md (never the phone), plus `seq`, `started_at`, `proximity`
        once a milestone fired, and with `presence` the number of watching sockets."""
        loc = None
        if self.lat is not None and self.lng is not None and self.loc_ts is not None:
            loc = Location(self.lat, self.lng, int(self.loc_ts))
        return View(
            self.tracking_id, self.order_id, self.rider_id, self.status, loc,
            Point(self.dropoff_lat, self.dropoff_lng), self.eta, int(self.updated_at), self.seq,
            int(self.started_at), self.watchers if presence else None,
            None if self.prox is START else self.prox.milestone,
        )

    # -- persistence ------------------------------------------------------------------------
    # The journal holds the session's fixed facts once (at start) and one row per accepted
    # change; the state is the last change, so an update writes a single narrow row.
    def to_row(self) -> SessionRow:
        return (
            self.tracking_id, self.order_id, self.rider_id, self.phone,
            self.dropoff_lat, self.dropoff_lng, self.started_at,
        )

    @classmethod
    def restore(cls, row: SessionRow, last: Change, lt: Lifetimes) -> Session:
        """Rebuild a session from its fixed facts and its state as one change: its last seq,
        status and time, its current location (with `fix_at`) and the milestones it fired (as
        `flags`). What it remembered of its phone's fixes starts afresh."""
        tid, order_id, rider_id, phone, dlat, dlng, started_at = row
        s = cls(tid, order_id, rider_id, dlat, dlng, phone, started_at)
        s.status = last.status
        s.seq = last.seq
        s.updated_at = last.at
        if last.lat is not None and last.lng is not None:
            s.lat, s.lng = last.lat, last.lng
            s.loc_ts = last.at if last.fix_at is None else last.fix_at
        if last.flags & (APPROACHING | ARRIVED):
            s.prox = Proximity(approached=True, arrived=bool(last.flags & ARRIVED))
        if last.status is Status.DELIVERED:
            s.delivered_at = last.at  # nothing is accepted after DELIVERED
        s.eta = eta_seconds(s.lat, s.lng, dlat, dlng, s.status, lt.speed_kmh)
        return s


ROW_COLUMNS = (
    "tracking_id", "order_id", "rider_id", "phone", "dropoff_lat", "dropoff_lng", "started_at",
)
