"""Request and response bodies (they are what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.domain.fixes import Reason
from engine.domain.proximity import Milestone
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


RecordedAt = Annotated[float, Field(
    gt=0, le=1e11, allow_inf_nan=False, strict=True,
    description="When the phone took the fix: Unix seconds (not milliseconds). Without it, "
                "the server's time counts, and only the fix itself is judged",
)]
AccuracyM = Annotated[float, Field(
    ge=0, le=1e6, allow_inf_nan=False, strict=True,
    description="The fix's accuracy radius in metres (fixes worse than a bound are dropped)",
)]


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lat: Lat
    lng: Lng
    status: Status | None = None
    recorded_at: RecordedAt | None = None
    accuracy_m: AccuracyM | None = None


class BatchedFix(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lat: Lat
    lng: Lng
    recorded_at: RecordedAt
    status: Status | None = None
    accuracy_m: AccuracyM | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fixes: list[BatchedFix] = Field(
        min_length=1, description="Buffered fixes, oldest first (at most TRACKING_BATCH_MAX_FIXES)"
    )


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ttl_s: int | None = Field(
        default=None, ge=60, le=30 * 86400,
        description="Expire sooner than the session's end (seconds from now)",
    )


class ShareLink(BaseModel):
    tracking_id: str
    url: str = Field(description="The tracking page, with the token: what the customer opens")
    path: str
    token: str = Field(description="Opens only this session's view, history and WebSocket")
    expires_at: int = Field(description="Unix seconds; by default the end of the session's life")


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
    watchers: int | None = Field(
        default=None, description="With ?presence=true: sockets watching, in every API process"
    )
    proximity: Milestone | None = Field(
        default=None, description="The last milestone reached: approaching, then arrived"
    )
    filtered: Reason | None = Field(
        default=None, description="In an update's answer only: why its fix was dropped"
    )


class FixResult(BaseModel):
    kept: bool
    seq: int | None = Field(description="The change this fix made (a dropped fix's status counts)")
    filtered: Reason | None
    late: bool = Field(description="Kept into the history only: older than the current location")


class BatchResponse(BaseModel):
    view: TrackingView
    fixes: list[FixResult]


class StatusDistribution(BaseModel):
    ASSIGNED: int
    PICKED_UP: int
    IN_TRANSIT: int
    DELIVERED: int


class Recency(BaseModel):
    last_5_min: int
    last_hour: int
    older: int


class Presence(BaseModel):
    watched_sessions: int
    watching_sockets: int
    max_per_session: int


class FixCounts(BaseModel):
    filtered: dict[str, int] = Field(description="Fixes dropped, by reason")
    late: int = Field(description="Fixes kept into the history only")
    milestones: dict[str, int] = Field(description="approaching / arrived fired")


class Stats(BaseModel):
    total_active_sessions: int
    total_websocket_connections: int
    status_distribution: StatusDistribution
    sessions_by_recency: Recency
    api_processes: int
    outbox: dict[str, int] = Field(default_factory=dict)
    presence: Presence
    fixes: FixCounts


class HistoryItem(BaseModel):
    seq: int
    status: Status
    previous_status: Status | None
    lat: float | None
    lng: float | None
    at: int
    recorded_at: int | None = Field(default=None, description="The fix's device time")
    late: bool = False
    milestones: list[Milestone] = Field(default_factory=list)


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
