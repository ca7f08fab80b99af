"""A whole simulator run: server and stubs (when not given a URL), faults, worker processes,
the integration checks, the report and the verdict on the expectations."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, TextIO

import httpx

from harness import ServerProcess, mint
from sim.context import SliceConfig
from sim.expect import evaluate
from sim.fleet import run_slice
from sim.integrations import IntegrationReport, check_calls, expected_calls
from sim.phone import Noise
from sim.report import build_report, figures
from sim.scenario import Fault, RunConfig, ScenarioError
from sim.stats import Metrics
from sim.stubs import IntegrationStubs


@dataclass(frozen=True)
class Target:
    url: str | None = None  # None: start a server (and the stubs) for this run
    secret: str | None = None  # signs tokens; for an external server, its TRACKING_JWT_SECRET
    stubs: IntegrationStubs | None = None  # stubs an external server was started against
    # verifies the service token the stubs receive (that server's TRACKING_SERVICE_SECRET)
    service_secret: str | None = None
    server_log: str = ""  # where the server this run starts writes its log (default: data dir)
    log: TextIO = sys.stderr


def run(cfg: RunConfig, target: Target) -> dict[str, Any]:
    """Run `cfg` to completion; the report carries `failed_expectations`."""
    with ExitStack() as stack:
        stubs = target.stubs
        secret: str | None
        fallback: str | None
        if target.url is None:
            stubs = stubs or stack.enter_context(IntegrationStubs())
            env = {**stubs.env(), **cfg.server_env}
            print(f"sim: starting a server ({cfg.server_workers} worker(s))...", file=target.log)
            srv = stack.enter_context(
                ServerProcess(env=env, workers=cfg.server_workers, log_path=target.server_log)
            )
            base, ws, secret, fallback = srv.base_url, srv.ws_url, srv.secret, None
            service_secret: str | None = srv.service_secret
        else:
            base = target.url.rstrip("/")
            ws = "ws" + base.removeprefix("http")
            secret = target.secret or os.environ.get("TRACKING_JWT_SECRET")
            fallback = None if secret else _cli_token()
            service_secret = target.service_secret
        if stubs is not None:
            stack.enter_context(_receiver_faults(cfg, stubs))
        done_faults: list[dict[str, Any]] = []
        if cfg.server_faults:
            if target.url is not None:
                raise ScenarioError(
                    "kill_shard and restart_server need a server this run starts (no --url)"
                )
            stack.enter_context(_server_faults(cfg, srv, done_faults, target.log))
        t0 = time.monotonic()
        base_slice = SliceConfig(
            base_url=base,
            ws_url=ws,
            run_id=secrets.token_hex(4),
            seed=cfg.seed,
            indices=(),
            plan=cfg.plan,
            speedup=cfg.speedup,
            http_ratio=cfg.http_ratio,
            watchers_per_delivery=cfg.watchers_per_delivery,
            roles=cfg.roles,
            secret=secret,
            fallback_token=fallback,
            t0_monotonic=t0,
            deadline_s=cfg.timeout_s,
            start_spread_s=cfg.start_spread_s,
            connect_rate_per_s=cfg.connect_rate_per_s / cfg.procs,
            eta_speed_kmh=cfg.eta_speed_kmh,
            tail_grace_s=cfg.tail_grace_s,
            reconnect=cfg.deliveries_with("watcher_reconnect"),
            invalid=cfg.deliveries_with("invalid_transition"),
            device_time=cfg.device_time,
            noise=Noise(cfg.jump_ratio, cfg.duplicate_ratio, cfg.late_ratio),
            offline=cfg.deliveries_with("rider_offline"),
            survive_outages=bool(cfg.server_faults),
            **_reconnect_settings(cfg),
            **_offline_settings(cfg),
        )
        slices = [
            replace(base_slice, indices=tuple(range(k, cfg.riders, cfg.procs)))
            for k in range(cfg.procs)
        ]
        progress = _ProgressLine(target.log, cfg)
        metrics = _run_slices(slices, progress.update)
        progress.close()
        duration = time.monotonic() - t0
        integ: dict[str, Any] | None = None
        if stubs is not None:
            integ = _wait_integrations(cfg, stubs, metrics, service_secret, target.log).as_dict()
        info = {"url": base, "started_by_sim": target.url is None, "procs": cfg.procs}
        if target.url is None:
            info["server_log"] = srv.log_path
        info["server_stats"] = _server_stats(base, secret)
        report = build_report(cfg, metrics, duration_s=duration, integrations=integ, target=info,
                              faults=done_faults)
        report["failed_expectations"] = evaluate(cfg.expect, figures(report))
        return report


def _reconnect_settings(cfg: RunConfig) -> dict[str, Any]:
    f = cfg.fault("watcher_reconnect")
    if f is None:
        return {}
    return {"reconnect_after_messages": f.after_messages, "reconnect_down_s": f.down_s}


def _offline_settings(cfg: RunConfig) -> dict[str, Any]:
    f = cfg.fault("rider_offline")
    if f is None:
        return {}
    return {"offline_after": f.after_messages, "offline_fixes": f.fixes}


def _cli_token() -> str:
    """Without the server's secret, ask `tracking token` (it reads the secret from the data dir)."""
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "token", "--role", "superadmin", "--sub", "sim"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip()


