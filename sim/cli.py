"""`tracking sim ...`: run a scenario file, or a plain fleet from flags.

    tracking sim run sim/scenarios/smoke.toml          # or just: tracking sim run smoke
    tracking sim fleet --riders 100 --watchers 10 --speedup 30 --procs 2
    tracking sim list

Without --url the simulator starts a server (and stub order/notification services wired
to it); with --url it drives that server, minting tokens with --secret (or the
TRACKING_JWT_SECRET environment variable, or else a superadmin token from `tracking token`).
Exit status: 0 when every expectation held, 1 when one failed (each is printed), 2 on bad
usage or an invalid scenario.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sim.plan import PlanSettings
from sim.report import render_table, write_reports
from sim.route import City
from sim.runner import Target, run
from sim.scenario import RunConfig, ScenarioError, load_scenario

SCENARIOS = Path(__file__).parent / "scenarios"

# What a plain fleet run must show unless told otherwise: everything arrives, intact.
FLEET_EXPECT: dict[str, int | float | str] = {
    "deliveries_completed": "all",
    "watchers_saw_delivered": "all",
    "messages_lost": 0,
    "out_of_order": 0,
    "duplicates": 0,
    "status_errors": 0,
    "eta_errors": 0,
    "protocol_errors": 0,
    "phone_leaks": 0,
    "connection_failures": 0,
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="drive this server (default: start one)")
    p.add_argument("--secret", help="the server's JWT secret, to mint role tokens")
    p.add_argument("--out", help="write OUT.json and OUT.html (default out/sim-NAME-TIME)")
    p.add_argument("--procs", type=int, help="simulator processes to spread the fleet over")
    p.add_argument("--seed", type=int)
    p.add_argument("--speedup", type=float, help="simulated seconds per wall second")
    p.add_argument("--timeout-s", type=float, help="hard bound on the run (wall seconds)")
    p.add_argument(
        "--expect", action="append", default=[], metavar="NAME=VALUE",
        help="add or override an expectation, e.g. latency_p99_ms=500",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracking sim", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a scenario file (or the name of a shipped one)")
    r.add_argument("scenario")
    _common(r)
    f = sub.add_parser("fleet", help="a plain fleet: riders with watchers, no faults")
    f.add_argument("--riders", type=int, default=10)
    f.add_argument("--watchers", type=int, default=3, help="watchers per delivery")
    f.add_argument("--roles", default="customer,merchant,ops", help="watcher roles, round robin")
    f.add_argument("--http-ratio", type=float, default=0.5, help="share of riders on HTTP")
    f.add_argument("--interval-s", type=float, default=10.0, help="reporting interval (sim time)")
    f.add_argument("--gps-noise-m", type=float, default=4.0)
    f.add_argument("--start-spread-s", type=float, default=0.0, help="ramp deliveries over this")
    f.add_argument("--connect-rate", type=float, default=500.0, help="socket opens per second")
    f.add_argument("--server-workers", type=int, default=1)
    f.add_argument("--center", default="5.6037,-0.1870", help="city centre LAT,LNG")
    f.add_argument("--radius-km", type=float, default=5.0)
    _common(f)
    sub.add_parser("list", help="list the shipped scenarios")
    return parser


def _parse_expect(items: list[str]) -> dict[str, int | float | str]:
    out: dict[str, int | float | str] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise ScenarioError(f"--expect {item!r}: want NAME=VALUE")
        out[name] = value if value == "all" else float(value)
    return out


def _fleet_config(a: argparse.Namespace) -> RunConfig:
    lat, lng = (float(x) for x in a.center.split(","))
    plan = PlanSettings(
        city=City(center_lat=lat, center_lng=lng, radius_km=a.radius_km),
        interval_s=a.interval_s,
        gps_noise_m=a.gps_noise_m,
    )
    return RunConfig(
        name="fleet",
        riders=a.riders,
        watchers_per_delivery=a.watchers,
        roles=tuple(r for r in a.roles.split(",") if r),
        http_ratio=a.http_ratio,
        plan=plan,
        start_spread_s=a.start_spread_s,
        connect_rate_per_s=a.connect_rate,
        server_workers=a.server_workers,
        expect=dict(FLEET_EXPECT),
    )


def _resolve(name: str) -> Path:
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    return SCENARIOS / f"{name}.toml"


def config_from_args(a: argparse.Namespace) -> RunConfig:
    cfg = load_scenario(_resolve(a.scenario)) if a.command == "run" else _fleet_config(a)
    overrides: dict[str, Any] = {
        k: v
        for k, v in (("procs", a.procs), ("seed", a.seed), ("speedup", a.speedup),
                     ("timeout_s", a.timeout_s))
        if v is not None
    }  # fmt: skip
    if a.expect:
        overrides["expect"] = {**cfg.expect, **_parse_expect(a.expect)}
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tracking sim`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("run", "fleet", "list", "-h", "--help"):
        args.insert(0, "fleet")  # `tracking sim --riders 100 ...` is fleet mode
    a = build_parser().parse_args(args)
    if a.command == "list":
        for path in sorted(SCENARIOS.glob("*.toml")):
            try:
                print(f"{path.stem:24} {load_scenario(path).description}")
            except ScenarioError as e:
                print(f"{path.stem:24} INVALID: {e}")
        return 0
    try:
        cfg = config_from_args(a)
    except (ScenarioError, ValueError, OSError) as e:
        print(f"tracking sim: {e}", file=sys.stderr)
        return 2
    if cfg.server_faults and a.url:
        print("tracking sim: kill_shard and restart_server need a server this run starts"
              " (leave out --url)", file=sys.stderr)
        return 2
    out = a.out or f"out/sim-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    target = Target(
        url=a.url, secret=a.secret, server_log=str(Path(out).with_suffix(".server.log"))
    )
    # SIGTERM unwinds like Ctrl-C, so the server and workers this run started are stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(cfg, target)
    except KeyboardInterrupt:
        print("tracking sim: interrupted; no report", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    json_path, html_path = write_reports(report, out)
    print(render_table(report))
    print(f"report: {json_path} {html_path}")
    failed = report["failed_expectations"]
    if failed:
        print(f"{len(failed)} expectation(s) failed:", file=sys.stderr)
        for text in failed:
            print(f"  FAILED {text}", file=sys.stderr)
        return 1
    print(f"all {len(cfg.expect)} expectations held")
    return 0
