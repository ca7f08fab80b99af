"""Haversine distance (R = 6371 km) and the contract's coordinate rules.

The domain assumes finite, in-range degrees; coordinates are validated where they come in: the
HTTP request bodies (`api.models`) and the WebSocket reader (`engine.protocol`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from api.models import StartRequest, UpdateRequest
from engine.domain.geo import EARTH_RADIUS_KM, haversine_km
from engine.protocol import BadMessage, ReportLocation, read_client_message

lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
lngs = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.tuples(lats, lngs)

HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM  # 20015.086...


def vector_distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """An independent oracle: the angle between unit vectors, via atan2(|u x v|, u . v)."""

    def unit(lat: float, lng: float) -> tuple[float, float, float]:
        p, lam = math.radians(lat), math.radians(lng)
        return (math.cos(p) * math.cos(lam), math.cos(p) * math.sin(lam), math.sin(p))

    u, v = unit(*a), unit(*b)
    cross = (
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    )
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    return EARTH_RADIUS_KM * math.atan2(math.hypot(*cross), dot)


def test_radius_is_the_contracts() -> None:
    assert EARTH_RADIUS_KM == 6371.0


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(points, points)
def test_symmetric(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert haversine_km(*a, *b) == pytest.approx(haversine_km(*b, *a), abs=1e-9)


@settings(deadline=None)
@given(points)
def test_zero_on_identical_points(a: tuple[float, float]) -> None:
    assert haversine_km(*a, *a) == pytest.approx(0.0, abs=1e-9)


@settings(deadline=None)
@given(points, points)
def test_bounded_by_half_the_circumference(a: tuple[float, float], b: tuple[float, float]) -> None:
    d = haversine_km(*a, *b)
    assert 0.0 <= d <= HALF_CIRCUMFERENCE_KM + 1e-9


@settings(deadline=None)
@given(points, points, points)
def test_triangle_inequality(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]
) -> None:
    ab, bc, ac = haversine_km(*a, *b), haversine_km(*b, *c), haversine_km(*a, *c)
    assert ac <= ab + bc + 1e-6


@settings(deadline=None)
@given(points, points)
def test_agrees_with_an_independent_formula(a: tuple[float, float], b: tuple[float, float]) -> None:
    # 1 cm anywhere a delivery could be. Within a few km of the antipode the haversine is
    # ill-conditioned (asin(sqrt(h)) at h -> 1: a rounding of h costs up to R * sqrt(eps), about
    # 0.1 m; 0.11 m seen by hypothesis), so there it only has to agree to 1 m.
    expected = vector_distance_km(a, b)
    near_antipode = expected > EARTH_RADIUS_KM * (math.pi - 1e-3)
    assert haversine_km(*a, *b) == pytest.approx(expected, abs=1e-3 if near_antipode else 1e-5)


@settings(deadline=None)
@given(lats, lngs, st.floats(min_value=-360, max_value=360, allow_nan=False))
def test_longitude_wraps_around(lat: float, lng: float, dlng: float) -> None:
    # Points 360 degrees of longitude apart are the same point.
    assert haversine_km(lat, lng, lat, lng + 360.0) == pytest.approx(0.0, abs=1e-6)
    assert haversine_km(lat, lng, 0.0, dlng) == pytest.approx(
        haversine_km(lat, lng, 0.0, dlng + 360.0), abs=1e-6
    )


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        # A quarter meridian: equator to pole.
        ((0.0, 0.0), (90.0, 0.0), 10007.543),
        ((0.0, 0.0), (-90.0, 0.0), 10007.543),
        # Antipodes.
        ((0.0, 0.0), (0.0, 180.0), 20015.087),
        ((5.6037, -0.1869), (-5.6037, 179.8131), 20015.087),
        ((90.0, 0.0), (-90.0, 0.0), 20015.087),
        # Pole to pole through any longitude; the poles are single points.
        ((90.0, 0.0), (90.0, 123.0), 0.0),
        # One degree along the equator and along a meridian: pi * R / 180.
        ((0.0, 0.0), (0.0, 1.0), 111.195),
        ((10.0, 20.0), (11.0, 20.0), 111.195),
        # The contract's Accra example points (current location, dropoff): about 111 m.
        ((5.6045, -0.1875), (5.6037, -0.1869), 0.1110),
    ],
)
def test_known_distances(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert haversine_km(*a, *b) == pytest.approx(km, abs=5e-4)


def test_accra_distance_matches_a_local_flat_projection() -> None:
    # At ~100 m the sphere is flat: equirectangular projection agrees to well under a metre.
    (lat1, lng1), (lat2, lng2) = (5.6045, -0.1875), (5.6037, -0.1869)
    k = math.pi * EARTH_RADIUS_KM / 180
    dy = (lat2 - lat1) * k
    dx = (lng2 - lng1) * k * math.cos(math.radians((lat1 + lat2) / 2))
    assert haversine_km(lat1, lng1, lat2, lng2) == pytest.approx(math.hypot(dx, dy), abs=1e-6)


# -- coordinate validation, where coordinates come in ----------------------------------------


def _bodies(model: type[BaseModel], body: dict[str, Any]) -> list[BaseModel]:
    """`body` validated as a decoded JSON body, and straight from its JSON text: both ways
    must agree (raises ValidationError otherwise)."""
    return [model.model_validate(body), model.model_validate_json(json.dumps(body))]


def http_dropoff(lat: object, lng: object) -> list[tuple[float, float]]:
    body = {"order_id": "ORD-1", "rider_id": "RIDER-1", "dropoff_lat": lat, "dropoff_lng": lng}
    out = []
    for m in _bodies(StartRequest, body):
        assert isinstance(m, StartRequest)
        out.append((m.dropoff_lat, m.dropoff_lng))
    return out


def http_location(lat: object, lng: object) -> list[tuple[float, float]]:
    out = []
    for m in _bodies(UpdateRequest, {"lat": lat, "lng": lng}):
        assert isinstance(m, UpdateRequest)
        out.append((m.lat, m.lng))
    return out


def ws_location(lat: object, lng: object) -> tuple[float, float]:
    # The stdlib encoder writes NaN and Infinity as such (not JSON): what a sloppy client sends.
    raw = json.dumps({"type": "location_update", "location": {"lat": lat, "lng": lng}})
    msg = read_client_message(raw)
    assert isinstance(msg, ReportLocation)
    return msg.location.lat, msg.location.lng


def accepted_everywhere(lat: object, lng: object) -> list[tuple[float, float]]:
    return [*http_dropoff(lat, lng), *http_location(lat, lng), ws_location(lat, lng)]


@pytest.mark.parametrize(
    ("lat", "lng"),
    [(0, 0), (90, 180), (-90, -180), (90.0, -180.0), (-90.0, 180.0), (5.6037, -0.1869), (1, 2.5)],
)
def test_valid_coordinates_come_back_as_floats(lat: float, lng: float) -> None:
    for out in accepted_everywhere(lat, lng):
        assert out == (float(lat), float(lng))
        assert all(type(x) is float for x in out)


INVALID = [
    (True, 0.0, "lat"),
    (0.0, False, "lng"),
    ("5.6", 0.0, "lat"),
    (0.0, "0", "lng"),
    (None, 0.0, "lat"),
    (0.0, None, "lng"),
    ([1.0], 0.0, "lat"),
    (math.nan, 0.0, "lat"),
    (0.0, math.nan, "lng"),
    (math.inf, 0.0, "lat"),
    (0.0, -math.inf, "lng"),
    (90.0000001, 0.0, "lat"),
    (-90.0000001, 0.0, "lat"),
    (91, 0, "lat"),
    (0.0, 180.0000001, "lng"),
    (0.0, -180.0000001, "lng"),
    (0, 181, "lng"),
    (1e308, 0.0, "lat"),
    (10**400, 0, "lat"),  # beyond float range: refused, never an OverflowError
]


def refused_everywhere(lat: object, lng: object, field: str) -> None:
    """Each edge refuses, naming the field (a WebSocket message holding NaN or Infinity is not
    JSON at all, and is refused as such)."""
    with pytest.raises(ValidationError) as start:
        http_dropoff(lat, lng)
    assert {e["loc"] for e in start.value.errors()} == {(f"dropoff_{field}",)}
    with pytest.raises(ValidationError) as update:
        http_location(lat, lng)
    assert {e["loc"] for e in update.value.errors()} == {(field,)}
    with pytest.raises(BadMessage) as ws:
        ws_location(lat, lng)
    if any(isinstance(v, float) and not math.isfinite(v) for v in (lat, lng)):
        assert str(ws.value) == "message is not valid JSON"
    else:
        assert ws.value.report
        assert str(ws.value).startswith(f"invalid update: location.{field}:")


@pytest.mark.parametrize(("lat", "lng", "field"), INVALID)
def test_invalid_coordinates_are_refused_naming_the_field(
    lat: object, lng: object, field: str
) -> None:
    refused_everywhere(lat, lng, field)


@settings(deadline=None)
@given(lats, lngs)
def test_every_in_range_float_is_accepted(lat: float, lng: float) -> None:
    assert set(accepted_everywhere(lat, lng)) == {(lat, lng)}


@settings(deadline=None)
@given(
    st.one_of(
        st.floats(min_value=90, exclude_min=True, allow_infinity=True),
        st.floats(max_value=-90, exclude_max=True, allow_infinity=True),
        st.just(math.nan),
    )
)
def test_every_out_of_range_latitude_is_refused(lat: float) -> None:
    refused_everywhere(lat, 0.0, "lat")
