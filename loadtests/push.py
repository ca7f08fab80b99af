"""Matching the pushes one watcher receives to the sends of the rider (see pool.py)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loadtests.pool import LiveDelivery

# Names of the locust entries; failure messages stay free of numbers so locust groups them.
PUSH = "push location_update"
GAP = "push gap"
ORDER = "push order"
UNMATCHED = "push unmatched"
NO_SEQ = "push seq"
OVERDUE = "push overdue"
LOST_TAIL = "push lost tail"
# Kept apart from PUSH: a failure entry adds its (zero) time to the entry's percentiles.
STREAM = "push stream"


@dataclass(frozen=True)
class Latency:
    """A push matched to its send: milliseconds from the rider's send to the watcher's receipt."""

    seq: int
    ms: float


@dataclass(frozen=True)
class Problem:
    """Something a watcher saw that the contract rules out, as a locust failure entry."""

    name: str
    message: str


class Acks:
    """The highest `seq` each delivery's rider has had acknowledged (an HTTP 200 carrying it):
    what every watcher of the delivery must eventually see. Riders record, watchers read;
    kept weakly, so a delivery nobody holds any more is forgotten with it."""

    def __init__(self) -> None:
        self._last: weakref.WeakKeyDictionary[LiveDelivery, int] = weakref.WeakKeyDictionary()

    def record(self, delivery: LiveDelivery, seq: int) -> None:
        last = self._last.get(delivery)
        if last is None or seq > last:
            self._last[delivery] = seq

    def last(self, delivery: LiveDelivery) -> int | None:
        return self._last.get(delivery)


# The acknowledgements of this locust process's riders (the pool's deliveries).
ACKS = Acks()


def view_seq(view: object) -> int | None:
    """The `seq` of a view, or None when it has none (or not an integer)."""
    if not isinstance(view, Mapping):
        return None
    seq = view.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None
    return seq


class PushCursor:
    """One watcher's position in one delivery: from the initial_state's seq on, every
    location_update must carry a greater seq, normally the next one."""

    def __init__(self, delivery: LiveDelivery, initial_seq: int) -> None:
        self.delivery = delivery
        self.last_seq = initial_seq
        self.final_seq: int | None = None  # of the DELIVERED status_change: nothing follows

    def location_update(self, data: Mapping[str, Any] | None, received_at: float) -> list[
        Latency | Problem
    ]:
        seq = view_seq(data)
        if seq is None:
            return [Problem(NO_SEQ, "location_update without an integer seq")]
        if seq <= self.last_seq:
            return [Problem(ORDER, "location_update seq not after the previous one")]
        out: list[Latency | Problem] = []
        if seq > self.last_seq + 1:
            # Allowed by design only when this socket's queue overflowed: worth seeing.
            out.append(Problem(GAP, "watcher skipped location_update(s): seq gap"))
        self.last_seq = seq
        sent = self.delivery.send_time(seq)
        if sent is None:
            out.append(Problem(UNMATCHED, "location_update seq no rider of this process sent"))
        else:
            out.append(Latency(seq, max(0.0, (received_at - sent) * 1000.0)))
        return out

    def message(self, msg: object, received_at: float) -> tuple[list[Latency | Problem], bool]:
        """One decoded server message: what to record, and whether to keep watching
        (not after the delivery's DELIVERED status_change, nor after an error)."""
        if not isinstance(msg, Mapping):
            return [Problem(STREAM, "a message that is not a JSON object")], True
        kind = msg.get("type")
        if kind == "location_update":
            return self.location_update(msg.get("data"), received_at), True
        if kind == "status_change":
            data = msg.get("data")
            delivered = isinstance(data, Mapping) and data.get("status") == "DELIVERED"
            if delivered:
                self.final_seq = view_seq(data)
            return [], not delivered
        if kind == "error":
            return [Problem(STREAM, f"error message: {msg.get('message')}")], False
        return [], True

    def overdue(self, now: float, patience_s: float) -> Problem | None:
        """A change the rider sent more than `patience_s` ago has not reached this watcher."""
        pending = [
            at for seq, at in self.delivery.sent_at.items() if seq > self.last_seq
        ]
        if pending and now - min(pending) > patience_s:
            return Problem(OVERDUE, "no location_update within the watch timeout of a send")
        return None

    def lost_tail(self, acked: int | None) -> Problem | None:
        """The stream is over (delivered, an error, the socket closed, the delivery finished):
        a failure when this watcher never got the location_update of the rider's last
        acknowledged change (`acked`), or of the delivering change itself. A gap shows only
        when a later push arrives; a loss at the end of the stream shows only here."""
        due = max((s for s in (acked, self.final_seq) if s is not None), default=None)
        if due is not None and due > self.last_seq:
            return Problem(LOST_TAIL, "stream ended before the last acknowledged location_update")
        return None

    def tail_settled(self, acked: int | None, now: float, patience_s: float) -> bool:
        """Whether a finished delivery's stream can be judged: this watcher has the last
        acknowledged change, or its push is more than `patience_s` past the send (a push may
        trail the rider's acknowledgement, so a fresh one is still waited for)."""
        if acked is None or acked <= self.last_seq:
            return True
        sent = self.delivery.send_time(acked)
        return sent is None or now - sent > patience_s
