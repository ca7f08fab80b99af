"""The socket-opening rate limiter spaces acquisitions evenly (clock and sleep injected)."""

from __future__ import annotations

import asyncio

import pytest

from sim.context import RateLimiter


def test_acquisitions_are_spaced_by_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))

    async def main() -> None:
        limiter = RateLimiter(10.0, clock=lambda: now[0], sleep=fake_sleep)
        for _ in range(4):
            await limiter.acquire()
        now[0] += 5.0  # idle for a while: no burst credit is saved up beyond one slot
        await limiter.acquire()
        await limiter.acquire()

    asyncio.run(main())
    assert slept == [0.1, 0.2, 0.3, 0.1]


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_no_rate_means_no_waiting(rate: float) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> None:
        limiter = RateLimiter(rate, sleep=fake_sleep)
        for _ in range(3):
            await limiter.acquire()

    asyncio.run(main())
    assert slept == []
