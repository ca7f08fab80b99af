"""Run a ladder of locust steps against a loopback server and write a capacity summary.

    python -m loadtests.ladder --riders 50,100,200,400 --interval-s 1 --max-p99-ms 100

Each step is its own headless locust run (`--csv`, `--html`, stats reset once all users
are spawned) with N riders, M watchers and one ops user. The summary (Markdown table and
JSON) gives per step the updates/s, pushes/s, p50/p99 of the location update over HTTP
and of the push to watchers, failures, and the highest step held under `--max-p99-ms`;
capacity.svg draws it (see loadtests/chart.py).
Without `--host` it starts its own `tracking serve` (embedded Ray) and stops it after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from loadtests.chart import render_svg
from loadtests.report import (
    StepResult,
    StepSpec,
    parse_exceptions,
    parse_failures,
    parse_stats,
    render_table,
    summarize_step,
    to_json,
)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO_ROOT = LOCUSTFILE.parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OPS_USERS = 1


@dataclass(frozen=True)
class Target:
    base_url: str
    secret: str


def parse_steps(riders: str, watchers: str, watchers_per_rider: float, interval_s: float,
                updates_per_delivery: int) -> list[StepSpec]:
    """Steps from comma-separated rider counts, and either a watcher count per step or a ratio."""
    rider_counts = [int(x) for x in riders.split(",") if x.strip()]
    if watchers:
        watcher_counts = [int(x) for x in watchers.split(",") if x.strip()]
        if len(watcher_counts) != len(rider_counts):
            raise ValueError("--watchers needs one count per --riders step")
    else:
        watcher_counts = [math.ceil(n * watchers_per_rider) for n in rider_counts]
    if not rider_counts or any(n <= 0 for n in rider_counts) or any(m < 0 for m in watcher_counts):
        raise ValueError("steps need at least one rider each and no negative watcher counts")
    return [
        StepSpec(riders=n, interval_s=interval_s, watchers=m,
                 updates_per_delivery=updates_per_delivery)
        for n, m in zip(rider_counts, watcher_counts, strict=True)
    ]


def locust_command(spec: StepSpec, base_url: str, prefix: Path, step_s: float,
                   spawn_s: float) -> list[str]:
    """The headless locust command line of one step."""
    users = spec.riders + spec.watchers + OPS_USERS
    spawn_rate = max(1.0, users / spawn_s)
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", base_url,
        "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{step_s + spawn_s:g}s",
        "--riders", str(spec.riders), "--watchers", str(spec.watchers), "--ops", str(OPS_USERS),
        "--rider-interval-s", f"{spec.interval_s:g}",
        "--updates-per-delivery", str(spec.updates_per_delivery),
        "--reset-stats", "--stop-timeout", "5", "--exit-code-on-error", "0",
        "--csv", str(prefix), "--html", f"{prefix}.html",
        "--run-summary", f"{prefix}_summary.json",
        "--logfile", f"{prefix}.log",
    ]


def run_step(spec: StepSpec, target: Target, prefix: Path, step_s: float,
             spawn_s: float) -> StepResult:
    cmd = locust_command(spec, target.base_url, prefix, step_s, spawn_s)
    env = {**os.environ, "TRACKING_JWT_SECRET": target.secret,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH")]))}
    # Locust stops itself at -t; the margin covers start-up and the stop timeout.
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=step_s + spawn_s + 90, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited with {proc.returncode}: {proc.stderr[-2000:]}")
    summary_path = Path(f"{prefix}_summary.json")
    return summarize_step(
        spec,
        parse_stats(Path(f"{prefix}_stats.csv").read_text()),
        parse_failures(Path(f"{prefix}_failures.csv").read_text()),
        parse_exceptions(Path(f"{prefix}_exceptions.csv").read_text()),
        json.loads(summary_path.read_text()) if summary_path.exists() else None,
    )


@contextmanager
def target_server(host: str, workers: int, out: Path) -> Iterator[Target]:
    """The server under test: the one at `host` (secret from TRACKING_JWT_SECRET), or a
    fresh loopback `tracking serve` stopped on exit, its log kept as `out`/server.log."""
    if host:
        if (urlsplit(host).hostname or "") not in LOOPBACK:
            raise SystemExit(f"ladder: {host} is not loopback; the ladder only loads 127.0.0.1")
        secret = os.environ.get("TRACKING_JWT_SECRET", "")
        if not secret:
            raise SystemExit("ladder: with --host, set TRACKING_JWT_SECRET to the server's secret")
        yield Target(host.rstrip("/"), secret)
        return
    from harness import ServerProcess

    with ServerProcess(workers=workers) as server:
        print(f"ladder: started {server.base_url}", flush=True)
        try:
            yield Target(server.base_url, server.secret)
        finally:
            server.stop()
            shutil.copyfile(server.log_path, out / "server.log")


def run_ladder(args: argparse.Namespace, out: Path, started: float) -> list[StepResult]:
    specs = parse_steps(args.riders, args.watchers, args.watchers_per_rider, args.interval_s,
                        args.updates_per_delivery)
    results: list[StepResult] = []
    with target_server(args.host, args.workers, out) as target:
        for i, spec in enumerate(specs, 1):
            if time.monotonic() - started + args.step_s + args.spawn_s > args.max_total_s:
                print(f"ladder: stopping before step {i}: --max-total-s reached", flush=True)
                break
            print(f"ladder: step {i}/{len(specs)}: {spec.label()}", flush=True)
            result = run_step(spec, target, out / f"step{i:02d}", args.step_s, args.spawn_s)
            result = replace(result, host_load_1m=round(os.getloadavg()[0], 2))
            results.append(result)
            print(f"ladder: step {i}: {result.updates_per_s:.1f} updates/s, push p50/p99 "
                  f"{result.push_p50_ms}/{result.push_p99_ms} ms, {result.failures} failures",
                  flush=True)
            if not result.held(args.max_p99_ms) and not args.keep_going:
                print("ladder: step did not hold; stopping (--keep-going to continue)", flush=True)
                break
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.ladder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--riders", default="25,50,100,200,400,800",
                   help="rider count of each step, comma-separated")
    p.add_argument("--watchers", default="", help="watcher count of each step (default: ratio)")
    p.add_argument("--watchers-per-rider", type=float, default=1.0)
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between rider reports")
    p.add_argument("--updates-per-delivery", type=int, default=20)
    p.add_argument("--step-s", type=float, default=30.0, help="measured seconds per step")
    p.add_argument("--spawn-s", type=float, default=5.0, help="ramp-up seconds, not measured")
    p.add_argument("--max-p99-ms", type=float, default=100.0,
                   help="a step holds if push p99 is under this (and nothing failed)")
    p.add_argument("--max-total-s", type=float, default=1800.0, help="time budget of the ladder")
    p.add_argument("--keep-going", action="store_true", help="run every step even after a miss")
    p.add_argument("--host", default="", help="a running loopback server (default: start one)")
    p.add_argument("--workers", type=int, default=1, help="API processes of the started server")
    p.add_argument("--out", default="", help="output directory (default out/ladder-<time>)")
    args = p.parse_args(argv)
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%d %H:%M")
    out = Path(args.out or f"out/ladder-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    results = run_ladder(args, out, started)
    command = shlex.join(["python", "-m", "loadtests.ladder", *(argv or sys.argv[1:])])
    table = render_table(results, args.max_p99_ms)
    params = {"step_s": args.step_s, "spawn_s": args.spawn_s, "workers": args.workers,
              "host": args.host, "started_at": started_at}
    payload = {"command": command, "cpus": os.cpu_count(), "params": params,
               **to_json(results, args.max_p99_ms)}
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    # Drawn from the very document summary.json holds, so the picture and the figures agree.
    (out / "capacity.svg").write_text(render_svg(payload))
    (out / "summary.md").write_text(
        f"`{command}`\n\n![capacity ladder: updates/s and push p99 per step](capacity.svg)\n\n"
        f"{table}\n")
    print(f"\n{table}\n\nladder: wrote {out / 'summary.md'}, {out / 'summary.json'} and "
          f"{out / 'capacity.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
