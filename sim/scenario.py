"""Run configuration: built from CLI flags (fleet mode) or read from a scenario TOML file.

A scenario names a fleet, the faults to inject and the expectations the run must meet;
see sim/scenarios/*.toml for examples. Unknown keys are errors, so a typo cannot turn an
expectation off silently.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sim.plan import PlanSettings
from sim.route import City

FAULT_KINDS = (
    "watcher_reconnect", "invalid_transition", "receiver_down", "receiver_failing",
    "kill_shard", "restart_server", "rider_offline",
)
# Faults done to the server's processes: only to a server this run started itself.
SERVER_FAULTS = ("kill_shard", "restart_server")
SERVICES = ("orders", "notifications")
ROLES = ("customer", "merchant", "ops", "public")


class ScenarioError(ValueError):
    """The scenario file is not valid; the message says where."""


@dataclass(frozen=True)
class Fault:
    kind: str
    deliveries: int = 1  # per-delivery faults: how many deliveries get it
    after_messages: int = 5  # watcher_reconnect: drop after this many updates seen;
    # rider_offline: go offline after this many fixes of the plan
    down_s: float = 1.0  # watcher_reconnect: how long the watcher stays away
    fixes: int = 6  # rider_offline: fixes buffered, then sent as one batch
    service: str = "orders"  # receiver faults: which stub
    at_s: float = 0.0  # receiver faults: seconds after the run starts
    seconds: float | None = None  # receiver faults: how long
    calls: int | None = None  # receiver_failing: how many calls
    status: int = 503  # receiver_failing: what to answer (0: drop the connection)
    down_for_s: float = 0.0  # restart_server: how long the server stays down before it restarts

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ScenarioError(f"fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.service not in SERVICES:
            raise ScenarioError(f"fault service {self.service!r}; known: {', '.join(SERVICES)}")
        if self.kind == "receiver_down" and not self.seconds:
            raise ScenarioError("receiver_down needs seconds")


@dataclass(frozen=True)
class RunConfig:
    name: str = "fleet"
    description: str = ""
    seed: int = 1
    riders: int = 10
    watchers_per_delivery: int = 3
    roles: tuple[str, ...] = ("customer", "merchant", "ops")
    http_ratio: float = 0.5
    speedup: float = 30.0
    plan: PlanSettings = field(default_factory=PlanSettings)
    procs: int = 1
    start_spread_s: float = 0.0
    connect_rate_per_s: float = 500.0
    timeout_s: float = 900.0
    eta_speed_kmh: float | None = 30.0
    integration_wait_s: float = 60.0
    tail_grace_s: float = 120.0
    server_workers: int = 1
    server_env: Mapping[str, str] = field(default_factory=dict)
    device_time: bool = False  # riders' fixes carry recorded_at (see sim/phone.py)
    jump_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    late_ratio: float = 0.0
    faults: tuple[Fault, ...] = ()
    expect: Mapping[str, int | float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.riders < 1 or self.watchers_per_delivery < 0 or self.procs < 1:
            raise ScenarioError("need riders >= 1, watchers_per_delivery >= 0, procs >= 1")
        if not 0 <= self.http_ratio <= 1 or self.speedup <= 0:
            raise ScenarioError("need 0 <= http_ratio <= 1 and speedup > 0")
        noise = (self.jump_ratio, self.duplicate_ratio, self.late_ratio)
        if min(noise) < 0 or sum(noise) > 0.5:
            raise ScenarioError("jump/duplicate/late ratios must be >= 0, at most 0.5 together")
        if any(noise) and not self.device_time:
            raise ScenarioError("jump/duplicate/late noise needs device_time = true")
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ScenarioError(f"roles {bad}; known: {', '.join(ROLES)}")
        from sim.expect import check_known  # a cycle otherwise: expect reads RunConfig

        check_known(self.expect)

    def deliveries_with(self, kind: str) -> frozenset[int]:
        """Which deliveries get a per-delivery fault: the first N, in index order."""
        n = sum(f.deliveries for f in self.faults if f.kind == kind)
        return frozenset(range(min(n, self.riders)))

    def fault(self, kind: str) -> Fault | None:
        return next((f for f in self.faults if f.kind == kind), None)

    @property
    def server_faults(self) -> tuple[Fault, ...]:
        """Faults done to the server's processes (kill_shard, restart_server)."""
        return tuple(f for f in self.faults if f.kind in SERVER_FAULTS)


_FLEET_KEYS = {
    "riders", "watchers_per_delivery", "roles", "http_ratio", "speedup", "procs",
    "start_spread_s", "connect_rate_per_s", "timeout_s", "eta_speed_kmh",
    "integration_wait_s", "tail_grace_s", "interval_s", "gps_noise_m", "phone_ratio", "vehicle_mix",
    "device_time", "jump_ratio", "duplicate_ratio", "late_ratio",
}  # fmt: skip


def _only(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(f"[{where}]: unknown keys {unknown}; known: {sorted(known)}")


def parse_scenario(doc: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a parsed scenario TOML document."""
    _only(doc, {"name", "description", "seed", "fleet", "city", "server", "faults", "expect"}, "")
    fleet = dict(doc.get("fleet", {}))
    _only(fleet, _FLEET_KEYS, "fleet")
    city_tbl = dict(doc.get("city", {}))
    _only(city_tbl, {f.name for f in fields(City)}, "city")
    server = dict(doc.get("server", {}))
    _only(server, {"workers", "env"}, "server")
    fault_keys = {f.name for f in fields(Fault)}
    faults = []
    for k, f in enumerate(doc.get("faults", [])):
        _only(f, fault_keys, f"faults.{k}")
        faults.append(Fault(**f))
    try:
        plan_kw = {k: fleet.pop(k) for k in ("interval_s", "gps_noise_m", "phone_ratio",
                                              "vehicle_mix") if k in fleet}  # fmt: skip
        plan = PlanSettings(city=City(**city_tbl), **plan_kw)
        if "roles" in fleet:
            fleet["roles"] = tuple(fleet["roles"])
        return RunConfig(
            name=str(doc.get("name", "scenario")),
            description=str(doc.get("description", "")),
            seed=int(doc.get("seed", 1)),
            plan=plan,
            server_workers=int(server.get("workers", 1)),
            server_env={str(k): str(v) for k, v in server.get("env", {}).items()},
            faults=tuple(faults),
            expect=dict(doc.get("expect", {})),
            **fleet,
        )
    except ScenarioError:
        raise
    except (TypeError, ValueError) as e:
        raise ScenarioError(str(e)) from e


def load_scenario(path: str | Path) -> RunConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from e
    try:
        return parse_scenario(doc)
    except ScenarioError as e:
        raise ScenarioError(f"{path}: {e}") from e
