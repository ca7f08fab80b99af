"""The public shapes of a session: its view (API.md "The view") and its history items (pure).

Typed structs rather than dicts: the shard encodes each view once (msgspec builds and encodes a
struct in about 60% of the time orjson takes for the same dict), and the same types describe the
WebSocket messages in `/asyncapi.json` (see `engine.protocol`). They refuse unknown fields, so
a field added to a message without its type fails the message-schema tests.
"""

from __future__ import annotations

import msgspec

from engine.domain.proximity import Milestone
from engine.domain.status import Status


class Location(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the rider was, and when (Unix seconds)."""

    lat: float
    lng: float
    timestamp: int


class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lat: float
    lng: float


class View(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What every endpoint and message returns for a session; never the customer's phone.
    The optional fields appear only when set, so a session's view is the same everywhere for one
    seq (clients compare them): `watchers` only where asked for (it changes without a seq)."""

    tracking_id: str
    order_id: str
    rider_id: str
    status: Status
    current_location: Location | None
    dropoff: Point
    eta_seconds: int | None
    updated_at: int
    seq: int
    started_at: int
    watchers: int | None = None  # sockets watching the session, in every API process
    proximity: Milestone | None = None  # the last milestone reached: approaching, arrived


class HistoryItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One accepted change, as `GET /tracking/{id}/history` lists it. `lat`/`lng` are null for
    a status change whose fix was dropped; the optional fields appear when they say something."""

    seq: int
    status: Status
    previous_status: Status | None
    lat: float | None
    lng: float | None
    at: int
    recorded_at: int | None = None  # the fix's device time, when the phone sent one
    late: bool = False  # the fix was older than the current location: history only
    milestones: tuple[Milestone, ...] = ()  # what this change fired, in order

