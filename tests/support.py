"""Shared test helpers: timeouts scaled for slow machines.

Every wait in the tests (a receive, a poll, a deadline) goes through `timeout()`, so one
environment variable, TRACKING_TEST_TIMEOUT_FACTOR, stretches them all on a loaded machine:
scripts/test (what CI runs) sets 3 for a busy 2-core box; unset, it is 1. The factor only
lengthens how long a test is willing to wait for something that must happen; it never
decides that something did not happen.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable

from engine.protocol import Event

FACTOR_ENV = "TRACKING_TEST_TIMEOUT_FACTOR"


def _factor(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{FACTOR_ENV} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{FACTOR_ENV} must be a positive number, got {raw!r}")
    return value


FACTOR = _factor(os.environ.get(FACTOR_ENV))

# How long a `tracking serve` may take to answer /health (before scaling): Ray workers and the
# shard actors start slowly on a busy box. Pass `startup_timeout_s=timeout(SERVER_STARTUP_S)`.
SERVER_STARTUP_S = 90.0


def timeout(seconds: float) -> float:
    """A test timeout, scaled by TRACKING_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR


class RecordingSink:
    """A gateway stand-in for the engine client's event channel: what it delivered, and
    which shards it asked to resync."""

    def __init__(self, connections: int = 0) -> None:
        self.connections = connections
        self.events: list[Event] = []
        self.resyncs: list[int] = []

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)

    def resync(self, shard: int) -> None:
        self.resyncs.append(shard)


async def until(predicate: Callable[[], bool], seconds: float) -> bool:
    """Wait (scaled) until `predicate` holds; False if it never did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
