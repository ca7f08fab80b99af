"""State shared by the riders and watchers of one simulator process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness import mint
from sim.phone import Noise
from sim.plan import PlanSettings
from sim.stats import Metrics


@dataclass(frozen=True)
class SliceConfig:
    """Everything one simulator process needs (picklable: it crosses process boundaries)."""

    base_url: str
    ws_url: str
    run_id: str
    seed: int
    indices: tuple[int, ...]  # which deliveries of the run this process drives
    plan: PlanSettings
    speedup: float
    http_ratio: float
    watchers_per_delivery: int
    roles: tuple[str, ...]
    secret: str | None  # to mint tokens; None: use `fallback_token` for riders, watch publicly
    fallback_token: str | None
    t0_monotonic: float  # the run's start on the machine-wide monotonic clock
    deadline_s: float  # hard stop, seconds after t0
    start_spread_s: float = 0.0  # deliveries start evenly over this many seconds
    connect_rate_per_s: float = 500.0
    eta_speed_kmh: float | None = 30.0
    reconnect: frozenset[int] = frozenset()  # deliveries whose first watcher drops and returns
    reconnect_after_messages: int = 5
    reconnect_down_s: float = 1.0
    invalid: frozenset[int] = frozenset()  # deliveries whose rider posts invalid transitions
    device_time: bool = False  # fixes carry recorded_at
    noise: Noise = field(default_factory=Noise)  # GPS noise (sim/phone.py), no offline spell
    offline: frozenset[int] = frozenset()  # deliveries whose phone goes offline once
    offline_after: int = 8
    offline_fixes: int = 6
    watchers_ready_timeout_s: float = 60.0
    tail_grace_s: float = 120.0  # after the rider is done, how long its watchers may lag
    request_timeout_s: float = 30.0
    # The server's processes are killed during the run (kill_shard, restart_server): riders
    # retry what a restarting server refused, as a rider app does, and watchers reconnect and
    # catch up from the history; what failed meanwhile is counted apart from errors.
    survive_outages: bool = False
    outage_retry_s: float = 120.0  # how long a rider keeps retrying one update


class SessionTrack:
    """What the rider of one session knows, read by that session's watchers in this process.

    Latency: the rider is the only writer of its session and sends one update at a time,
    so the seq of its next accepted update is the last acknowledged seq + 1. It stores
    the send time under that seq *before* sending, and checks it against the seq in the
    acknowledgement (the HTTP response's view, or over WebSocket the rider's own copy of
    the broadcast). A watcher's latency for a message is its receive time minus the send
    time of the message's seq: update sent -> view seen, whatever the path.
    """

    __slots__ = (
        "acked",
        "acked_seq",
        "approach_guess",
        "approach_seen",
        "delivered",
        "done",
        "final_seq",
        "index",
        "order_id",
        "phone",
        "ready",
        "rider_id",
        "sent_at",
        "sockets",
        "statuses",
        "stopping",
        "tracking_id",
        "watchers_pending",
    )

    def __init__(
        self, index: int, tracking_id: str, order_id: str, rider_id: str, phone: str | None
    ) -> None:
        self.index = index
        self.tracking_id = tracking_id
        self.order_id = order_id
        self.rider_id = rider_id
        self.phone = phone
        self.acked_seq = 1
        # seq -> (lat, lng, status) of every update the server acknowledged: checked against
        # the session's history at the end (nothing accepted may be lost).
        self.acked: dict[int, tuple[float, float, str | None]] = {}
        self.sent_at: dict[int, float] = {}
        self.final_seq: int | None = None
        self.statuses: list[str] = []  # status changes the server acknowledged, in order
        # The status a rider_approaching carried: as a watcher saw it, else as the rider's
        # answers suggest (exact for single fixes); what the notification service is owed.
        self.approach_seen: str | None = None
        self.approach_guess: str | None = None
        self.delivered = False
        self.sockets: set[Any] = set()  # the watchers' open connections
        self.stopping = False  # the rider is done and its watchers' wait is over
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.watchers_pending = 0

    def watcher_ready(self) -> None:
        self.watchers_pending -= 1
        if self.watchers_pending <= 0:
            self.ready.set()


class RateLimiter:
    """At most `rate` acquisitions per second, spaced evenly (opening 10,000 sockets at once
    would only measure the listen backlog)."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = self._clock()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await self._sleep(wait)


@dataclass
class Ctx:
    cfg: SliceConfig
    http: httpx.AsyncClient
    metrics: Metrics = field(default_factory=Metrics)
    open_sockets: int = 0
    connecting: int = 0
    limiter: RateLimiter | None = None

    def now(self) -> float:
        """Seconds since the run's start (same clock in every process of the run)."""
        return time.monotonic() - self.cfg.t0_monotonic

    def token(self, role: str, sub: str) -> str | None:
        if self.cfg.secret:
            return mint(self.cfg.secret, role, sub, ttl_s=24 * 3600)
        return self.cfg.fallback_token if role == "rider" else None

    def auth(self, role: str, sub: str) -> dict[str, str]:
        tok = self.token(role, sub)
        return {"Authorization": f"Bearer {tok}"} if tok else {}
