"""One session's state: seq, the public view, updates, authorization and expiry (time passed in)."""

from __future__ import annotations

import math

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.domain.errors import Conflict, Expired, Forbidden
from engine.domain.geo import EARTH_RADIUS_KM
from engine.domain.session import Change, Lifetimes, Session
from engine.domain.status import Status
from engine.domain.view import HistoryItem, Location, Point, View

LT = Lifetimes(session_ttl_s=1000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
DROP = (5.6037, -0.1869)
PHONE = "+233 20 555 0101"
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180
CONTRACT_KEYS = {
    "tracking_id", "order_id", "rider_id", "status", "current_location", "dropoff",
    "eta_seconds", "updated_at",
}  # fmt: skip


def new_session(clock: ManualClock, phone: str | None = PHONE) -> Session:
    return Session("TRK-abc", "ORD-1", "RIDER-1", *DROP, phone, clock())


def public(v: View) -> dict[str, object]:
    """The view as it goes out (JSON), which is what the contract is about."""
    out: dict[str, object] = orjson.loads(msgspec.json.encode(v))
    return out


def state(s: Session) -> tuple[object, ...]:
    return (
        s.tracking_id, s.order_id, s.rider_id, s.phone, s.dropoff_lat, s.dropoff_lng,
        s.started_at, s.updated_at, s.status, s.lat, s.lng, s.loc_ts, s.delivered_at, s.eta, s.seq,
    )  # fmt: skip


def test_a_new_session() -> None:
    clock = ManualClock(1_704_067_800.25)
    s = new_session(clock)
    v = s.view()
    assert isinstance(v, View)
    assert v.tracking_id == "TRK-abc"
    assert v.order_id == "ORD-1"
    assert v.rider_id == "RIDER-1"
    assert v.status is Status.ASSIGNED
    assert v.current_location is None
    assert v.eta_seconds is None
    assert v.dropoff == Point(DROP[0], DROP[1])
    assert v.updated_at == 1_704_067_800
    assert v.started_at == 1_704_067_800
    assert v.seq == 1
    out = public(v)
    assert set(out) >= CONTRACT_KEYS
    assert out["status"] == "ASSIGNED"
    assert out["current_location"] is None
    assert out["dropoff"] == {"lat": DROP[0], "lng": DROP[1]}
    assert out["updated_at"] == 1_704_067_800


def test_first_change_is_seq_one() -> None:
    s = new_session(ManualClock())
    assert s.first_change() == Change("TRK-abc", 1, Status.ASSIGNED, None, None, None, s.started_at)


@pytest.mark.parametrize("phone", [PHONE, "0201234567", None])
def test_the_view_never_carries_the_phone(phone: str | None) -> None:
    clock = ManualClock()
    s = new_session(clock, phone)
    views = [s.view()]
    for status in (None, "PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        clock.advance(5)
        s.apply_update(5.61, -0.19, Status(status) if status else None, clock(), LT)
        views.append(s.view())
    assert "phone" not in View.__struct_fields__
    for v in views:
        assert "phone" not in public(v)
        if phone is not None:
            assert phone.encode() not in msgspec.json.encode(v)


def test_an_accepted_update() -> None:
    clock = ManualClock()
    s = new_session(clock)
    clock.advance(30.7)
    lat = DROP[0] + 2.5 / KM_PER_DEGREE
    ch = s.apply_update(lat, DROP[1], None, clock(), LT)
    v = s.view()
    assert ch == Change("TRK-abc", 2, Status.ASSIGNED, None, lat, DROP[1], clock())
    assert v.seq == 2
    assert v.status is Status.ASSIGNED
    assert v.current_location == Location(lat, DROP[1], int(clock()))
    assert public(v)["current_location"] == {"lat": lat, "lng": DROP[1], "timestamp": int(clock())}
    assert v.updated_at == int(clock())
    assert v.started_at == int(clock() - 30.7)
    assert v.eta_seconds == 300


def test_a_status_step_reports_the_previous_status() -> None:
    clock = ManualClock()
    s = new_session(clock)
    ch = s.apply_update(5.61, -0.19, Status.PICKED_UP, clock(), LT)
    assert (ch.status, ch.previous_status) == (Status.PICKED_UP, Status.ASSIGNED)
    ch = s.apply_update(5.61, -0.19, Status.PICKED_UP, clock(), LT)
    assert (ch.status, ch.previous_status) == (Status.PICKED_UP, None)


def test_history_item() -> None:
    # A history item is what GET /tracking/{id}/history lists (the store builds it from a
    # journaled Change, with `at` in whole seconds: see test_store).
    item = HistoryItem(3, Status.PICKED_UP, Status.ASSIGNED, 5.6, -0.2, 1_704_067_850)
    assert orjson.loads(msgspec.json.encode(item)) == {
        "seq": 3, "status": "PICKED_UP", "previous_status": "ASSIGNED",
        "lat": 5.6, "lng": -0.2, "at": 1_704_067_850,
    }  # fmt: skip
    first = HistoryItem(1, Status.ASSIGNED, None, None, None, 10)
    assert orjson.loads(msgspec.json.encode(first))["previous_status"] is None


def test_delivery_sets_eta_zero_and_delivered_at_once() -> None:
    clock = ManualClock()
    s = new_session(clock)
    for status in (Status.PICKED_UP, Status.IN_TRANSIT):
        s.apply_update(5.7, -0.19, status, clock(), LT)
    clock.advance(10)
    s.apply_update(5.7, -0.19, Status.DELIVERED, clock(), LT)
    assert s.view().eta_seconds == 0
    assert s.delivered_at == clock()


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), Status.IN_TRANSIT),
        ((Status.PICKED_UP,), Status.ASSIGNED),
        ((Status.PICKED_UP, Status.IN_TRANSIT), Status.PICKED_UP),
        ((Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED), None),
        ((Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED), Status.DELIVERED),
    ],
)
def test_a_refused_update_changes_nothing(path: tuple[Status, ...], refused: Status | None) -> None:
    clock = ManualClock()
    s = new_session(clock)
    for status in path:
        clock.advance(1)
        s.apply_update(5.61, -0.19, status, clock(), LT)
    before_state, before_view = state(s), s.view()
    clock.advance(1)
    with pytest.raises(Conflict):
        s.apply_update(6.0, 1.0, refused, clock(), LT)
    assert state(s) == before_state
    assert s.view() == before_view


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(st.lists(st.sampled_from([None, *Status]), max_size=25))
def test_seq_grows_by_one_per_accepted_change_only(requests: list[Status | None]) -> None:
    clock = ManualClock()
    s = new_session(clock)
    accepted = 0
    for i, requested in enumerate(requests):
        clock.advance(1)
        seq_before = s.seq
        try:
            ch = s.apply_update(5.6 + i / 1000, -0.19, requested, clock(), LT)
        except Conflict:
            assert s.seq == seq_before
            continue
        accepted += 1
        assert ch.seq == s.seq == seq_before + 1
        assert s.view().seq == s.seq
    assert s.seq == 1 + accepted


