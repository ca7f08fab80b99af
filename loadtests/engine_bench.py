"""Engine benchmark: create rate, update throughput, event latency and memory per session.

Runs the engine client in this process against either runtime (no HTTP), on loopback only,
bounded in count and time, through the same assembly point as `tracking serve`
(`engine.runtime`). Prints a table and writes JSON.

    python -m loadtests.engine_bench --runtime ray --sessions 100000 --out out/engine-bench.json

The journal goes to SQLite files in a temporary data dir, or with `--postgres` to a throwaway
PostgreSQL server this command starts (Debian's `postgresql` package; fsync on, as in
production), or with `--store-url postgresql://...` to an existing, empty database.

The latency phase is open-loop: update k is planned at t0 + k / rate and sent then (or at once,
if the client fell behind), and every latency counts from the planned time, so a stall anywhere
shows up in the figures instead of delaying the next send (no coordinated omission). Refused or
failed updates, events that never came and events later than `--late-ms` are counted and
printed, never dropped from the figures silently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from engine.client import EngineClient
from engine.domain.errors import TrackingError
from engine.host import tune_gc
from engine.protocol import Event, EventKind, decode_view
from engine.runtime import Deployment, Engine, connect, engine_pids
from engine.settings import Settings

DROP = (5.6037, -0.1869)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


class _Sink:
    """The benchmark's gateway: notes when each location update arrives."""

    connections = 0

    def __init__(self) -> None:
        self.received: dict[tuple[str, int], float] = {}
        self.resyncs = 0

    def deliver(self, events: list[Event]) -> None:
        now = time.perf_counter()
        for e in events:
            if e.kind is EventKind.LOCATION:
                self.received.setdefault((e.tracking_id, e.seq), now)

    def resync(self, shard: int) -> None:
        self.resyncs += 1
        print(f"shard {shard} restarted or dropped events during the run", file=sys.stderr)


