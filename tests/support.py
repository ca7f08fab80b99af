"""Shared test helpers: timeouts scaled for slow machines."""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("TRACKING_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A test timeout, scaled by TRACKING_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR
