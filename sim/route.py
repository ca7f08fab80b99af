"""Where riders go: a rotated street grid around a city centre, and routes along its streets.

A route between two intersections is a staircase of straight legs along the streets
(a shortest path on the grid with a few turns), never a straight line across blocks.
Positions are in a local metric frame (metres east/north of the centre).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

from sim.geo import LocalFrame

Node = tuple[int, int]  # (i, j): intersection index along the two street directions


@dataclass(frozen=True)
class City:
    """The area deliveries happen in. Defaults: central Accra, as in the seed's examples."""

    center_lat: float = 5.6037
    center_lng: float = -0.1870
    radius_km: float = 5.0
    block_m: float = 150.0
    grid_angle_deg: float = 17.0  # streets rarely run due north

    def __post_init__(self) -> None:
        if not (-80 <= self.center_lat <= 80 and -180 <= self.center_lng <= 180):
            raise ValueError("city centre must be a valid coordinate away from the poles")
        if self.radius_km <= 0 or self.block_m <= 0 or self.block_m * 4 > self.radius_km * 1000:
            raise ValueError("need radius_km > 0 and blocks small enough to fit the city")


class StreetGrid:
    """Intersections of a rotated square street grid covering a city."""

    def __init__(self, city: City) -> None:
        self.city = city
        self.frame = LocalFrame(city.center_lat, city.center_lng)
        a = math.radians(city.grid_angle_deg)
        self._cos, self._sin = math.cos(a), math.sin(a)

    def xy(self, node: Node) -> tuple[float, float]:
        u, v = node[0] * self.city.block_m, node[1] * self.city.block_m
        return u * self._cos - v * self._sin, u * self._sin + v * self._cos

    def latlng(self, node: Node) -> tuple[float, float]:
        return self.frame.to_latlng(*self.xy(node))

    def nearest_node(self, x: float, y: float) -> Node:
        u = x * self._cos + y * self._sin
        v = -x * self._sin + y * self._cos
        return round(u / self.city.block_m), round(v / self.city.block_m)

    def random_node(self, rng: random.Random, around: Node = (0, 0), within_m: float = 0) -> Node:
        """An intersection uniformly in a disc (default: the whole city) that is inside the city."""
        radius = within_m or self.city.radius_km * 1000
        cx, cy = self.xy(around)
        limit = self.city.radius_km * 1000
        while True:
            r, t = radius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            node = self.nearest_node(cx + r * math.cos(t), cy + r * math.sin(t))
            if math.hypot(*self.xy(node)) <= limit:
                return node

    def distance_m(self, a: Node, b: Node) -> float:
        """Street distance (Manhattan on the grid) between two intersections."""
        return (abs(a[0] - b[0]) + abs(a[1] - b[1])) * self.city.block_m

    def route(self, rng: random.Random, a: Node, b: Node, max_turns: int = 4) -> Route:
        """A shortest street path from a to b with between 1 and max_turns legs per axis."""
        di, dj = b[0] - a[0], b[1] - a[1]
        parts = rng.randint(1, max(1, min(max_turns, abs(di), abs(dj))))
        legs_i, legs_j = _split(rng, 0, di, parts), _split(rng, 1, dj, parts)
        if rng.random() < 0.5:  # start along either street direction
            order = [leg for pair in zip(legs_i, legs_j, strict=True) for leg in pair]
        else:
            order = [leg for pair in zip(legs_j, legs_i, strict=True) for leg in pair]
        node, nodes = a, [a]
        for axis, steps in order:
            if steps:
                node = (node[0] + steps, node[1]) if axis == 0 else (node[0], node[1] + steps)
                nodes.append(node)
        return Route(tuple(self.xy(n) for n in nodes), self.city.block_m)


def _split(rng: random.Random, axis: int, total: int, parts: int) -> list[tuple[int, int]]:
    """Split a signed step count along one axis into `parts` legs (some may be empty)."""
    n, sign = abs(total), (1 if total >= 0 else -1)
    cuts = sorted(rng.randint(0, n) for _ in range(parts - 1))
    bounds = [0, *cuts, n]
    return [(axis, sign * (bounds[k + 1] - bounds[k])) for k in range(parts)]


class Route:
    """A polyline along streets, walked by distance from its start."""

    def __init__(self, points: tuple[tuple[float, float], ...], block_m: float) -> None:
        if not points:
            raise ValueError("a route needs at least one point")
        self.points = points
        self.block_m = block_m
        cum = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            cum.append(cum[-1] + math.hypot(x1 - x0, y1 - y0))
        self._cum = cum

    @property
    def length_m(self) -> float:
        return self._cum[-1]

    def at(self, distance_m: float) -> tuple[float, float]:
        """The point `distance_m` along the route, clamped to its ends."""
        d = min(max(distance_m, 0.0), self.length_m)
        k = max(1, bisect.bisect_left(self._cum, d)) if len(self.points) > 1 else 0
        if k == 0:
            return self.points[0]
        (x0, y0), (x1, y1) = self.points[k - 1], self.points[k]
        seg = self._cum[k] - self._cum[k - 1]
        f = 0.0 if seg == 0 else (d - self._cum[k - 1]) / seg
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0)

    def intersections(self) -> list[float]:
        """Distances along the route of the intersections it crosses (not its two ends)."""
        n = round(self.length_m / self.block_m)
        return [k * self.block_m for k in range(1, n)]
