"""One tracking session's state, its public view and its rules (pure: time comes in as `now`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain.errors import Expired, Forbidden
from engine.domain.eta import eta_seconds
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
class Change:
    """One accepted change of a session, as journaled and replayed in history."""

    tracking_id: str
    seq: int
    status: Status
    previous_status: Status | None
    lat: float | None
    lng: float | None
    at: float


class Session:
    """A delivery being tracked: created by the constructor (its start) or by `restore`, then
    changed only through `apply_update`."""

    __slots__ = (
        "delivered_at",
        "dropoff_lat",
        "dropoff_lng",
        "eta",
        "head",
        "lat",
        "lng",
        "loc_ts",
        "order_id",
        "phone",
        "rider_id",
        "seq",
        "started_at",
        "status",
        "tracking_id",
        "updated_at",
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
        """Accept a location (and maybe a status step); raise Conflict and change nothing if not."""
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
            self.tracking_id,
            self.seq,
            new_status,
            previous if previous is not new_status else None,
            lat,
            lng,
            now,
        )

    # -- views ------------------------------------------------------------------------------
    def view(self) -> View:
        """The public view of API.md (never the phone), plus `seq` and `started_at`."""
        loc = None
        if self.lat is not None and self.lng is not None and self.loc_ts is not None:
            loc = Location(self.lat, self.lng, int(self.loc_ts))
        return View(
            self.tracking_id, self.order_id, self.rider_id, self.status, loc,
            Point(self.dropoff_lat, self.dropoff_lng), self.eta, int(self.updated_at), self.seq,
            int(self.started_at),
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
        """Rebuild a session from its fixed facts and its last journaled change."""
        tid, order_id, rider_id, phone, dlat, dlng, started_at = row
        s = cls(tid, order_id, rider_id, dlat, dlng, phone, started_at)
        s.status = last.status
        s.seq = last.seq
        s.updated_at = last.at
        if last.lat is not None and last.lng is not None:
            s.lat, s.lng, s.loc_ts = last.lat, last.lng, last.at
        if last.status is Status.DELIVERED:
            s.delivered_at = last.at  # nothing is accepted after DELIVERED
        s.eta = eta_seconds(s.lat, s.lng, dlat, dlng, s.status, lt.speed_kmh)
        return s


ROW_COLUMNS = (
    "tracking_id", "order_id", "rider_id", "phone", "dropoff_lat", "dropoff_lng", "started_at",
)
