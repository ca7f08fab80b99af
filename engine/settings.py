"""The one typed, frozen settings object, read from `TRACKING_*` variables at start-up."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.domain.fixes import FixRules
from engine.domain.proximity import ProximityRules
from engine.domain.session import Lifetimes, Rules

SECRET_FILE = "jwt-secret"


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
        path = self.data_dir / SECRET_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Written whole to a private file, then linked into place: link fails when the name
            # exists, so processes starting together agree on whichever linked first, and none
            # ever reads a half-written (empty) secret.
            tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
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
                f"the JWT secret file {path} is empty: delete it (a new secret is then created)"
                " or set TRACKING_JWT_SECRET"
            )
        return secret
