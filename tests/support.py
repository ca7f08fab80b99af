"""Shared test helpers: timeouts scaled for slow machines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from engine.shard import Event

FACTOR = float(os.environ.get("TRACKING_TEST_TIMEOUT_FACTOR", "1"))


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
