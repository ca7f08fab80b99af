"""A shard's CPU per location update, in this process (no Ray, no sockets): the hot path of
`engine_bench`'s update phase without the transport, measured in process CPU time, so other
load on the box changes the figures far less than it changes throughput.

    python -m loadtests.shard_cpu --sessions 100000 --batch 2000 --rounds 30 [--journal]

Each round sends one batch of plain updates (as the engine benchmark and API.md's clients do)
and one of updates carrying `recorded_at` (judged by the fix filter and the milestone rule,
when this version has them) to distinct sessions, and reports microseconds of CPU per update:
the minimum over rounds (the least disturbed) and the median. The collector is tuned as in a
shard actor (`engine.host.tune_gc`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.clock import ManualClock
from engine.domain.session import Lifetimes
from engine.host import tune_gc
from engine.protocol import Ok, Start, Update, decode_view
from engine.shard import Shard, ShardConfig
from engine.store.base import NullStore, Store

DROP = (5.6037, -0.1869)
LT = Lifetimes(session_ttl_s=86400.0, delivered_ttl_s=3600.0, purge_after_s=3600.0,
               speed_kmh=30.0)  # fmt: skip


def _store(journal: bool, tmp: Path) -> Store:
    if not journal:
        return NullStore()
    from engine.store.sqlite import SqliteStore

    return SqliteStore(tmp / "shard.sqlite3")


def run(args: argparse.Namespace) -> dict[str, Any]:
    tune_gc()  # as a shard actor does when it starts
    clock = ManualClock()
    with tempfile.TemporaryDirectory(prefix="shard-cpu-") as d:
        shard = Shard(ShardConfig(0, 1, LT), _store(args.journal, Path(d)), clock)
        tids: list[str] = []
        for base in range(0, args.sessions, 2000):
            n = min(2000, args.sessions - base)
            results = shard.handle(
                [Start(f"ORD-{base + i}", f"RIDER-{base + i}", *DROP, None) for i in range(n)]
            )
            for r in results:
                assert isinstance(r, Ok), r
                assert isinstance(r.value, bytes), r
                tids.append(decode_view(r.value).tracking_id)
        device = "recorded_at" in inspect.signature(Update).parameters
        plain: list[float] = []
        timed: list[float] = []
        k = 0
        for rnd in range(args.rounds):
            for series, with_time in ((plain, False), (timed, True)):
                batch = []
                for _ in range(args.batch):
                    tid = tids[k % len(tids)]
                    lat = 5.6 + (k % 100) * 1e-4
                    if with_time and device:
                        batch.append(Update(tid, lat, -0.18, None, f"RIDER-{k % len(tids)}",
                                            clock() - 1.0))  # fmt: skip
                    else:
                        batch.append(Update(tid, lat, -0.18, None, f"RIDER-{k % len(tids)}"))
                    k += 1
                clock.advance(1.0)
                t0 = time.process_time()
                results = shard.handle(batch)
                dt = time.process_time() - t0
                if rnd:  # the first round warms caches
                    series.append(dt / len(batch) * 1e6)
                assert all(isinstance(r, Ok) for r in results), results[:3]
        shard.store.close()
    return {
        "sessions": args.sessions, "batch": args.batch, "rounds": args.rounds,
        "journal": args.journal, "device_time": device,
        "plain_us_min": round(min(plain), 2), "plain_us_median": round(statistics.median(plain), 2),
        "recorded_at_us_min": round(min(timed), 2),
        "recorded_at_us_median": round(statistics.median(timed), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--journal", action="store_true", help="SQLite journal (default: none)")
    args = p.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
