"""Contract ETA: max(60, round(km / speed_kmh * 3600)), 0 once DELIVERED, None before a fix."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.eta import eta_seconds
from engine.domain.geo import EARTH_RADIUS_KM, haversine_km
from engine.domain.status import Status

DROP = (5.6037, -0.1869)
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180
MOVING = (Status.ASSIGNED, Status.PICKED_UP, Status.IN_TRANSIT)


def north_of(lat: float, lng: float, km: float) -> tuple[float, float]:
    """The point `km` due north: along a meridian the great-circle distance is R * dlat."""
    return lat + km / KM_PER_DEGREE, lng


def east_on_equator(km: float) -> tuple[float, float]:
    return 0.0, km / KM_PER_DEGREE


def test_points_are_built_at_the_intended_distance() -> None:
    assert haversine_km(*north_of(*DROP, 2.5), *DROP) == pytest.approx(2.5, abs=1e-9)
    assert haversine_km(*east_on_equator(2.5), 0.0, 0.0) == pytest.approx(2.5, abs=1e-9)


@pytest.mark.parametrize("status", MOVING)
def test_contract_example_2_5_km_at_30_kmh_is_300_s(status: Status) -> None:
    lat, lng = north_of(*DROP, 2.5)
    assert eta_seconds(lat, lng, *DROP, status, 30.0) == 300


def test_contract_example_along_the_equator() -> None:
    lat, lng = east_on_equator(2.5)
    assert eta_seconds(lat, lng, 0.0, 0.0, Status.IN_TRANSIT, 30.0) == 300


@pytest.mark.parametrize(
    ("km", "speed", "expected"),
    [
        (2.5, 15.0, 600),
        (2.5, 60.0, 150),
        (10.0, 40.0, 900),
        (1.0, 30.0, 120),
        (100.0, 50.0, 7200),
        (0.75, 45.0, 60),  # exactly one minute
        (0.6, 30.0, 72),
        (3.0, 7.5, 1440),
    ],
)
def test_other_distances_and_speeds(km: float, speed: float, expected: int) -> None:
    lat, lng = north_of(*DROP, km)
    assert eta_seconds(lat, lng, *DROP, Status.IN_TRANSIT, speed) == expected


@pytest.mark.parametrize("km", [0.0, 0.01, 0.1, 0.4999])
def test_never_below_one_minute(km: float) -> None:
    lat, lng = north_of(*DROP, km)
    assert eta_seconds(lat, lng, *DROP, Status.IN_TRANSIT, 30.0) == 60


def test_at_the_dropoff_it_is_still_one_minute_until_delivered() -> None:
    assert eta_seconds(*DROP, *DROP, Status.IN_TRANSIT, 30.0) == 60
    assert eta_seconds(*DROP, *DROP, Status.DELIVERED, 30.0) == 0


@pytest.mark.parametrize("where", [None, DROP, north_of(*DROP, 2.5), (-5.6037, 179.8131)])
def test_zero_once_delivered_wherever_the_rider_is(where: tuple[float, float] | None) -> None:
    lat, lng = where if where is not None else (None, None)
    assert eta_seconds(lat, lng, *DROP, Status.DELIVERED, 30.0) == 0


@pytest.mark.parametrize("status", MOVING)
@pytest.mark.parametrize(("lat", "lng"), [(None, None), (None, 0.0), (0.0, None)])
def test_none_before_the_first_location(
    status: Status, lat: float | None, lng: float | None
) -> None:
    assert eta_seconds(lat, lng, *DROP, status, 30.0) is None


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(
    st.floats(min_value=0, max_value=20_000, allow_nan=False),
    st.floats(min_value=1, max_value=200, allow_nan=False),
)
def test_formula(km: float, speed: float) -> None:
    lat, lng = east_on_equator(km)
    distance = haversine_km(lat, lng, 0.0, 0.0)
    eta = eta_seconds(lat, lng, 0.0, 0.0, Status.PICKED_UP, speed)
    assert eta == max(60, round(distance / speed * 3600))
    assert isinstance(eta, int)


@settings(deadline=None)
@given(
    st.floats(min_value=0, max_value=500, allow_nan=False),
    st.floats(min_value=0, max_value=500, allow_nan=False),
    st.floats(min_value=1, max_value=200, allow_nan=False),
)
def test_farther_is_never_sooner(km1: float, km2: float, speed: float) -> None:
    near, far = sorted((km1, km2))
    e_near = eta_seconds(*north_of(*DROP, near), *DROP, Status.IN_TRANSIT, speed)
    e_far = eta_seconds(*north_of(*DROP, far), *DROP, Status.IN_TRANSIT, speed)
    assert e_near is not None
    assert e_far is not None
    assert 60 <= e_near <= e_far


@settings(deadline=None)
@given(
    st.floats(min_value=0, max_value=500, allow_nan=False),
    st.floats(min_value=1, max_value=200, allow_nan=False),
    st.floats(min_value=1, max_value=200, allow_nan=False),
)
def test_faster_is_never_later(km: float, s1: float, s2: float) -> None:
    slow, fast = sorted((s1, s2))
    lat, lng = north_of(*DROP, km)
    e_slow = eta_seconds(lat, lng, *DROP, Status.IN_TRANSIT, slow)
    e_fast = eta_seconds(lat, lng, *DROP, Status.IN_TRANSIT, fast)
    assert e_slow is not None
    assert e_fast is not None
    assert e_fast <= e_slow
