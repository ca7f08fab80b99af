"""API.md "The session": status machine, ETA, coordinates, ids, the view; plus `seq` and history."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest

from harness import ServerProcess
from tests.e2e.clients import (
    DROPOFF,
    STATUSES,
    Api,
    assert_error,
    assert_view,
    expected_eta,
    haversine_km,
    north_of,
    uid,
)

ID_SHAPE = re.compile(r"^TRK-[A-Za-z0-9_-]{20,}$")


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


# --- status machine ------------------------------------------------------------------------

PAIRS = [(a, b) for a in STATUSES for b in [*STATUSES, None]]


@pytest.mark.parametrize(("current", "requested"), PAIRS)
def test_status_keeps_or_moves_one_step_forward(
    api: Api, current: str, requested: str | None
) -> None:
    view = api.advance_to(api.start_ok(), current)
    i = STATUSES.index(current)
    allowed_next = STATUSES[i + 1] if i + 1 < len(STATUSES) else None
    resp = api.update(view["tracking_id"], 5.62, -0.19, requested, rider=view["rider_id"])
    if current == "DELIVERED":
        # Terminal: every further update is refused, even one that keeps the status.
        assert_error(resp, 409)
        assert api.view(view["tracking_id"]) == view
    elif requested in (None, current, allowed_next):
        assert resp.status_code == 200, resp.text
        assert_view(resp.json(), status=requested or current)
    else:
        assert allowed_next is not None
        assert_error(resp, 409, allowed_next)
        assert api.view(view["tracking_id"]) == view


@pytest.mark.parametrize("status", ["FLYING", "picked_up", "", 3, ["PICKED_UP"]])
def test_unknown_status_is_422(api: Api, status: Any) -> None:
    view = api.start_ok()
    resp = api.http.post(f"/tracking/update/{view['tracking_id']}",
                         json={"lat": 5.6, "lng": -0.18, "status": status},
                         headers=api.auth("rider", view["rider_id"]))
    assert_error(resp, 422)
    assert api.view(view["tracking_id"]) == view


# --- ETA -------------------------------------------------------------------------------------

def test_eta_is_null_before_the_first_location(api: Api) -> None:
    view = api.start_ok()
    assert view["current_location"] is None
    assert view["eta_seconds"] is None


def test_eta_for_2_5_km_at_30_kmh_is_300_s(api: Api) -> None:
    view = api.start_ok(dropoff=(0.0, 0.0))
    lat, lng = north_of(0.0, 0.0, 2.5)
    after = api.update_ok(view, lat, lng)
    assert after["eta_seconds"] == 300
    assert after["current_location"]["lat"] == lat
    assert after["current_location"]["lng"] == lng


@pytest.mark.parametrize("km", [0.0, 0.1, 0.4999])
def test_eta_is_at_least_60_s_while_not_delivered(api: Api, km: float) -> None:
    view = api.start_ok(dropoff=(10.0, 20.0))
    lat, lng = north_of(10.0, 20.0, km)
    assert api.update_ok(view, lat, lng)["eta_seconds"] == 60


def test_eta_follows_the_haversine_formula(api: Api) -> None:
    rng = random.Random(20240101)
    view = api.start_ok(dropoff=DROPOFF)
    checked = 0
    while checked < 12:
        lat = DROPOFF[0] + rng.uniform(-0.5, 0.5)
        lng = DROPOFF[1] + rng.uniform(-0.5, 0.5)
        exact = haversine_km(lat, lng, *DROPOFF) / 30 * 3600
        if abs(exact - round(exact)) > 0.49:
            continue  # too near a rounding boundary for float noise to be irrelevant
        view = api.update_ok(view, lat, lng)
        assert view["eta_seconds"] == expected_eta(lat, lng, *DROPOFF), (lat, lng, view)
        checked += 1


def test_eta_is_0_once_delivered(api: Api) -> None:
    view = api.advance_to(api.start_ok(), "IN_TRANSIT")
    assert view["eta_seconds"] is not None
    assert view["eta_seconds"] >= 60
    far = north_of(*DROPOFF, 10.0)
    delivered = api.update_ok(view, far[0], far[1], "DELIVERED")
    assert delivered["eta_seconds"] == 0
    assert api.view(view["tracking_id"])["eta_seconds"] == 0


# --- coordinates -----------------------------------------------------------------------------

GOOD_COORDS = [(90, 180), (-90, -180), (0, 0), (89.999999, -179.999999)]
BAD_COORDS: list[tuple[Any, Any]] = [
    (90.000001, 0), (-90.000001, 0), (0, 180.000001), (0, -180.000001), (1000, 0), (0, -1e9),
    ("5.6", -0.18), (5.6, "-0.18"), ("north", 0), (None, 0), (0, None), (True, 0), (0, False),
    ([5.6], 0), ({"v": 5.6}, 0),
]
# Not expressible in strict JSON; sent as raw text the way a sloppy client would.
NON_FINITE = [(field, value) for field in ("lat", "lng")
              for value in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")]


def _raw(lat: str, lng: str, prefix: str = "") -> str:
    return f'{{{prefix}"{"dropoff_" if prefix else ""}lat": {lat}, ' \
           f'"{"dropoff_" if prefix else ""}lng": {lng}}}'


@pytest.mark.parametrize(("lat", "lng"), GOOD_COORDS)
def test_coordinates_in_range_are_accepted(api: Api, lat: float, lng: float) -> None:
    view = api.start_ok(dropoff=(lat, lng))
    assert view["dropoff"] == {"lat": lat, "lng": lng}
    after = api.update_ok(view, lat, lng)
    assert (after["current_location"]["lat"], after["current_location"]["lng"]) == (lat, lng)


@pytest.mark.parametrize(("lat", "lng"), BAD_COORDS)
def test_bad_update_coordinates_are_422_and_change_nothing(api: Api, lat: Any, lng: Any) -> None:
    view = api.start_ok()
    assert_error(api.update(view["tracking_id"], lat, lng, rider=view["rider_id"]), 422)
    assert api.view(view["tracking_id"]) == view


@pytest.mark.parametrize(("field", "value"), NON_FINITE)
def test_non_finite_update_coordinates_are_422(api: Api, field: str, value: str) -> None:
    view = api.start_ok()
    raw = _raw(value, "0") if field == "lat" else _raw("0", value)
    resp = api.raw_post(f"/tracking/update/{view['tracking_id']}", raw,
                        api.auth("rider", view["rider_id"]))
    assert_error(resp, 422)
    assert api.view(view["tracking_id"]) == view


@pytest.mark.parametrize(("lat", "lng"), BAD_COORDS)
def test_bad_dropoff_coordinates_are_422(api: Api, lat: Any, lng: Any) -> None:
    rider, order = uid("RIDER"), uid("ORD")
    body = {"order_id": order, "rider_id": rider, "dropoff_lat": lat, "dropoff_lng": lng}
    assert_error(api.http.post("/tracking/start", json=body, headers=api.auth("rider", rider)),
                 422)
    # Nothing was created: the order is still free.
    assert api.start(rider, order).status_code == 201


@pytest.mark.parametrize(("field", "value"), NON_FINITE)
def test_non_finite_dropoff_is_422(api: Api, field: str, value: str) -> None:
    rider, order = uid("RIDER"), uid("ORD")
    prefix = f'"order_id": "{order}", "rider_id": "{rider}", '
    raw = _raw(value, "0", prefix) if field == "lat" else _raw("0", value, prefix)
    assert_error(api.raw_post("/tracking/start", raw, api.auth("rider", rider)), 422)
    assert api.start(rider, order).status_code == 201


# --- ids, the view, the phone ----------------------------------------------------------------

def test_tracking_ids_are_unguessable(api: Api) -> None:
    ids = [api.start_ok()["tracking_id"] for _ in range(12)]
    for tid in ids:
        assert ID_SHAPE.match(tid), f"expected TRK- and 20+ url-safe characters: {tid!r}"
    assert len(set(ids)) == len(ids)
    # Random, not a counter or a timestamp: no two share a 6-character prefix or suffix.
    bodies = [tid[4:] for tid in ids]
    for a, b in [(a, b) for i, a in enumerate(bodies) for b in bodies[i + 1:]]:
        assert a[:6] != b[:6], (a, b)
        assert a[-6:] != b[-6:], (a, b)


def test_the_public_view_never_carries_the_phone(api: Api) -> None:
    phone = "+233501234567"
    rider = uid("RIDER")
    resp = api.start(rider, phone=phone)
    assert resp.status_code == 201, resp.text
    view = resp.json()
    seen = [resp.text]
    upd = api.update(view["tracking_id"], 5.61, -0.18, "PICKED_UP", rider=rider)
    seen.append(upd.text)
    seen.append(api.get(view["tracking_id"]).text)
    seen.append(api.http.get(f"/tracking/rider/{rider}", headers=api.auth("merchant", "m")).text)
    for text in seen:
        assert "233501234567" not in text, text
        assert "phone" not in text, text


def test_start_returns_the_view_of_a_new_session(api: Api) -> None:
    rider, order = uid("RIDER"), uid("ORD")
    resp = api.start(rider, order, dropoff=(5.6037, -0.1869))
    assert resp.status_code == 201, resp.text
    view = assert_view(resp.json(), order_id=order, rider_id=rider, status="ASSIGNED",
                       current_location=None, eta_seconds=None,
                       dropoff={"lat": 5.6037, "lng": -0.1869})
    assert view["tracking_id"].startswith("TRK-")
    assert api.view(view["tracking_id"]) == view


def test_update_moves_the_location_and_stamps_it(api: Api) -> None:
    view = api.start_ok()
    after = api.update_ok(view, 5.6045, -0.1875, "PICKED_UP")
    loc = after["current_location"]
    assert (loc["lat"], loc["lng"]) == (5.6045, -0.1875)
    assert after["updated_at"] >= view["updated_at"]
    assert loc["timestamp"] >= view["updated_at"]
    assert {k: after[k] for k in ("tracking_id", "order_id", "rider_id", "dropoff")} == {
        k: view[k] for k in ("tracking_id", "order_id", "rider_id", "dropoff")}


def test_a_second_live_session_for_one_order_is_409(api: Api) -> None:
    first = api.start_ok()
    order = first["order_id"]
    # Its own rider starting it again gets the live session back (README "Beyond API.md").
    again = api.start(first["rider_id"], order)
    assert again.status_code == 200, again.text
    assert again.json()["tracking_id"] == first["tracking_id"]
    assert first["tracking_id"] not in assert_error(api.start(uid("RIDER"), order), 409)
    assert_error(api.start(uid("RIDER"), order, headers=api.auth("superadmin", "ops")), 409)
    # A delivered session is still live until it expires, so the order stays taken.
    delivered = api.advance_to(first, "DELIVERED")
    assert_error(api.start(uid("RIDER"), order), 409)
    assert api.start(first["rider_id"], order).json() == delivered
    assert api.view(first["tracking_id"])["status"] == "DELIVERED"


# --- seq and history (extras beyond API.md) --------------------------------------------------

def test_seq_starts_at_1_and_grows_by_one_per_accepted_change(api: Api) -> None:
    view = api.start_ok()
    assert view["seq"] == 1
    view = api.update_ok(view, 5.61, -0.18)
    assert view["seq"] == 2
    refused = api.update(view["tracking_id"], 5.62, -0.18, "DELIVERED", rider=view["rider_id"])
    assert refused.status_code == 409
    assert api.update(view["tracking_id"], 99, 0, rider=view["rider_id"]).status_code == 422
    assert api.view(view["tracking_id"])["seq"] == 2
    view = api.update_ok(view, 5.62, -0.18, "PICKED_UP")
    assert view["seq"] == 3


def test_history_pages_through_accepted_changes(api: Api) -> None:
    view = api.start_ok()
    tid = view["tracking_id"]
    points = [(5.61 + i / 1000, -0.18) for i in range(5)]
    steps = [None, "PICKED_UP", None, "IN_TRANSIT", None]
    for (lat, lng), status in zip(points, steps, strict=True):
        view = api.update_ok(view, lat, lng, status)
    assert view["seq"] == 6
    resp = api.http.get(f"/tracking/{tid}/history", params={"since_seq": 0, "limit": 100})
    assert resp.status_code == 200, resp.text
    full = resp.json()
    assert full["tracking_id"] == tid
    assert full["next_since_seq"] is None
    items = full["items"]
    seqs = [it["seq"] for it in items]
    assert seqs[-1] == 6, seqs
    assert all(b == a + 1 for a, b in pairwise(seqs)), seqs
    updates = [it for it in items if it["seq"] >= 2]
    assert [(it["lat"], it["lng"]) for it in updates] == points
    prev = "ASSIGNED"
    for it, status in zip(updates, steps, strict=True):
        assert it["status"] == (status or prev), it
        if status is not None:
            assert it["previous_status"] == prev, it
        else:
            assert it["previous_status"] in (None, prev), it
        assert isinstance(it["at"], int), it
        prev = it["status"]
    # Paging: limit 2 from the start, following next_since_seq, yields the same items.
    paged: list[dict[str, Any]] = []
    since: int | None = 0
    while since is not None:
        page = api.http.get(f"/tracking/{tid}/history", params={"since_seq": since, "limit": 2})
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        assert all(it["seq"] > since for it in body["items"])
        paged += body["items"]
        since = body["next_since_seq"]
        assert len(paged) <= len(items)
    assert paged == items
    tail = api.http.get(f"/tracking/{tid}/history", params={"since_seq": 4}).json()
    assert [it["seq"] for it in tail["items"]] == [5, 6]


def test_history_of_an_unknown_session_is_404(api: Api) -> None:
    assert_error(api.http.get(f"/tracking/TRK-{'x' * 24}/history"), 404)
