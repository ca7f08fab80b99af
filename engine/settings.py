"""The one typed, frozen settings object, read from `TRACKING_*` variables at start-up."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.domain.fixes import FixRules
from engine.domain.proximity import ProximityRules
from engine.domain.session import Lifetimes, Rules

SECRET_FILE = "jwt-secret"
SERVICE_SECRET_FILE = "service-secret"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|min|minute|h|hour)\s*$")
_PERIOD_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
             "hour": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: at most `count` in any `period_s` (a token bucket of `count` tokens that
    refills at `count / period_s` a second, so a burst of `count` is allowed)."""

    count: float
    period_s: float


def parse_rate(text: str) -> Rate | None:
    """`"20/s"`, `"30/min"`, `"500/h"`; `"off"` or `"0"` turn the limit off (None)."""
    if text.strip().lower() in ("off", "0", "none", ""):
        return None
    m = _RATE.match(text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate: write N/s, N/min or N/h, or off")
    return Rate(float(m.group(1)), _PERIOD_S[m.group(2)])


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("tracking", appauthor=False))


def _default_shards() -> int:
    return max(2, os.cpu_count() or 2)


class Settings(BaseSettings):
    """Service configuration: `Settings()` reads the environment, `Settings(**values)` a dict."""

    model_config = SettingsConfigDict(env_prefix="TRACKING_", frozen=True, extra="ignore")

    jwt_secret: str | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)
    # Unset: the embedded SQLite store, one file per shard in the data dir (one box).
    # `postgresql://...`: every shard's journal and outbox in that database (several boxes).
    store_url: str | None = None
    ray_address: str | None = None
    ray_namespace: str = "tracking"
    # The address of this host's Ray node: only where one host runs several (a driver joins the
    # head's raylet otherwise); on a host of its own Ray finds its node.
    ray_node_ip: str | None = None
    engine: Literal["ray", "local"] = "ray"
    shards: int = Field(default_factory=_default_shards, ge=1, le=256)
    avg_speed_kmh: float = Field(default=30.0, gt=0, le=1000)
    session_ttl_s: float = Field(default=86400.0, gt=0)
    delivered_ttl_s: float = Field(default=3600.0, gt=0)
    purge_after_s: float = Field(default=3600.0, ge=0)
    sweep_interval_s: float = Field(default=1.0, gt=0, le=60)
    order_service_url: str | None = None
    notification_service_url: str | None = None
    outbox_max_attempts: int = Field(default=0, ge=0)
    outbox_timeout_s: float = Field(default=5.0, gt=0)
    journal: bool = True
    ws_queue_max: int = Field(default=256, ge=8)
    ws_max_message_bytes: int = Field(default=65536, ge=1024)
    tile_url: str | None = None
    tile_attribution: str | None = None
    # -- hardening (README "Limits", "Secrets", "Metrics") --
    service_secret: str | None = None  # signs the service token of outbound calls
    max_body_bytes: int = Field(default=65536, ge=1024)
    max_sockets: int = Field(default=20000, ge=1)  # WebSockets per API process
    # Token buckets per API process; superadmins are not limited per principal. The per-address
    # limits are flood guards sized above what one API process serves (about 1,200-2,400
    # updates/s on 2 cores, README "Performance"): a load balancer's or a NAT's address carries
    # many clients, and the capacity ladder drives a process from one address. The
    # per-principal limits are the fine-grained ones.
    limit_start_per_principal: str = "30/min"
    limit_start_per_ip: str = "2000/s"
    limit_update_per_principal: str = "6000/min"  # 100/s, bursts of 6,000 (offline buffers)
    limit_update_per_ip: str = "10000/s"
    limit_connect_per_principal: str = "20/s"
    limit_connect_per_ip: str = "3000/s"
    start_check_order: bool = False  # ask the order service whether the order names the rider
    order_check_timeout_s: float = Field(default=5.0, gt=0, le=60)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # a separate /metrics listener
    metrics_host: str = "127.0.0.1"
    # Tracking quality (README "Beyond API.md"): fix filtering, milestones, batches, resume.
    fix_max_age_s: float = Field(default=86400.0, gt=0)
    fix_max_future_s: float = Field(default=300.0, ge=0)
    fix_max_accuracy_m: float = Field(default=100.0, gt=0)
    fix_max_speed_kmh: float = Field(default=150.0, gt=0)
    approach_eta_s: float = Field(default=60.0, ge=0)
    approach_radius_m: float = Field(default=300.0, ge=0)
    arrival_radius_m: float = Field(default=30.0, ge=0)
    batch_max_fixes: int = Field(default=100, ge=1, le=10000)
    resume_max_changes: int = Field(default=1000, ge=0, le=100000)

    @field_validator(
        "order_service_url", "notification_service_url", "ray_address", "tile_url", "ray_node_ip"
    )
    @classmethod
    def _blank_is_unset(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        return v.rstrip("/") if v and v.startswith("http") else v

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL, or unset for SQLite in the data dir")
        return v

    @field_validator("order_service_url", "notification_service_url")
    @classmethod
    def _a_base_url(cls, v: str | None) -> str | None:
        # Checked once here, so that every call later can be built from it (a dead letter
        # otherwise, one per call).
        if v is None:
            return v
        parts = urlsplit(v)
        if (
            parts.scheme not in ("http", "https") or not parts.hostname
            or parts.query or parts.fragment or any(c.isspace() or not c.isprintable() for c in v)
        ):
            raise ValueError(f"{v!r} is not an http(s) base URL such as http://orders.internal:8080")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number in range
        except ValueError as e:
            raise ValueError(f"{v!r}: {e}") from None
        return v

    @field_validator(
        "limit_start_per_principal", "limit_start_per_ip", "limit_update_per_principal",
        "limit_update_per_ip", "limit_connect_per_principal", "limit_connect_per_ip",
    )
    @classmethod
    def _a_rate(cls, v: str) -> str:
        parse_rate(v)
        return v

    @model_validator(mode="after")
    def _order_check_needs_the_order_service(self) -> Settings:
        if self.start_check_order and not self.order_service_url:
            raise ValueError(
                "TRACKING_START_CHECK_ORDER needs TRACKING_ORDER_SERVICE_URL (the service asked)"
            )
        return self

    def rate(self, action: str, scope: str) -> Rate | None:
        """The limit `limit_{action}_per_{scope}` (None: off)."""
        value = getattr(self, f"limit_{action}_per_{scope}")
        assert isinstance(value, str)
        return parse_rate(value)

    @property
    def lifetimes(self) -> Lifetimes:
        return Lifetimes(
            session_ttl_s=self.session_ttl_s,
            delivered_ttl_s=self.delivered_ttl_s,
            purge_after_s=self.purge_after_s,
            speed_kmh=self.avg_speed_kmh,
        )

    @property
    def rules(self) -> Rules:
        return Rules(
            FixRules(
                max_age_s=self.fix_max_age_s,
                max_future_s=self.fix_max_future_s,
                max_accuracy_m=self.fix_max_accuracy_m,
                max_speed_kmh=self.fix_max_speed_kmh,
            ),
            ProximityRules(
                approach_eta_s=self.approach_eta_s,
                approach_radius_m=self.approach_radius_m,
                arrival_radius_m=self.arrival_radius_m,
            ),
        )

    def resolved_secret(self) -> str:
        """The JWT secret: the configured one, else one created once in the data dir and reused."""
        if self.jwt_secret:
            return self.jwt_secret
        return _file_secret(self.data_dir, SECRET_FILE, "TRACKING_JWT_SECRET")

    def resolved_service_secret(self) -> str:
        """The secret of the service token sent to the order and notification services: never
        the users' JWT secret (a receiver that verifies it must not be able to mint user
        tokens). The configured one, else one created once in the data dir and reused."""
        if self.service_secret:
            return self.service_secret
        return _file_secret(self.data_dir, SERVICE_SECRET_FILE, "TRACKING_SERVICE_SECRET")


def _file_secret(data_dir: Path, name: str, variable: str) -> str:
    """A random secret kept in `data_dir/name`, created by whichever process comes first."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private file, then linked into place: link fails when the name
        # exists, so processes starting together agree on whichever linked first, and none
        # ever reads a half-written (empty) secret.
        tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(
            f"the secret file {path} is empty: delete it (a new secret is then created)"
            f" or set {variable}"
        )
    return secret
