"""Did each delivery's calls reach the order and notification services as API.md says?

Delivery is at least once, so duplicates are fine (counted, not failed); what must hold
per session: every expected call answered 2xx at least once, with the contract's path,
body, Idempotency-Key and service token, first attempts in the session's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt

from sim.stubs import RecordedRequest

_MAX_PROBLEMS = 30


@dataclass(frozen=True)
class Expected:
    """One session's expected calls, in the order they must first arrive."""

    tracking_id: str
    order_id: str
    rider_id: str
    phone: str | None
    notifications: tuple[str, ...]  # idempotency keys
    order_key: str | None  # None: not delivered, no order call due


def expected_calls(session: dict[str, Any]) -> Expected:
    """From a session outcome (tracking_id, order_id, rider_id, phone, statuses acked, and the
    status the rider approached in, if it did). `rider_approaching` (with a phone) comes after
    the status change it came with, but before `delivered`."""
    tid = session["tracking_id"]
    keys: list[str] = []
    approach = session.get("approach_status") if session.get("phone") else None
    if session.get("phone"):
        keys.append(f"{tid}:tracking_started:ASSIGNED")
    for status in session.get("statuses", []):
        event = "delivered" if status == "DELIVERED" else "status_changed"
        if approach == status == "DELIVERED":
            keys.append(f"{tid}:rider_approaching:{approach}")
        keys.append(f"{tid}:{event}:{status}")
        if approach == status != "DELIVERED":
            keys.append(f"{tid}:rider_approaching:{approach}")
    delivered = "DELIVERED" in session.get("statuses", [])
    return Expected(
        tid, session["order_id"], session["rider_id"], session.get("phone"), tuple(keys),
        f"{tid}:DELIVERED" if delivered else None,
    )  # fmt: skip


@dataclass
class IntegrationReport:
    orders_expected: int = 0
    orders_ok: int = 0
    notifications_expected: int = 0
    notifications_ok: int = 0
    bad_calls: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    duplicates: int = 0
    failed_answers: int = 0  # calls our stubs failed on purpose (503, drops, 4xx)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (
            self.orders_ok == self.orders_expected
            and self.notifications_ok == self.notifications_expected
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "orders": {"expected": self.orders_expected, "ok": self.orders_ok},
            "notifications": {
                "expected": self.notifications_expected, "ok": self.notifications_ok,
            },
            "bad_calls": self.bad_calls,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
            "duplicates": self.duplicates,
            "failed_answers": self.failed_answers,
            "complete": self.complete,
            "problems": self.problems,
        }  # fmt: skip


def check_calls(
    expected: Iterable[Expected],
    orders: Sequence[RecordedRequest],
    notifications: Sequence[RecordedRequest],
    secret: str | None = None,
) -> IntegrationReport:
    rep = IntegrationReport()
    by_tid: dict[str, Expected] = {e.tracking_id: e for e in expected}
    order_calls: dict[str, list[RecordedRequest]] = {}
    note_calls: dict[str, list[RecordedRequest]] = {}
    for calls, into in ((orders, order_calls), (notifications, note_calls)):
        for req in calls:
            tid = (req.body or {}).get("tracking_id") if isinstance(req.body, dict) else None
            if tid in by_tid:
                into.setdefault(tid, []).append(req)
    for tid, exp in by_tid.items():
        _check_order(rep, exp, order_calls.get(tid, []), secret)
        _check_notifications(rep, exp, note_calls.get(tid, []))
    return rep


def _check_order(
    rep: IntegrationReport, exp: Expected, calls: list[RecordedRequest], secret: str | None
) -> None:
    if exp.order_key is None:
        if calls:
            rep.unexpected += len(calls)
            rep.problem(f"{exp.tracking_id}: order call for an undelivered session")
        return
    rep.orders_expected += 1
    ok = 0
    for req in calls:
        rep.failed_answers += not req.ok
        wrong = _order_problems(exp, req, secret)
        if wrong:
            rep.bad_calls += 1
            rep.problem(f"{exp.tracking_id}: order call {wrong}")
        elif req.ok:
            ok += 1
    rep.orders_ok += ok > 0
    rep.duplicates += max(0, ok - 1)
    if not ok:
        rep.problem(f"{exp.tracking_id}: no accepted order call ({len(calls)} attempts)")