def test_authorization() -> None:
    s = new_session(ManualClock())
    s.authorize_update("RIDER-1")
    s.authorize_update(None)  # a superadmin
    for other in ("RIDER-2", "", "rider-1"):
        with pytest.raises(Forbidden):
            s.authorize_update(other)


# -- expiry -----------------------------------------------------------------------------------


def test_expires_a_session_ttl_after_it_started() -> None:
    clock = ManualClock()
    s = new_session(clock)
    start = clock()
    assert s.expires_at(LT) == start + 1000
    assert s.is_live(start + 999.999, LT)
    s.ensure_live(start + 999.999, LT)
    assert not s.is_live(start + 1000, LT)
    with pytest.raises(Expired) as info:
        s.ensure_live(start + 1000, LT)
    assert info.value.detail == "Tracking session expired"


def test_updates_do_not_extend_the_session_ttl() -> None:
    clock = ManualClock()
    s = new_session(clock)
    start = clock()
    clock.advance(900)
    s.apply_update(5.61, -0.19, Status.PICKED_UP, clock(), LT)
    assert s.expires_at(LT) == start + 1000


def test_a_delivered_session_expires_a_delivered_ttl_after_delivery() -> None:
    clock = ManualClock()
    s = new_session(clock)
    start = clock()
    for status in (Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED):
        clock.advance(10)
        s.apply_update(5.61, -0.19, status, clock(), LT)
    assert s.expires_at(LT) == start + 30 + 100
    assert s.is_live(start + 129.9, LT)
    assert not s.is_live(start + 130, LT)


def test_whichever_comes_first_session_ttl_beats_a_late_delivery() -> None:
    clock = ManualClock()
    s = new_session(clock)
    start = clock()
    for status in (Status.PICKED_UP, Status.IN_TRANSIT):
        s.apply_update(5.61, -0.19, status, clock(), LT)
    clock.advance(950)
    s.apply_update(5.61, -0.19, Status.DELIVERED, clock(), LT)
    assert s.expires_at(LT) == start + 1000  # not start + 950 + 100


def test_purgeable_a_grace_period_after_expiry() -> None:
    clock = ManualClock()
    s = new_session(clock)
    end = clock() + 1000
    assert not s.is_purgeable(end, LT)
    assert not s.is_purgeable(end + 49.9, LT)
    assert s.is_purgeable(end + 50, LT)


def restored(s: Session, last: Change) -> Session:
    return Session.restore(s.to_row(), last, LT)


def test_restored_from_its_facts_and_last_change_it_is_the_same_session() -> None:
    clock = ManualClock()
    s = new_session(clock)
    last = s.first_change()
    assert restored(s, last).view() == s.view()
    for status in (None, Status.PICKED_UP, None, Status.IN_TRANSIT, Status.DELIVERED):
        clock.advance(7.5)
        last = s.apply_update(5.62 + clock() % 1, -0.18, status, clock(), LT)
        back = restored(s, last)
        assert back.view() == s.view()
        assert state(back) == state(s)
        assert back.phone == PHONE
        assert back.expires_at(LT) == s.expires_at(LT)
    fresh = new_session(clock, phone=None)
    assert restored(fresh, fresh.first_change()).view() == fresh.view()