@contextmanager
def _receiver_faults(cfg: RunConfig, stubs: IntegrationStubs) -> Iterator[None]:
    timers: list[threading.Timer] = []
    for f in cfg.faults:
        stub = stubs.orders if f.service == "orders" else stubs.notifications
        if f.kind == "receiver_down":
            assert f.seconds is not None
            timers.append(threading.Timer(f.at_s, stub.go_down, (f.seconds,)))
        elif f.kind == "receiver_failing":
            kw = {"calls": f.calls, "seconds": f.seconds}
            timers.append(threading.Timer(f.at_s, stub.set_failing, (f.status,), kw))
    for t in timers:
        t.daemon = True
        t.start()
    try:
        yield
    finally:
        for t in timers:
            t.cancel()


@contextmanager
def _server_faults(
    cfg: RunConfig, srv: ServerProcess, done: list[dict[str, Any]], log: TextIO
) -> Iterator[None]:
    """kill_shard and restart_server, each on its own timer; what was done goes to `done`."""
    rng = random.Random(f"server-faults:{cfg.seed}")
    lock = threading.Lock()  # one fault at a time: a restart replaces the process tree
    t0 = time.monotonic()

    def note(kind: str, ok: bool, what: str, began: float, **figures: float) -> None:
        at = began - t0
        done.append({"kind": kind, "at_s": round(at, 1), "ok": ok, "what": f"t={at:.0f}s {what}",
                     **figures})
        print(f"sim: {what}", file=log)

    def kill_shard() -> None:
        with lock:
            began = time.monotonic()
            pids = srv.engine_pids("_ShardActor")
            if not pids:
                note("kill_shard", False, "kill_shard: no shard actor below the server (it"
                     " must run its own Ray instance)", began)
                return
            pid = rng.choice(pids)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            back = _answers_again(srv.base_url, deadline_s=120)
            took = time.monotonic() - killed
            note("kill_shard", back, f"SIGKILL shard actor pid {pid} (of {len(pids)}); the"
                 f" service answered /health again after {took:.1f} s", began,
                 recovery_s=round(took, 2))

    def restart(f: Fault) -> None:
        with lock:
            family = len(srv.engine_pids("_ShardActor"))
            killed = time.monotonic()
            srv.kill()
            time.sleep(f.down_for_s)
            try:
                srv.start()
            except RuntimeError as e:
                note("restart_server", False, f"restart_server: the server did not come back:"
                     f" {e}", killed)
                return
            took = time.monotonic() - killed
            note("restart_server", True, f"SIGKILL the server and every process below it"
                 f" ({family} shard actors among them), started again on the same data dir"
                 f" and port: serving after {took:.1f} s", killed, recovery_s=round(took, 2))

    timers: list[threading.Timer] = []
    for f in cfg.server_faults:
        if f.kind == "kill_shard":
            timers.append(threading.Timer(f.at_s, kill_shard))
        else:
            timers.append(threading.Timer(f.at_s, restart, (f,)))
    for t in timers:
        t.daemon = True
        t.start()
    try:
        yield
    finally:
        for t in timers:
            t.cancel()
        for t in timers:
            t.join(timeout=180)


