"""The Integrations section of API.md written out for the tests: what each session owes the order
and notification services, and checks of what the stub services received.

Written from the contract, not from engine/integrations.py, so the tests check the contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from sim.integrations import order_of
from sim.stubs import RecordedRequest

ORDER_BODY_KEYS = {"status", "tracking_id", "rider_id", "delivered_at"}
NOTIFICATION_BODY_KEYS = {"event", "tracking_id", "order_id", "rider_id", "status", "phone", "at"}


@dataclass(frozen=True)
class Owed:
    """One call a session owes: which service, and its Idempotency-Key."""

    target: str  # "order" | "notification"
    key: str


def owed_for_history(
    tracking_id: str, history: Iterable[dict[str, Any]], phone: str | None
) -> list[Owed]:
    """The calls owed for a session's accepted changes (its history items), in order."""
    out: list[Owed] = []
    for item in history:
        if item["seq"] == 1:
            if phone:
                out.append(Owed("notification", f"{tracking_id}:tracking_started:ASSIGNED"))
            continue
        if item["previous_status"] is None:
            continue  # a location update that kept the status
        status = item["status"]
        if status == "DELIVERED":
            out.append(Owed("order", f"{tracking_id}:DELIVERED"))
            out.append(Owed("notification", f"{tracking_id}:delivered:DELIVERED"))
        else:
            out.append(Owed("notification", f"{tracking_id}:status_changed:{status}"))
    return out


def owed_for_walk(tracking_id: str, statuses: Sequence[str], phone: str | None) -> list[Owed]:
    """The calls owed by a session started and then moved through `statuses` (one step each)."""
    items: list[dict[str, Any]] = [{"seq": 1, "status": "ASSIGNED", "previous_status": None}]
    prev = "ASSIGNED"
    for i, st in enumerate(statuses, start=2):
        items.append({"seq": i, "status": st, "previous_status": prev if st != prev else None})
        prev = st
    return owed_for_history(tracking_id, items, phone)


def check_call(
    req: RecordedRequest, secret: str, sessions: dict[str, dict[str, Any]],
    users_secret: str | None = None,
) -> None:
    """Assert one received call follows the contract. `sessions`: tracking id -> its
    order_id, rider_id and phone, as started."""
    assert req.method == "POST"
    assert req.headers.get("content-type", "").startswith("application/json")
    auth = req.headers.get("authorization", "")
    assert auth.startswith("Bearer "), auth[:20]
    claims = jwt.decode(auth.removeprefix("Bearer "), secret, algorithms=["HS256"])
    assert claims["role"] == "service"
    if users_secret is not None:
        # Finding 6: signed with a secret of its own; the receiver cannot mint users' tokens.
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(auth.removeprefix("Bearer "), users_secret, algorithms=["HS256"])
    assert isinstance(claims["sub"], str)
    assert claims["sub"]
    body = req.body
    assert isinstance(body, dict)
    tid = body["tracking_id"]
    s = sessions[tid]
    if req.path.startswith("/orders/"):
        assert order_of(req.path) == s["order_id"], req.path
        assert set(body) == ORDER_BODY_KEYS
        assert body["status"] == "DELIVERED"
        assert body["rider_id"] == s["rider_id"]
        assert isinstance(body["delivered_at"], int)
        assert req.idempotency_key == f"{tid}:DELIVERED"
    else:
        assert req.path == "/notifications"
        assert set(body) == NOTIFICATION_BODY_KEYS
        assert body["order_id"] == s["order_id"]
        assert body["rider_id"] == s["rider_id"]
        assert body["phone"] == s.get("phone")
        assert isinstance(body["at"], int)
        expected_event = {"ASSIGNED": "tracking_started", "DELIVERED": "delivered"}.get(
            body["status"], "status_changed"
        )
        assert body["event"] == expected_event
        assert req.idempotency_key == f"{tid}:{body['event']}:{body['status']}"


def delivered_keys(requests: Iterable[RecordedRequest]) -> set[str]:
    """Idempotency keys that were answered 2xx at least once."""
    return {r.idempotency_key for r in requests if r.ok and r.idempotency_key}


def check_order_per_session(
    requests: Sequence[RecordedRequest],
    owed: dict[str, list[Owed]],
    parked: frozenset[str] = frozenset(),
) -> None:
    """At one receiver, a session's calls come in the order they are owed: a call is tried only
    after every earlier call of that session to this receiver was accepted (2xx), or parked as a
    dead letter (`parked` keys), and never after a later one was tried."""
    index = {o.key: (tid, i) for tid, calls in owed.items() for i, o in enumerate(calls)}
    accepted: set[str] = set()
    last: dict[str, int] = {}
    for r in requests:
        key = r.idempotency_key
        assert key in index, f"unexpected call {key}"
        tid, i = index[key]
        target = owed[tid][i].target
        assert i >= last.get(tid, -1), f"{key} tried after a later call of its session"
        for earlier in owed[tid][:i]:
            if earlier.target == target:
                assert earlier.key in accepted or earlier.key in parked, (
                    f"{key} tried before {earlier.key} was accepted"
                )
        last[tid] = i
        if r.ok:
            accepted.add(key)


def all_delivered(
    orders: Sequence[RecordedRequest],
    notifications: Sequence[RecordedRequest],
    owed: dict[str, list[Owed]],
) -> bool:
    want_orders = {o.key for calls in owed.values() for o in calls if o.target == "order"}
    want_notes = {o.key for calls in owed.values() for o in calls if o.target == "notification"}
    return want_orders <= delivered_keys(orders) and want_notes <= delivered_keys(notifications)
