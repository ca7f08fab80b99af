"""The integration-call checks, fed recorded requests as the stubs record them (no network)."""

from __future__ import annotations

import json
from typing import Any

from harness import mint
from sim.integrations import check_calls, expected_calls
from sim.stubs import RecordedRequest

SECRET = "s3cret-for-tests-only-0123456789abcdef"
SESSION = {
    "tracking_id": "TRK-a", "order_id": "ORD-1", "rider_id": "RIDER-1", "phone": "+233240000000",
    "statuses": ["PICKED_UP", "IN_TRANSIT", "DELIVERED"],
}  # fmt: skip


def req(
    path: str, body: dict[str, Any], key: str, answered: int = 200, role: str = "service"
) -> RecordedRequest:
    headers = {"idempotency-key": key, "authorization": f"Bearer {mint(SECRET, role, 'tracking')}"}
    return RecordedRequest("POST", path, headers, body, json.dumps(body).encode(), 1.0, answered)


def order_call(**over: Any) -> RecordedRequest:
    body = {"status": "DELIVERED", "tracking_id": "TRK-a", "rider_id": "RIDER-1",
            "delivered_at": 1704067850}  # fmt: skip
    key = over.pop("key", "TRK-a:DELIVERED")
    answered = over.pop("answered", 200)
    role = over.pop("role", "service")
    return req("/orders/ORD-1/status", {**body, **over}, key, answered, role)


def note(event: str, status: str, answered: int = 200, **over: Any) -> RecordedRequest:
    body = {"event": event, "tracking_id": "TRK-a", "order_id": "ORD-1", "rider_id": "RIDER-1",
            "status": status, "phone": "+233240000000", "at": 1704067850, **over}  # fmt: skip
    return req("/notifications", body, f"TRK-a:{event}:{status}", answered)


def all_notes() -> list[RecordedRequest]:
    return [
        note("tracking_started", "ASSIGNED"), note("status_changed", "PICKED_UP"),
        note("status_changed", "IN_TRANSIT"), note("delivered", "DELIVERED"),
    ]  # fmt: skip


def test_expected_calls_follow_the_contract() -> None:
    exp = expected_calls(SESSION)
    assert exp.order_key == "TRK-a:DELIVERED"
    assert exp.notifications == (
        "TRK-a:tracking_started:ASSIGNED", "TRK-a:status_changed:PICKED_UP",
        "TRK-a:status_changed:IN_TRANSIT", "TRK-a:delivered:DELIVERED",
    )  # fmt: skip
    no_phone = expected_calls({**SESSION, "phone": None, "statuses": ["PICKED_UP"]})
    assert no_phone.notifications == ("TRK-a:status_changed:PICKED_UP",)
    assert no_phone.order_key is None


def test_complete_and_correct_calls_pass_even_with_retries_and_duplicates() -> None:
    orders = [order_call(answered=503), order_call(), order_call()]
    notes = [note("tracking_started", "ASSIGNED", answered=503), *all_notes()]
    rep = check_calls([expected_calls(SESSION)], orders, notes, SECRET)
    assert rep.complete, rep.problems
    assert (rep.bad_calls, rep.out_of_order, rep.unexpected) == (0, 0, 0)
    assert rep.duplicates == 1
    assert rep.failed_answers == 2


def test_missing_calls_are_not_complete() -> None:
    rep = check_calls([expected_calls(SESSION)], [order_call(answered=503)], all_notes()[:2])
    assert not rep.complete
    assert (rep.orders_ok, rep.notifications_ok) == (0, 2)
    assert any("no accepted order call" in p for p in rep.problems)


def test_wrong_key_body_or_token_is_a_bad_call() -> None:
    bad = [
        order_call(key="TRK-a"), order_call(status="delivered"),
        order_call(delivered_at="yesterday"), order_call(role="rider"),
    ]  # fmt: skip
    rep = check_calls([expected_calls(SESSION)], bad, all_notes(), SECRET)
    assert rep.bad_calls == 4
    assert rep.orders_ok == 0
    leaked = check_calls(
        [expected_calls(SESSION)], [], [note("delivered", "DELIVERED", phone=None)]
    )
    assert leaked.bad_calls == 1


def test_a_token_signed_with_another_secret_is_refused() -> None:
    rep = check_calls(
        [expected_calls(SESSION)], [order_call()], all_notes(), "another-secret-x" * 3
    )
    assert rep.bad_calls == 1


def test_notifications_out_of_order_or_unexpected_are_caught() -> None:
    notes = all_notes()
    rep = check_calls(
        [expected_calls(SESSION)], [order_call()], [notes[0], notes[2], notes[1], notes[3]]
    )
    assert rep.out_of_order == 1
    extra = check_calls(
        [expected_calls(SESSION)],
        [order_call()],
        [*all_notes(), note("status_changed", "DELIVERED")],
    )
    assert extra.unexpected == 1


def test_calls_of_other_sessions_are_ignored() -> None:
    other = note("delivered", "DELIVERED", tracking_id="TRK-other")
    rep = check_calls([expected_calls(SESSION)], [order_call()], [*all_notes(), other])
    assert rep.complete
    assert rep.problems == []
