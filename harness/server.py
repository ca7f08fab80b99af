"""Start and stop a real `tracking serve` process: used by tests, the simulator and load scripts."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from engine.tokens import mint_token


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def mint(secret: str, role: str, sub: str, ttl_s: int = 3600) -> str:
    """A bearer token as `tracking token` would print it."""
    return mint_token(secret, role, sub, ttl_s)


class PortTaken(RuntimeError):
    """The free port picked for the server was taken by someone else first."""


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_all(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


@dataclass
class ServerProcess:
    """A `tracking serve` subprocess on loopback with its own data dir and secret.

    Use as a context manager; `stop()` sends SIGTERM, then SIGKILL after a grace period,
    and waits, so no process is left behind.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 1
    data_dir: str = ""
    secret: str = ""
    service_secret: str = ""  # signs the service token the order/notification services get
    startup_timeout_s: float = 90.0
    log_path: str = ""
    extra_args: tuple[str, ...] = ()
    # Another checkout's server (e.g. a `git worktree` of an older commit, with its own venv):
    # its interpreter and its root, the working directory the server starts in.
    python: str = sys.executable
    cwd: str | None = None
    # Prepended to the command: `("ip", "netns", "exec", NAME)` serves from a network namespace
    # (another host of a multi-node test); it must exec the command (same pid).
    prefix: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def token(self, role: str, sub: str, ttl_s: int = 3600) -> str:
        return mint(self.secret, role, sub, ttl_s)

    def start(self) -> ServerProcess:
        """Start and wait until /health answers; a port taken meanwhile is retried on another."""
        chosen = self.port
        auto_log = not self.log_path
        for attempt in range(3):
            if not chosen:
                self.port = free_port(self.host)
            if auto_log:
                self.log_path = ""  # one log file per attempt, named by its port
            try:
                return self._start_once()
            except PortTaken:
                if chosen or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> ServerProcess:
        if not self.data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="tracking-data-")
            self.data_dir = self._tmp.name
        if not self.secret:
            self.secret = self.env.get("TRACKING_JWT_SECRET") or secrets.token_urlsafe(32)
        if not self.service_secret:
            self.service_secret = (
                self.env.get("TRACKING_SERVICE_SECRET") or secrets.token_urlsafe(32)
            )
        env = {
            **os.environ, "TRACKING_DATA_DIR": self.data_dir, "TRACKING_JWT_SECRET": self.secret,
            "TRACKING_SERVICE_SECRET": self.service_secret,
        }
        env.update(self.env)
        if not self.log_path:
            self.log_path = str(Path(self.data_dir) / f"server-{self.port}.log")
        cmd = [
            *self.prefix, self.python, "-m", "api.cli", "serve",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.cwd,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise PortTaken(f"port {self.port} was taken before the server bound it")
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {self.startup_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def engine_pids(self, kind: str = "_ShardActor") -> list[int]:
        """The server's Ray actor processes of one kind (`_ShardActor`, `_DispatcherActor`) when
        it runs its own Ray instance (they are below it in the process tree); oldest first."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        out = []
        for pid in descendants(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::" + kind.encode()):
                        out.append(pid)
            except OSError:
                continue
        return sorted(out)

    def kill(self) -> None:
        """SIGKILL the server and every process it started: a crash, not a shutdown.

        Ray's own daemons (raylet, GCS) leave the server's process group, so they are found
        by walking the process tree first.
        """
        if self.proc is not None and self.proc.poll() is None:
            family = descendants(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            _kill_all(family)

    def stop(self, grace_s: float = 20.0) -> None:
        family: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            family = descendants(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            # Reap anything left in the group (uvicorn workers, Ray helpers it spawned).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        _kill_all(family)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
