"""What a batch costs to cross a process boundary: the typed wire (`engine.protocol`, msgpack)
against the alternatives it was chosen over (untyped tuples, or the structs themselves, through
pickle, as Ray would ship them). Pure CPU, one process, no Ray.

    python -m loadtests.wire_bench --batch 2000 --rounds 50
    python -m loadtests.wire_bench --ray --calls 2000      # what one Ray actor call costs

With `--ray`, it starts a private local Ray instance and reports the calling process's CPU and
the wall time per sequential call to a trivial actor: the cost that made the shards carry their
traffic on sockets of their own (engine/runtime/channel.py).
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable
from typing import NamedTuple

from engine import protocol as p
from engine.domain.status import Status


class _UpdateTuple(NamedTuple):
    tracking_id: str
    lat: float
    lng: float
    status: str | None
    rider_id: str | None


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=2000, help="commands per batch")
    ap.add_argument("--rounds", type=int, default=50, help="best of this many rounds")
    ap.add_argument("--ray", action="store_true", help="time Ray actor calls instead")
    ap.add_argument("--calls", type=int, default=2000, help="with --ray: calls to time")
    a = ap.parse_args(argv)
    if a.ray:
        return _ray_calls(a.calls)
    n = a.batch
    ids = [f"TRK-{i:020d}" for i in range(n)]
    typed = p.CallRequest(
        [p.Update(t, 5.6, -0.18, Status.IN_TRANSIT, "RIDER-1") for t in ids], None
    )
    tuples = [("update", t, 5.6, -0.18, "IN_TRANSIT", "RIDER-1") for t in ids]
    named = [_UpdateTuple(t, 5.6, -0.18, "IN_TRANSIT", "RIDER-1") for t in ids]
    frame = b'{"type":"location_update","data":{"tracking_id":"TRK-1","seq":5}}'
    events = p.Feed("e", 0, [p.Event(t, p.EventKind.LOCATION, 5, frame, 1.5) for t in ids])
    event_tuples = [(t, "u", 5, frame, 1.5) for t in ids]
    cases: list[tuple[str, Callable[[], object]]] = [
        ("commands: typed structs, msgpack (shipped)",
         lambda: p.unpack_request(p.pack(typed))),
        ("commands: tuples, pickle", lambda: pickle.loads(pickle.dumps(tuples, 5))),
        ("commands: typed structs, pickle",
         lambda: pickle.loads(pickle.dumps(typed.commands, 5))),
        ("commands: NamedTuples, pickle", lambda: pickle.loads(pickle.dumps(named, 5))),
        ("events: typed structs, msgpack (shipped)", lambda: p.unpack_feed(p.pack(events))),
        ("events: tuples, pickle", lambda: pickle.loads(pickle.dumps(event_tuples, 5))),
        ("events: typed structs, pickle",
         lambda: pickle.loads(pickle.dumps(events.events, 5))),
    ]
    width = max(len(name) for name, _ in cases)
    print(f"{'encode + decode, per item':<{width}}  us")
    for name, fn in cases:
        print(f"{name:<{width}}  {_best(fn, a.rounds) / n * 1e6:.3f}")
    return 0


def _ray_calls(calls: int) -> int:
    from engine.runtime import ray_cluster  # the one module that calls Ray

    ray_cluster.start_local_for_tests()
    try:
        cpu, wall = ray_cluster.call_cost(calls)
    finally:
        ray_cluster.shutdown()
    print(f"Ray actor call, {calls} sequential calls: {cpu * 1e6:.0f} us of the caller's CPU,"
          f" {wall * 1e6:.0f} us wall, per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
