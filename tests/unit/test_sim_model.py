"""The simulator's rider model: street routes, movement, GPS noise and the delivery timeline."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from sim.geo import LocalFrame, contract_eta_s, haversine_km
from sim.movement import BIKE, SCOOTER, drive
from sim.plan import STATUSES, PlanSettings, plan_delivery
from sim.route import City, StreetGrid


def test_haversine_and_contract_eta() -> None:
    # One degree of latitude is pi * R / 180 km with the contract's R.
    assert haversine_km(0, 0, 1, 0) == pytest.approx(math.pi * 6371 / 180)
    assert contract_eta_s(2.5, 30) == 300
    assert contract_eta_s(0.1, 30) == 60


def test_local_frame_round_trips_and_measures_metres() -> None:
    frame = LocalFrame(5.6037, -0.187)
    lat, lng = frame.to_latlng(300.0, -400.0)
    assert frame.to_xy(lat, lng) == pytest.approx((300.0, -400.0))
    assert haversine_km(5.6037, -0.187, lat, lng) * 1000 == pytest.approx(500, rel=1e-3)


def test_routes_follow_streets_and_are_shortest_on_the_grid() -> None:
    grid = StreetGrid(City(block_m=100, grid_angle_deg=30))
    rng = random.Random(3)
    for _ in range(50):
        a, b = grid.random_node(rng), grid.random_node(rng)
        route = grid.route(rng, a, b)
        assert route.points[0] == pytest.approx(grid.xy(a))
        assert route.points[-1] == pytest.approx(grid.xy(b))
        assert route.length_m == pytest.approx(grid.distance_m(a, b))
        for (x0, y0), (x1, y1) in zip(route.points, route.points[1:], strict=False):
            heading = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 90
            assert heading == pytest.approx(30, abs=1e-6)  # every leg runs along a street


def test_a_route_across_blocks_is_not_a_straight_line() -> None:
    grid = StreetGrid(City())
    route = grid.route(random.Random(1), (0, 0), (10, 7))
    straight = math.dist(route.points[0], route.points[-1])
    assert len(route.points) >= 3
    assert route.length_m > straight * 1.2


def test_positions_along_a_route_are_on_it_and_clamped() -> None:
    grid = StreetGrid(City(block_m=100, grid_angle_deg=0))
    route = grid.route(random.Random(2), (0, 0), (3, 0))
    assert route.at(-5) == pytest.approx((0, 0))
    assert route.at(150) == pytest.approx((150, 0))
    assert route.at(1e9) == pytest.approx((300, 0))
    assert route.intersections() == [100, 200]


def test_speeds_are_realistic_with_stops() -> None:
    grid = StreetGrid(City())
    rng = random.Random(4)
    for vehicle in (SCOOTER, BIKE):
        speeds, stopped = [], 0.0
        for _ in range(200):
            route = grid.route(rng, (0, 0), (12, 9))
            traj = drive(route, vehicle, rng, start_s=10)
            moving = traj.end_s - traj.start_s - traj.stopped_time_s()
            speeds.append(route.length_m / moving * 3.6)
            stopped += traj.stopped_time_s()
        median = sorted(speeds)[len(speeds) // 2]
        assert vehicle.median_kmh * 0.8 < median < vehicle.median_kmh * 1.2
        assert max(speeds) <= vehicle.max_kmh
        assert stopped > 0


def test_distance_along_a_trajectory_never_goes_backwards() -> None:
    grid = StreetGrid(City())
    traj = drive(grid.route(random.Random(5), (0, 0), (8, -6)), SCOOTER, random.Random(6), 0)
    ds = [traj.distance_at(t / 2) for t in range(int(traj.end_s * 2) + 4)]
    assert ds == sorted(ds)
    assert ds[0] == 0
    assert ds[-1] == pytest.approx(traj.route.length_m)


def test_same_seed_gives_the_same_updates_and_another_seed_does_not() -> None:
    settings = PlanSettings()
    assert plan_delivery(42, 7, settings) == plan_delivery(42, 7, settings)
    assert plan_delivery(42, 7, settings).updates != plan_delivery(43, 7, settings).updates
    assert plan_delivery(42, 7, settings).updates != plan_delivery(42, 8, settings).updates


def test_status_timeline_follows_the_delivery() -> None:
    settings = PlanSettings(gps_noise_m=0)
    frame = LocalFrame(settings.city.center_lat, settings.city.center_lng)
    for i in range(30):
        plan = plan_delivery(1, i, settings)
        statuses = [u.status for u in plan.status_updates()]
        assert statuses == list(STATUSES[1:])
        times = [u.t_s for u in plan.updates]
        assert times == sorted(times)
        assert plan.updates[-1].status == "DELIVERED"
        picked, transit, delivered = plan.status_updates()
        # Picked up at the merchant, delivered at the customer's door.
        assert math.dist(frame.to_xy(picked.lat, picked.lng), frame.to_xy(*plan.pickup)) < 1
        assert math.dist(frame.to_xy(transit.lat, transit.lng), frame.to_xy(*plan.pickup)) < 1
        assert math.dist(frame.to_xy(delivered.lat, delivered.lng), frame.to_xy(*plan.dropoff)) < 1


def test_deliveries_last_like_real_ones_and_report_at_the_interval() -> None:
    settings = PlanSettings(interval_s=10)
    plans = [plan_delivery(9, i, settings) for i in range(100)]
    minutes = sorted(p.duration_s / 60 for p in plans)
    assert 12 < minutes[50] < 30
    for p in plans:
        regular = [u.t_s for u in p.updates if u.status is None]
        gaps = [b - a for a, b in itertools.pairwise(regular)]
        assert all(8.9 <= g <= 11.1 for g in gaps)


def test_gps_noise_is_a_few_metres() -> None:
    clean = plan_delivery(5, 0, PlanSettings(gps_noise_m=0))
    noisy = plan_delivery(5, 0, PlanSettings(gps_noise_m=4))
    frame = LocalFrame(5.6037, -0.187)
    errors = [
        math.dist(frame.to_xy(a.lat, a.lng), frame.to_xy(b.lat, b.lng))
        for a, b in zip(clean.updates, noisy.updates, strict=True)
    ]
    assert 2 < sum(errors) / len(errors) < 10
    assert max(errors) < 30


def test_points_stay_inside_the_city() -> None:
    city = City(center_lat=-33.92, center_lng=18.42, radius_km=3)
    frame = LocalFrame(city.center_lat, city.center_lng)
    for i in range(50):
        plan = plan_delivery(2, i, PlanSettings(city=city))
        for point in (plan.start, plan.pickup, plan.dropoff):
            assert math.hypot(*frame.to_xy(*point)) <= 3000 + 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="vehicles"):
        PlanSettings(vehicle_mix={"tram": 1.0})
    with pytest.raises(ValueError, match="interval"):
        PlanSettings(interval_s=0)
    with pytest.raises(ValueError, match="radius"):
        City(radius_km=0)
