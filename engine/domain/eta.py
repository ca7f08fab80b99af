"""The contract's fixed ETA model (pure)."""

from __future__ import annotations

from engine.domain.geo import haversine_km
from engine.domain.status import Status


def eta_seconds(
    lat: float | None,
    lng: float | None,
    dropoff_lat: float,
    dropoff_lng: float,
    status: Status,
    speed_kmh: float,
) -> int | None:
    """`max(60, round(distance_km / speed_kmh * 3600))`; 0 once DELIVERED; None before any fix."""
    if status is Status.DELIVERED:
        return 0
    if lat is None or lng is None:
        return None
    distance = haversine_km(lat, lng, dropoff_lat, dropoff_lng)
    return max(60, round(distance / speed_kmh * 3600))


def eta_from_km(distance_km: float, status: Status, speed_kmh: float) -> int:
    """`eta_seconds` for a distance already known (the session measures it once per fix)."""
    if status is Status.DELIVERED:
        return 0
    return max(60, round(distance_km / speed_kmh * 3600))
