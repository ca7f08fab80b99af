"""Shared test helpers: timeouts scaled for slow machines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

FACTOR = float(os.environ.get("TRACKING_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A test timeout, scaled by TRACKING_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR


async def until(predicate: Callable[[], bool], seconds: float) -> bool:
    """Wait (scaled) until `predicate` holds; False if it never did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