def _health(base: str) -> int:
    try:
        return httpx.get(base + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _answers_again(base: str, deadline_s: float) -> bool:
    """After a kill: wait until the service notices (not 200, up to 2 s), then until it answers
    200 again."""
    noticed = time.monotonic() + 2.0
    while time.monotonic() < noticed and _health(base) == 200:
        time.sleep(0.02)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _health(base) == 200:
            return True
        time.sleep(0.1)
    return False


def _wait_integrations(
    cfg: RunConfig, stubs: IntegrationStubs, m: Metrics, secret: str | None, log: TextIO
) -> IntegrationReport:
    """At-least-once delivery with retries is asynchronous: give it time to arrive."""
    expected = [expected_calls(s) for s in m.sessions]
    deadline = time.monotonic() + cfg.integration_wait_s
    waiting = False
    while True:
        rep = check_calls(expected, stubs.orders.requests, stubs.notifications.requests, secret)
        if rep.complete or time.monotonic() >= deadline:
            return rep
        if not waiting:
            waiting = True
            print(
                f"sim: waiting up to {cfg.integration_wait_s:g} s for order/notification calls",
                file=log,
            )
        time.sleep(0.5)


def _server_stats(base: str, secret: str | None) -> Any:
    if not secret:
        return None
    headers = {"Authorization": f"Bearer {mint(secret, 'superadmin', 'sim')}"}
    try:
        r = httpx.get(base + "/stats/tracking", headers=headers, timeout=10)
        return r.json() if r.status_code == 200 else {"status": r.status_code}
    except (httpx.HTTPError, ValueError) as e:
        return {"error": type(e).__name__}


def _run_slice_in_loop(cfg: SliceConfig, progress: Callable[[dict[str, Any]], None]) -> Metrics:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.Runner()
    with runner:
        return runner.run(run_slice(cfg, progress))


def _worker(cfg: SliceConfig, k: int, out: Any) -> None:
    metrics = _run_slice_in_loop(cfg, lambda snap: out.put(("progress", k, snap)))
    out.put(("done", k, metrics))


def _run_slices(
    slices: list[SliceConfig], progress: Callable[[int, dict[str, Any]], None]
) -> Metrics:
    if len(slices) == 1:
        return _run_slice_in_loop(slices[0], lambda snap: progress(0, snap))
    # spawn, not fork: this process runs stub threads and may hold a server's pipes.
    mp = multiprocessing.get_context("spawn")
    results: Any = mp.Queue()
    procs = [
        mp.Process(target=_worker, args=(s, k, results), daemon=True) for k, s in enumerate(slices)
    ]
    for p in procs:
        p.start()
    merged, done = Metrics(), 0
    limit = time.monotonic() + slices[0].deadline_s + 120
    try:
        while done < len(procs):
            try:
                kind, k, payload = results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > limit or not any(p.is_alive() for p in procs):
                    merged.error("worker_lost", "a simulator process ended without results")
                    break
                continue
            if kind == "progress":
                progress(k, payload)
            else:
                merged.merge(payload)
                done += 1
    except BaseException:
        for p in procs:  # interrupted: do not wait for the workers to finish their run
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return merged


class _ProgressLine:
    """One live status line: deliveries done, sockets open, updates sent, p99 so far."""

    def __init__(self, out: TextIO, cfg: RunConfig) -> None:
        self._out, self._cfg = out, cfg
        self._snaps: dict[int, dict[str, Any]] = {}
        self._tty = out.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, k: int, snap: dict[str, Any]) -> None:
        self._snaps[k] = snap
        now = time.monotonic()
        if now - self._last < (1.0 if self._tty else 5.0):
            return
        self._last = now
        s = self._snaps.values()
        p99s = [x["p99_ms"] for x in s if x["p99_ms"] is not None]
        line = (
            f"t={now - self._t0:5.0f}s deliveries {sum(x['completed'] for x in s)}/"
            f"{self._cfg.riders} (started {sum(x['started'] for x in s)}) "
            f"sockets {sum(x['open'] for x in s)} updates {sum(x['sent'] for x in s)} "
            f"msgs {sum(x['received'] for x in s)} errors {sum(x['errors'] for x in s)} "
            f"p99 {max(p99s) if p99s else '-'} ms"
        )
        kinds: dict[str, int] = {}
        for x in s:
            for kind, n in x.get("error_kinds", {}).items():
                kinds[kind] = kinds.get(kind, 0) + n
        if kinds:
            line += " (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())[:3]) + ")"
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", file=self._out)
        self._out.flush()

    def close(self) -> None:
        if self._tty:
            print(file=self._out)
