"""A delivery's whole life as a rider lives it, computed up front from a seed.

The rider is assigned away from the merchant, rides there, waits for the order, reports
PICKED_UP on the handover, IN_TRANSIT when moving off, rides to the customer and reports
DELIVERED at the door. In between it reports its (noisy) GPS position every interval.
The same (seed, index, settings) always gives the same plan: runs are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from sim.movement import VEHICLES, Trajectory, drive
from sim.route import City, StreetGrid

STATUSES = ("ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED")


@dataclass(frozen=True)
class Update:
    t_s: float  # simulated seconds since the session started
    lat: float
    lng: float
    status: str | None = None  # only on the update that changes it

    def body(self, recorded_at: float | None = None) -> dict[str, object]:
        """The report's JSON body; with the fix's device time when the phone sends it."""
        out: dict[str, object] = {"lat": self.lat, "lng": self.lng}
        if self.status is not None:
            out["status"] = self.status
        if recorded_at is not None:
            out["recorded_at"] = round(recorded_at, 3)
        return out


@dataclass(frozen=True)
class PlanSettings:
    city: City = field(default_factory=City)
    interval_s: float = 10.0
    gps_noise_m: float = 4.0
    vehicle_mix: Mapping[str, float] = field(default_factory=lambda: {"scooter": 0.7, "bike": 0.3})
    phone_ratio: float = 1.0  # share of orders placed with a phone number
    max_start_from_pickup_m: float = 1500.0
    min_trip_m: float = 600.0
    max_trip_m: float = 4000.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.gps_noise_m < 0:
            raise ValueError("interval_s must be > 0 and gps_noise_m >= 0")
        if not self.vehicle_mix or any(w < 0 for w in self.vehicle_mix.values()):
            raise ValueError("vehicle_mix needs non-negative weights")
        unknown = set(self.vehicle_mix) - set(VEHICLES)
        if unknown:
            raise ValueError(f"unknown vehicles {sorted(unknown)}; known: {sorted(VEHICLES)}")


@dataclass(frozen=True)
class DeliveryPlan:
    index: int
    vehicle: str
    start: tuple[float, float]
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    phone: str | None
    updates: tuple[Update, ...]

    @property
    def duration_s(self) -> float:
        return self.updates[-1].t_s

    def status_updates(self) -> list[Update]:
        return [u for u in self.updates if u.status is not None]


def plan_delivery(seed: int, index: int, settings: PlanSettings) -> DeliveryPlan:
    """The plan of delivery number `index` of a run seeded with `seed`."""
    rng = random.Random(f"sim:{seed}:{index}")  # str seeds hash stably across processes
    grid = StreetGrid(settings.city)
    names = sorted(settings.vehicle_mix)
    vehicle = VEHICLES[rng.choices(names, [settings.vehicle_mix[n] for n in names])[0]]

    pickup = grid.random_node(rng)
    start = grid.random_node(rng, pickup, settings.max_start_from_pickup_m)
    while True:
        dropoff = grid.random_node(rng, pickup, settings.max_trip_m)
        if grid.distance_m(pickup, dropoff) >= settings.min_trip_m:
            break
    phone = f"+23324{rng.randrange(10**7):07d}" if rng.random() < settings.phone_ratio else None

    to_pickup = drive(grid.route(rng, start, pickup), vehicle, rng, rng.uniform(5, 30))
    handover_s = to_pickup.end_s + rng.lognormvariate(4.8, 0.5)  # median ~2 min at the merchant
    depart_s = handover_s + rng.uniform(10, 40)
    to_dropoff = drive(grid.route(rng, pickup, dropoff), vehicle, rng, depart_s)
    delivered_s = to_dropoff.end_s + rng.uniform(30, 120)  # parking, stairs, the door

    def where(t: float) -> tuple[float, float]:
        leg: Trajectory = to_pickup if t < depart_s else to_dropoff
        x, y = leg.position_at(t)
        return grid.frame.to_latlng(
            x + rng.gauss(0, settings.gps_noise_m), y + rng.gauss(0, settings.gps_noise_m)
        )

    events = [(handover_s, "PICKED_UP"), (depart_s, "IN_TRANSIT"), (delivered_s, "DELIVERED")]
    updates: list[Update] = []
    t = settings.interval_s * rng.uniform(0.5, 1.0)
    for at, status in events:
        while t < at:
            updates.append(Update(round(t, 3), *where(t)))
            t += settings.interval_s * rng.uniform(0.9, 1.1)  # phones do not report on the dot
        updates.append(Update(round(at, 3), *where(at), status=status))
    return DeliveryPlan(
        index=index,
        vehicle=vehicle.name,
        start=grid.latlng(start),
        pickup=grid.latlng(pickup),
        dropoff=grid.latlng(dropoff),
        phone=phone,
        updates=tuple(updates),
    )
