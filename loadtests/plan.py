"""What one synthetic rider does with one delivery: a route to the dropoff and its statuses."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIN_UPDATES = 4


@dataclass(frozen=True)
class Step:
    """One location report; `status` is None when the status stays as it is."""

    lat: float
    lng: float
    status: str | None


@dataclass(frozen=True)
class DeliveryPlan:
    dropoff_lat: float
    dropoff_lng: float
    steps: tuple[Step, ...]


def _offset(rng: random.Random, lat: float, lng: float, radius_km: float) -> tuple[float, float]:
    """A point uniformly placed within `radius_km` of (lat, lng), flat-earth approximation."""
    r = radius_km * math.sqrt(rng.random())
    theta = rng.uniform(0.0, 2 * math.pi)
    dlat = (r * math.cos(theta)) / 111.32
    dlng = (r * math.sin(theta)) / (111.32 * max(math.cos(math.radians(lat)), 0.01))
    return lat + dlat, lng + dlng


def status_schedule(updates: int) -> dict[int, str]:
    """Which update (0-based) moves the status: one step forward each, DELIVERED last.

    The first update only reports a location (status stays ASSIGNED); each change is a
    single step forward, as the contract requires.
    """
    if updates < MIN_UPDATES:
        raise ValueError(f"a delivery needs at least {MIN_UPDATES} updates, got {updates}")
    return {updates // 4: "PICKED_UP", updates // 2: "IN_TRANSIT", updates - 1: "DELIVERED"}


def plan_delivery(
    rng: random.Random, center_lat: float, center_lng: float, updates: int, radius_km: float = 3.0
) -> DeliveryPlan:
    """A straight-ish ride from a random start to a random dropoff near the center.

    Every step has distinct coordinates, and the last one is the dropoff itself.
    """
    schedule = status_schedule(updates)
    start = _offset(rng, center_lat, center_lng, radius_km)
    drop = _offset(rng, center_lat, center_lng, radius_km)
    steps = []
    for i in range(updates):
        f = (i + 1) / updates
        # A little jitter off the straight line, none at the dropoff.
        jitter = 0.0 if i == updates - 1 else 0.0002
        lat = start[0] + (drop[0] - start[0]) * f + rng.uniform(-jitter, jitter)
        lng = start[1] + (drop[1] - start[1]) * f + rng.uniform(-jitter, jitter)
        steps.append(Step(round(lat, 6), round(lng, 6), schedule.get(i)))
    return DeliveryPlan(round(drop[0], 6), round(drop[1], 6), tuple(steps))