class Bench:
    def __init__(
        self, args: argparse.Namespace, data_dir: Path, store_url: str | None = None
    ) -> None:
        self.args = args
        self.settings = Settings(
            data_dir=data_dir, engine=args.runtime, shards=args.shards, journal=args.journal,
            ray_namespace=f"bench-{os.getpid()}", store_url=store_url,
        )
        self.deployment = Deployment(self.settings)
        self.pids: list[int] = []

    def rss_kb(self) -> int:
        return sum(_rss_kb(p) for p in self.pids)

    async def run(self) -> dict[str, Any]:
        self.deployment.start()
        engine = await connect(self.settings)
        try:
            self.pids = engine_pids(self.settings)
            return await self._run(engine)
        finally:
            await engine.close()

    async def _run(self, engine: Engine) -> dict[str, Any]:
        a = self.args
        c = engine.client
        out: dict[str, Any] = {
            "runtime": a.runtime, "shards": a.shards, "journal": a.journal,
            "store": "postgres" if self.settings.store_url else "sqlite",
            "cpus": os.cpu_count(),
        }
        await c.ping()
        rss0 = self.rss_kb()

        # 1. create sessions, in waves that keep `concurrency` requests in flight
        t0 = time.perf_counter()
        tids: list[str] = []
        create_failures = 0
        for base in range(0, a.sessions, a.concurrency):
            n = min(a.concurrency, a.sessions - base)
            views = await asyncio.gather(*(
                c.start(f"ORD-{base + i}", f"RIDER-{(base + i) % 5000}", *DROP, None)
                for i in range(n)
            ), return_exceptions=True)
            for v in views:
                if isinstance(v, bytes):
                    tids.append(decode_view(v).tracking_id)
                else:
                    create_failures += 1
        dt = time.perf_counter() - t0
        out["sessions"] = len(tids)
        out["create_failures"] = create_failures
        out["creates_per_s"] = round(len(tids) / dt)
        await asyncio.sleep(1.0)
        rss1 = self.rss_kb()
        out["engine_rss_mb"] = round(rss1 / 1024, 1)
        out["bytes_per_session"] = round((rss1 - rss0) * 1024 / max(1, len(tids)))

        # 2. update throughput: keep `concurrency` updates in flight for `seconds`; each answer
        # sends the next update at once (as a steady stream of requests would), so the client
        # keeps filling the next batch while the shards work on the current one.
        riders = {t: f"RIDER-{i % 5000}" for i, t in enumerate(tids)}
        counts = {"done": 0, "failed": 0, "next": 0}
        running = True
        drained = asyncio.get_running_loop().create_future()
        in_flight = 0

        def send() -> None:
            nonlocal in_flight
            k = counts["next"]
            counts["next"] = k + 1
            t = tids[k % len(tids)]
            in_flight += 1
            # The HTTP route's call: the view comes back as the JSON bytes the reply sends.
            c.update(t, 5.6 + (k % 100) * 1e-4, -0.18, None, riders[t]).add_done_callback(done)

        def done(f: asyncio.Future[bytes]) -> None:
            nonlocal in_flight
            in_flight -= 1
            counts["failed" if f.exception() else "done"] += 1
            if running:
                send()
            elif in_flight == 0 and not drained.done():
                drained.set_result(None)

        t0 = time.perf_counter()
        for _ in range(a.concurrency):
            send()
        await asyncio.sleep(a.seconds)
        running = False
        dt = time.perf_counter() - t0
        await drained
        out["updates_per_s"] = round(counts["done"] / dt)
        out["update_failures"] = counts["failed"]

        # 3. event latency at a fixed offered rate: planned send -> the gateway has its event
        # What the setup allocated stays: out of the collector's way, as in the shards.
        tune_gc()
        out.update(await self.latency(c, tids[: a.watched], riders))
        return out

    async def latency(
        self, c: EngineClient, tids: list[str], riders: dict[str, str]
    ) -> dict[str, Any]:
        a = self.args
        gw = "gw-bench"
        for t in tids:
            await c.watch(t, gw)
        planned: dict[tuple[str, int], float] = {}  # (tid, seq) -> planned send time
        sent_at: dict[tuple[str, int], float] = {}  # (tid, seq) -> actual send time
        acks: list[float] = []
        failures: dict[str, int] = {}
        # Events come as they come to an API process's gateway: on this process's call replies
        # and on its idle long-polls (engine.client's event channel).
        sink = _Sink()
        c.open_events(gw, sink)
        interval = 1.0 / a.rate
        n = int(a.rate * a.latency_seconds)
        pending: set[asyncio.Task[None]] = set()
        behind = 0.0

        async def one(k: int, plan: float) -> None:
            t = tids[k % len(tids)]
            t_send = time.perf_counter()
            try:
                view = await c.update(t, 5.6 + (k % 50) * 1e-4, -0.18, None, riders[t])
            except TrackingError as e:
                failures[e.code] = failures.get(e.code, 0) + 1
                return
            acks.append((time.perf_counter() - plan) * 1000)
            key = (t, decode_view(view).seq)
            planned[key] = plan
            sent_at[key] = t_send

        t0 = time.perf_counter()
        for k in range(n):
            plan = t0 + k * interval
            delay = plan - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = max(behind, -delay)
            task = asyncio.create_task(one(k, plan))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        # Wait for stragglers, bounded: what has not come by then is counted as missing.
        for _ in range(max(1, round(a.drain_s / 0.05))):
            if all(k in sink.received for k in planned):
                break
            await asyncio.sleep(0.05)
        await c.close_events()
        # Matched after the run: an event may reach the gateway before the update's reply.
        ms = [(sink.received[k] - p) * 1000 for k, p in planned.items() if k in sink.received]
        from_send = [(sink.received[k] - s) * 1000 for k, s in sent_at.items()
                     if k in sink.received]  # fmt: skip
        missing = sum(1 for k in planned if k not in sink.received)
        late = sum(1 for x in ms if x > a.late_ms)
        return {
            "latency_rate_per_s": a.rate,
            "latency_updates_planned": n,
            "latency_updates_accepted": len(planned),
            "latency_update_failures": sum(failures.values()),
            "latency_failures_by_code": failures,
            "events_missing": missing,
            f"events_later_than_{a.late_ms:g}_ms": late,
            "gateway_resyncs": sink.resyncs,
            "sender_max_behind_ms": round(behind * 1000, 1),
            "ack_from_plan_p50_ms": round(_percentile(acks, 50), 2),
            "ack_from_plan_p99_ms": round(_percentile(acks, 99), 2),
            "event_from_plan_p50_ms": round(_percentile(ms, 50), 2),
            "event_from_plan_p99_ms": round(_percentile(ms, 99), 2),
            "event_from_plan_max_ms": round(max(ms), 2) if ms else None,
            "event_from_plan_mean_ms": round(statistics.fmean(ms), 2) if ms else None,
            "event_from_send_p50_ms": round(_percentile(from_send, 50), 2),
            "event_from_send_p99_ms": round(_percentile(from_send, 99), 2),
        }

    def close(self) -> None:
        self.deployment.stop()


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """On uvloop when installed, as `tracking serve` runs (uvicorn's loop "auto")."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runtime", choices=["ray", "local"], default="ray")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=2000, help="requests in flight")
    p.add_argument("--seconds", type=float, default=10.0, help="update throughput phase")
    p.add_argument("--rate", type=float, default=2000.0, help="updates/s in the latency phase")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--watched", type=int, default=1000, help="sessions watched by the gateway")
    p.add_argument("--late-ms", type=float, default=1000.0,
                   help="an event later than this after its planned send is counted as late")
    p.add_argument("--drain-s", type=float, default=5.0,
                   help="how long to wait for events after the last send")
    p.add_argument("--no-journal", dest="journal", action="store_false")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--postgres", action="store_true",
                       help="journal to a throwaway PostgreSQL server started for the run")
    store.add_argument("--store-url", help="journal to this (empty) PostgreSQL database")
    p.add_argument("--out", default="out/engine-bench.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as d, ExitStack() as stack:
        url: str | None = args.store_url
        if args.postgres:
            from harness.postgres import PostgresServer

            url = stack.enter_context(PostgresServer()).create_database("bench")
        bench = Bench(args, Path(d), url)
        try:
            result = _run(bench.run())
        finally:
            bench.close()
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    problems = result["create_failures"] + result["update_failures"] + (
        result["latency_update_failures"] + result["events_missing"]
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
