"""How riders move along a route: a cruising speed per trip, varying per block, and stops.

Speeds follow a log-normal distribution (median and spread per vehicle, capped), as trip
speeds of urban two-wheelers do; each block varies around the trip's cruise (traffic),
and each intersection may hold the rider for a while (lights, crossing traffic).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from sim.route import Route


@dataclass(frozen=True)
class Vehicle:
    name: str
    median_kmh: float
    spread: float  # sigma of log(speed) across trips
    block_spread: float  # sigma of log(speed) from block to block
    min_kmh: float
    max_kmh: float
    stop_probability: float  # per intersection
    stop_mean_s: float
    stop_max_s: float

    def cruise_kmh(self, rng: random.Random) -> float:
        v = rng.lognormvariate(math.log(self.median_kmh), self.spread)
        return min(self.max_kmh, max(self.min_kmh, v))


SCOOTER = Vehicle("scooter", 24.0, 0.25, 0.15, 6.0, 55.0, 0.3, 20.0, 90.0)
BIKE = Vehicle("bike", 15.0, 0.2, 0.12, 5.0, 30.0, 0.25, 15.0, 60.0)
VEHICLES = {v.name: v for v in (SCOOTER, BIKE)}


@dataclass(frozen=True)
class Leg:
    t0: float
    t1: float
    d0: float
    d1: float  # == d0 for a stop


class Trajectory:
    """Distance along a route as a piecewise-linear function of time (seconds)."""

    def __init__(self, route: Route, legs: list[Leg], start_s: float) -> None:
        self.route = route
        self.legs = legs
        self.start_s = start_s
        self._t0 = [leg.t0 for leg in legs]

    @property
    def end_s(self) -> float:
        return self.legs[-1].t1 if self.legs else self.start_s

    def distance_at(self, t: float) -> float:
        if not self.legs or t <= self.start_s:
            return 0.0
        if t >= self.end_s:
            return self.route.length_m
        leg = self.legs[bisect.bisect_right(self._t0, t) - 1]
        if leg.t1 == leg.t0:
            return leg.d1
        return leg.d0 + (leg.d1 - leg.d0) * (t - leg.t0) / (leg.t1 - leg.t0)

    def position_at(self, t: float) -> tuple[float, float]:
        return self.route.at(self.distance_at(t))

    def stopped_time_s(self) -> float:
        return sum(leg.t1 - leg.t0 for leg in self.legs if leg.d0 == leg.d1)


def drive(route: Route, vehicle: Vehicle, rng: random.Random, start_s: float) -> Trajectory:
    """Ride the route from `start_s`, block by block, maybe stopping at each crossing."""
    cruise = vehicle.cruise_kmh(rng)
    marks = [*route.intersections(), route.length_m]
    legs: list[Leg] = []
    t, d = start_s, 0.0
    for k, mark in enumerate(marks):
        kmh = cruise * rng.lognormvariate(0.0, vehicle.block_spread)
        kmh = min(vehicle.max_kmh, max(vehicle.min_kmh, kmh))
        dt = (mark - d) / (kmh / 3.6)
        if dt > 0:
            legs.append(Leg(t, t + dt, d, mark))
            t, d = t + dt, mark
        if k < len(marks) - 1 and rng.random() < vehicle.stop_probability:
            wait = min(vehicle.stop_max_s, max(2.0, rng.expovariate(1 / vehicle.stop_mean_s)))
            legs.append(Leg(t, t + wait, d, d))
            t += wait
    return Trajectory(route, legs, start_s)
