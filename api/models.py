"""Request and response bodies (they are what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.domain.status import Status
from engine.protocol import ID_MAX

Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False, strict=True,
                             description="Latitude in degrees, [-90, 90]")]
Lng = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False, strict=True,
                             description="Longitude in degrees, [-180, 180]")]
Ident = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=r"^[^\x00-\x1f]+$")]


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: Ident
    rider_id: Ident
    dropoff_lat: Lat
    dropoff_lng: Lng
    phone: Annotated[str, Field(min_length=3, max_length=32,
                                pattern=r"^\+?[0-9 ()\-]{3,32}$")] | None = None


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lat: Lat
    lng: Lng
    status: Status | None = None


class Location(BaseModel):
    lat: float
    lng: float
    timestamp: int


class Point(BaseModel):
    lat: float
    lng: float


class TrackingView(BaseModel):
    tracking_id: str
    order_id: str
    rider_id: str
    status: Status
    current_location: Location | None
    dropoff: Point
    eta_seconds: int | None
    updated_at: int
    seq: int = Field(description="Grows by one with each accepted change of this session")
    started_at: int


class StatusDistribution(BaseModel):
    ASSIGNED: int
    PICKED_UP: int
    IN_TRANSIT: int
    DELIVERED: int


class Recency(BaseModel):
    last_5_min: int
    last_hour: int
    older: int


class Stats(BaseModel):
    total_active_sessions: int
    total_websocket_connections: int
    status_distribution: StatusDistribution
    sessions_by_recency: Recency
    api_processes: int
    outbox: dict[str, int] = Field(default_factory=dict)


class HistoryItem(BaseModel):
    seq: int
    status: Status
    previous_status: Status | None
    lat: float | None
    lng: float | None
    at: int


class History(BaseModel):
    tracking_id: str
    items: list[HistoryItem]
    next_since_seq: int | None


class DeadLetter(BaseModel):
    id: int = Field(description="Row id within its shard's store")
    shard: int
    tracking_id: str
    target: str = Field(description="order or notification")
    path: str
    body: dict[str, Any] | str
    idempotency_key: str
    attempts: int
    last_error: str | None
    created_at: int
    finished_at: int | None


class DeadLetters(BaseModel):
    items: list[DeadLetter]


class Health(BaseModel):
    status: str
    engine: str
    shards: int


class ErrorBody(BaseModel):
    detail: str
