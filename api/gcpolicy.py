"""The API process's garbage-collection policy: full collections that do not stall fan-out.

Measured with 10,000 watcher sockets (`python -m loadtests.api_cpu --sockets 10000
--watchers-per-session 100`, the `tracking_gc_pause_seconds` histogram and the stall log of
`api.observability`): CPython's full collections walked every object of every open socket
(about 150 each) and paused the process for 0.3-2 s, several times during a connection storm
and again whenever long-lived objects grew by a quarter. Those pauses were the service's
latency spikes.

Two things keep them short:
- Sockets leave no reference cycles when they close (`api.wsproto` breaks them), so reference
  counting frees them, frozen or not; measured: 0 cyclic objects left per closed socket,
  against 55 before.
- The objects of sockets that stay open are moved out of the collector's reach with
  `gc.freeze()` at start-up and whenever this process has accepted `FREEZE_EVERY` more
  sockets than when it last froze, so a full collection walks only what came since (a few
  milliseconds) instead of every socket. Objects frozen while in flight (a request's) are only
  ever reclaimed if they die by reference counting; there are few at any instant.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

from prometheus_client import Counter

FREEZE_EVERY = 500  # sockets
CHECK_S = 1.0

FREEZES = Counter(
    "tracking_gc_freezes_total", "Times this API process froze its long-lived objects"
)


class GcPolicy:
    """Freezes long-lived objects as sockets accumulate (see the module docstring)."""

    def __init__(
        self, connections: Callable[[], int], every: int = FREEZE_EVERY,
        freeze: Callable[[], None] = gc.freeze,
    ) -> None:
        self.connections = connections
        self.every = every
        self._freeze = freeze
        self._low = 0

    def freeze(self) -> None:
        self._freeze()
        FREEZES.inc()
        self._low = self.connections()

    def check(self) -> None:
        """Freeze when `every` more sockets are open than at the lowest point since the last
        freeze."""
        now = self.connections()
        if now < self._low:
            self._low = now
        elif now - self._low >= self.every:
            self.freeze()

    async def run(self) -> None:
        gc.collect()
        self.freeze()
        while True:
            await asyncio.sleep(CHECK_S)
            self.check()
