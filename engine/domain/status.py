"""The delivery status machine: keep the status or move exactly one step forward (pure)."""

from __future__ import annotations

from enum import StrEnum

from engine.domain.errors import Conflict, InvalidInput


class Status(StrEnum):
    ASSIGNED = "ASSIGNED"
    PICKED_UP = "PICKED_UP"
    IN_TRANSIT = "IN_TRANSIT"
    DELIVERED = "DELIVERED"


ORDER: tuple[Status, ...] = (Status.ASSIGNED, Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED)
_INDEX = {s: i for i, s in enumerate(ORDER)}


def next_status(current: Status) -> Status | None:
    """The one status `current` may move to, or None when it is terminal."""
    i = _INDEX[current] + 1
    return ORDER[i] if i < len(ORDER) else None


def check_transition(current: Status, requested: Status | None) -> Status:
    """The status after an update asking for `requested` (None keeps the current one).

    Raises Conflict, naming the allowed next status, for anything but "same" or "one step
    forward", and for any update once DELIVERED.
    """
    if current is Status.DELIVERED:
        raise Conflict("Tracking session is DELIVERED; no further updates are accepted")
    if requested is None or requested is current:
        return current
    allowed = next_status(current)
    if requested is allowed:
        return requested
    raise Conflict(
        f"Invalid status transition {current.value} -> {requested.value}: "
        f"the allowed next status is {allowed.value if allowed else 'none'} "
        f"(or keep {current.value})"
    )


def parse_status(value: object) -> Status | None:
    """Turn a client's status field into a Status, None when absent; InvalidInput otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return Status(value)
        except ValueError:
            pass
    raise InvalidInput(
        f"status must be one of {', '.join(s.value for s in ORDER)}, got {str(value)[:40]!r}"
    )
