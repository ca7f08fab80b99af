"""Injected time: the engine asks a clock, tests drive a manual one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float: ...


def system_clock() -> float:
    """Unix seconds from the wall clock."""
    return time.time()


class ManualClock:
    """A clock that moves only when told (tests)."""

    def __init__(self, start: float = 1_704_067_800.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
