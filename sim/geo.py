"""Geometry for the simulator: a local metric frame around a city centre, the contract ETA."""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0  # the contract's R
_M_PER_DEG_LAT = math.pi * EARTH_RADIUS_KM * 1000.0 / 180.0


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance as API.md defines it (R = 6371 km)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def contract_eta_s(distance_km: float, speed_kmh: float) -> int:
    """The fixed ETA model of the contract, for a session that is not delivered."""
    return max(60, round(distance_km / speed_kmh * 3600))


@dataclass(frozen=True)
class LocalFrame:
    """Metres east (x) and north (y) of a centre; accurate to well under a metre across a city."""

    lat0: float
    lng0: float

    def to_latlng(self, x_m: float, y_m: float) -> tuple[float, float]:
        lat = self.lat0 + y_m / _M_PER_DEG_LAT
        lng = self.lng0 + x_m / (_M_PER_DEG_LAT * math.cos(math.radians(self.lat0)))
        return lat, lng

    def to_xy(self, lat: float, lng: float) -> tuple[float, float]:
        y = (lat - self.lat0) * _M_PER_DEG_LAT
        x = (lng - self.lng0) * _M_PER_DEG_LAT * math.cos(math.radians(self.lat0))
        return x, y
