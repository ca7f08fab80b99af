"""Matching the pushes one watcher receives to the sends of the rider (see pool.py)."""

from __future__ import annotations

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
            return [], not (isinstance(data, Mapping) and data.get("status") == "DELIVERED")
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
