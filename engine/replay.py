"""What a reconnecting watcher missed, rebuilt from the journal (which is the history).

A watcher that comes back with `?since_seq=N` gets, after its `initial_state`, the messages it
would have received live after seq N: for each change a `location_update`, then its
`status_change` and milestones, with the views they carried. The shard answers this inside the
Watch command, so the replay ends exactly where the live events the gateway receives next begin
(no gap, no duplicate at the seam). Views are rebuilt from each change's row: its status and time,
the current location (the last located change that was not late: a replay may have to look back
past N for it), the contract's ETA from that location, and the milestones reached so far: each
view is the one sent live, byte for byte.
"""

from __future__ import annotations

from engine.domain.eta import eta_seconds
from engine.domain.proximity import Milestone
from engine.domain.session import Lifetimes, Session
from engine.domain.view import HistoryItem, Location, Point, View
from engine.protocol import (
    Event,
    EventKind,
    encode_view,
    location_update,
    milestone,
    status_change,
)
from engine.store.base import Store

# How far back a replay looks at a time for the location it starts from (see `_location_at`).
LOOK_BACK = 32


def _location(item: HistoryItem) -> Location | None:
    """The current location after `item`, if `item` set it."""
    if item.lat is None or item.lng is None or item.late:
        return None
    return Location(item.lat, item.lng, item.at if item.recorded_at is None else item.recorded_at)


class Replay:
    """Rebuilds the events of one session after a seq, up to the session's seq when made (it
    may run later: once the batch that made it is journaled)."""

    def __init__(self, session: Session, store: Store, lt: Lifetimes) -> None:
        self.s = session
        self.store = store
        self.lt = lt
        self.head, self.seq = session.head, session.seq
        self.approached, self.arrived = session.prox.approached, session.prox.arrived

    def events(self, since: int, limit: int) -> list[Event] | None:
        """The events after seq `since`, in order; None when they cannot all be replayed (more
        than `limit` changes, a seq this session never reached, or a history the store lacks)."""
        missing = self.seq - since
        if missing == 0:
            return []
        if since < 0 or missing < 0 or missing > limit:
            return None
        items = self.store.history(self.head, since, missing)
        if [it.seq for it in items] != list(range(since + 1, self.seq + 1)):
            return None
        loc = None
        if _location(items[0]) is None and since > 0:
            loc = self._location_at(since)
        fired = {m for it in items for m in it.milestones}
        reached = {
            Milestone.APPROACHING: self.approached and Milestone.APPROACHING not in fired,
            Milestone.ARRIVED: self.arrived and Milestone.ARRIVED not in fired,
        }
        out: list[Event] = []
        for it in items:
            loc = _location(it) or loc
            for m in it.milestones:
                reached[m] = True
            shown = Milestone.ARRIVED if reached[Milestone.ARRIVED] else (
                Milestone.APPROACHING if reached[Milestone.APPROACHING] else None
            )
            view = self._view(it, loc, shown)
            tid, at = self.s.tracking_id, float(it.at)
            out.append(Event(tid, EventKind.LOCATION, it.seq, location_update(view), at))
            if it.previous_status is not None:
                frame = status_change(view, it.previous_status)
                out.append(Event(tid, EventKind.STATUS, it.seq, frame, at))
            for m in it.milestones:
                out.append(Event(tid, EventKind.MILESTONE, it.seq, milestone(view, m), at))
        return out

    def _location_at(self, seq: int) -> Location | None:
        """The current location as of `seq`: the newest change at or before it that set one."""
        upto = seq
        while upto > 0:
            low = max(0, upto - LOOK_BACK)
            for it in reversed(self.store.history(self.head, low, upto - low)):
                loc = _location(it)
                if loc is not None:
                    return loc
            upto = low
        return None

    def _view(self, it: HistoryItem, loc: Location | None, shown: Milestone | None) -> bytes:
        s = self.s
        eta = eta_seconds(
            loc.lat if loc else None, loc.lng if loc else None, s.dropoff_lat, s.dropoff_lng,
            it.status, self.lt.speed_kmh,
        )
        return encode_view(View(
            s.tracking_id, s.order_id, s.rider_id, it.status, loc,
            Point(s.dropoff_lat, s.dropoff_lng), eta, it.at, it.seq, int(s.started_at),
            None, shown,
        ))

