"""The calls owed to the order and notification services for a change (pure).

They are computed where the change is accepted and journaled in the same transaction, so a
crash can never keep the change and lose the call (the outbox pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import orjson

from engine.domain.session import APPROACHING, Change, Session
from engine.domain.status import Status

ORDER = "order"
NOTIFICATION = "notification"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One HTTP POST owed to another service; `target` picks the base URL at send time."""

    tracking_id: str
    target: str
    path: str
    body: bytes
    idempotency_key: str
    created_at: float


def path_segment(value: str) -> str:
    """`value` as one path segment of a URL: percent-encoded (UTF-8) so that a rider-chosen id
    can never add segments, a query or a fragment, or climb with `.` / `..` (RFC 3986 5.2.4
    removes dot segments; `%2E` is the same character, kept literally by URL normalisers)."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="", errors="strict")


def order_path(order_id: str, suffix: str = "") -> str:
    """The order service's path of an order: `/orders/{order_id}{suffix}`, the id encoded."""
    return f"/orders/{path_segment(order_id)}{suffix}"


def _notification(session: Session, event: str, status: Status, at: float) -> OutboxItem:
    body = {
        "event": event,
        "tracking_id": session.tracking_id,
        "order_id": session.order_id,
        "rider_id": session.rider_id,
        "status": status.value,
        "phone": session.phone,
        "at": int(at),
    }
    return OutboxItem(
        session.tracking_id, NOTIFICATION, "/notifications", orjson.dumps(body),
        f"{session.tracking_id}:{event}:{status.value}", at,
    )


def owed_calls(
    session: Session, change: Change, order_service: bool, notification_service: bool
) -> list[OutboxItem]:
    """What `change` (already applied to `session`) owes to the configured services.

    `rider_approaching` (once per delivery, only with a phone) goes after the status change it
    came with, except before `delivered`: the rider approached, then delivered."""
    out: list[OutboxItem] = []
    if change.seq == 1:
        if notification_service and session.phone:
            out.append(_notification(session, "tracking_started", Status.ASSIGNED, change.at))
        return out
    approaching = (
        notification_service and bool(session.phone) and bool(change.flags & APPROACHING)
    )
    if change.previous_status is None:
        if approaching:
            out.append(_notification(session, "rider_approaching", change.status, change.at))
        return out
    if change.status is Status.DELIVERED:
        if approaching:
            out.append(_notification(session, "rider_approaching", change.status, change.at))
        if order_service:
            body = {
                "status": "DELIVERED",
                "tracking_id": session.tracking_id,
                "rider_id": session.rider_id,
                "delivered_at": int(change.at),
            }
            out.append(OutboxItem(
                session.tracking_id, ORDER, order_path(session.order_id, "/status"),
                orjson.dumps(body), f"{session.tracking_id}:DELIVERED", change.at,
            ))
        if notification_service:
            out.append(_notification(session, "delivered", change.status, change.at))
    elif notification_service:
        out.append(_notification(session, "status_changed", change.status, change.at))
        if approaching:
            out.append(_notification(session, "rider_approaching", change.status, change.at))
    return out
