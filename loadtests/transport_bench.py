"""Event transport from a shard actor to a gateway: long-poll by cursor vs Ray streaming generator.

Each mode runs the same producer inside one Ray actor (events appended in bursts at a fixed
rate) and a consumer in this process, and reports delivered events/s and latency percentiles.

    python -m loadtests.transport_bench --rate 5000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import ray


class _Source:
    def __init__(self) -> None:
        self.events: list[tuple[int, float]] = []
        self.base = 0
        self.waiter: asyncio.Future[None] | None = None
        self.done = False

    async def produce(self, rate: float, seconds: float, burst: int) -> int:
        n = int(rate * seconds)
        t0 = time.time()
        for i in range(0, n, burst):
            target = t0 + i / rate
            delay = target - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            self.events.extend((i + k, now) for k in range(min(burst, n - i)))
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        self.done = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return n

    async def poll(self, ack: int, timeout_s: float) -> tuple[int, list[tuple[int, float]], bool]:
        if ack > self.base:
            del self.events[: ack - self.base]
            self.base = ack
        if not self.events and not self.done:
            self.waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.waiter, timeout_s)
        return self.base, list(self.events), self.done and not self.events

    async def stream(self) -> AsyncIterator[list[tuple[int, float]]]:
        while True:
            if self.events:
                batch = self.events
                self.events = []
                yield batch
            elif self.done:
                return
            else:
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter


Source = ray.remote(_Source)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * (len(xs) - 1)))] if xs else float("nan")


async def _consume_poll(src: Any) -> list[float]:
    lat: list[float] = []
    ack = 0
    while True:
        base, events, finished = await src.poll.remote(ack, 1.0)
        now = time.time()
        lat.extend(now - t for _, t in events)
        ack = base + len(events)
        if finished:
            return lat


async def _consume_stream(src: Any) -> list[float]:
    lat: list[float] = []
    gen = src.stream.options(num_returns="streaming").remote()
    async for ref in gen:
        batch = await ref
        now = time.time()
        lat.extend(now - t for _, t in batch)
    return lat


async def _run(mode: str, rate: float, seconds: float, burst: int) -> dict[str, Any]:
    actor: Any = Source
    src = actor.options(max_concurrency=100, num_cpus=0).remote()
    consume = _consume_poll if mode == "long-poll" else _consume_stream
    t0 = time.time()
    task = asyncio.ensure_future(consume(src))
    n = await src.produce.remote(rate, seconds, burst)
    lat = await task
    dt = time.time() - t0
    ray.kill(src)
    ms = [x * 1000 for x in lat]
    return {"mode": mode, "events": n, "received": len(lat), "events_per_s": round(len(lat) / dt),
            "p50_ms": round(_pct(ms, 50), 2), "p99_ms": round(_pct(ms, 99), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=5000.0, help="events/s offered")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--burst", type=int, default=10, help="events appended together")
    args = p.parse_args(argv)
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        rows = [asyncio.run(_run(m, args.rate, args.seconds, args.burst))
                for m in ("long-poll", "streaming", "long-poll", "streaming")]
    finally:
        ray.shutdown()
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