def _order_problems(exp: Expected, req: RecordedRequest, secret: str | None) -> str:
    body = req.body if isinstance(req.body, dict) else {}
    if req.method != "POST" or order_of(req.path) != exp.order_id:
        return f"went to {req.method} {req.path}"
    if req.idempotency_key != exp.order_key:
        return f"Idempotency-Key {req.idempotency_key!r}, want {exp.order_key!r}"
    want = {"status": "DELIVERED", "tracking_id": exp.tracking_id, "rider_id": exp.rider_id}
    if {k: body.get(k) for k in want} != want or not isinstance(body.get("delivered_at"), int):
        return f"body {body!r}"
    role = _token_role(req.headers.get("authorization", ""), secret)
    if role != "service":
        return f"bearer token role {role!r}, want 'service'"
    return ""


def order_of(path: str) -> str | None:
    """The order id a `/orders/{order_id}/status` path names (percent-decoded), or None when the
    path is not one: the id must arrive as exactly one encoded segment."""
    parts = path.split("/")
    if len(parts) != 4 or parts[:2] != ["", "orders"] or parts[3] != "status":
        return None
    return unquote(parts[2], errors="strict")


def _token_role(header: str, secret: str | None) -> str | None:
    if not header.startswith("Bearer "):
        return None
    token = header.removeprefix("Bearer ")
    try:
        if secret:
            claims = jwt.decode(token, secret, algorithms=["HS256"])
        else:
            claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "invalid"
    role = claims.get("role")
    return role if isinstance(role, str) else None


def _check_notifications(
    rep: IntegrationReport, exp: Expected, calls: list[RecordedRequest]
) -> None:
    rep.notifications_expected += len(exp.notifications)
    first_seen: list[str] = []
    accepted: set[str] = set()
    for req in calls:
        rep.failed_answers += not req.ok
        key = req.idempotency_key or ""
        wrong = _notification_problems(exp, req)
        if wrong:
            rep.bad_calls += 1
            rep.problem(f"{exp.tracking_id}: notification {wrong}")
            continue
        if key not in exp.notifications:
            rep.unexpected += 1
            rep.problem(f"{exp.tracking_id}: unexpected notification {key}")
            continue
        if key not in first_seen:
            first_seen.append(key)
        if req.ok:
            if key in accepted:
                rep.duplicates += 1
            accepted.add(key)
    rep.notifications_ok += len(accepted)
    order = [k for k in exp.notifications if k in first_seen]
    if first_seen != order:
        rep.out_of_order += 1
        rep.problem(f"{exp.tracking_id}: notifications arrived as {first_seen}, want {order}")
    for key in exp.notifications:
        if key not in accepted:
            rep.problem(f"{exp.tracking_id}: notification {key} never accepted")


def _notification_problems(exp: Expected, req: RecordedRequest) -> str:
    body = req.body if isinstance(req.body, dict) else {}
    if (req.method, req.path) != ("POST", "/notifications"):
        return f"went to {req.method} {req.path}"
    want = {
        "tracking_id": exp.tracking_id, "order_id": exp.order_id,
        "rider_id": exp.rider_id, "phone": exp.phone,
    }  # fmt: skip
    if {k: body.get(k) for k in want} != want or not isinstance(body.get("at"), int):
        return f"body {body!r}"
    key = f"{exp.tracking_id}:{body.get('event')}:{body.get('status')}"
    if req.idempotency_key != key:
        return f"Idempotency-Key {req.idempotency_key!r} does not match body ({key!r})"
    return ""
