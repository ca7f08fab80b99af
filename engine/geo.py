"""Great-circle distance and coordinate validation (pure)."""

from __future__ import annotations

import math

from engine.errors import InvalidInput

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in km between two points given in degrees (R = 6371 km)."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    a = min(1.0, max(0.0, a))
    return EARTH_RADIUS_KM * 2 * math.atan2(math.sqrt(a), math.sqrt(1 - a))


def validate_coordinates(lat: object, lng: object, what: str = "location") -> tuple[float, float]:
    """Return (lat, lng) as floats, or raise InvalidInput naming what is wrong."""
    out: list[float] = []
    for name, value, bound in (("lat", lat, 90.0), ("lng", lng, 180.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{what} {name} must be a number, got {type(value).__name__}")
        try:
            f = float(value)
        except OverflowError:  # an int beyond float range (10**400): not a finite number
            f = math.inf
        if not math.isfinite(f):
            raise InvalidInput(f"{what} {name} must be a finite number")
        if not -bound <= f <= bound:
            raise InvalidInput(f"{what} {name} must be in [-{bound:g}, {bound:g}], got {f:g}")
        out.append(f)
    return out[0], out[1]
