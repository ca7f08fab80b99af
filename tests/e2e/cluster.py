"""A second machine on this one, for the multi-node tests: a network namespace joined to the
test's own by a veth pair, and Ray nodes started with `ray start` (a head here, a worker there).

The test's namespace is the first host: the Ray head, one `tracking serve`, the PostgreSQL server
and the stub services run here, listening on the veth's address, so the other host reaches
them and the test reaches everything without any routing. Traffic stays on the veth pair.
Everything started is stopped, and the namespace (with its veth pair) deleted, by `down()`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from harness import descendants, free_port

RAY = str(Path(sys.executable).parent / "ray")
# Ray's own auth must agree between `ray start` and every driver (engine.runtime.ray_cluster
# turns it off for its drivers unless set); the nodes are the test's own, on a private link.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    probe = f"trk-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def _used_subnets() -> set[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False)
    return {w.rsplit(".", 1)[0] for w in out.stdout.split() if w.count(".") == 3}


class PeerHost:
    """A network namespace joined to this one by a veth pair (see the module docstring)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"trk-{tag}"
        self.veth_here, self.veth_there = f"trk{tag}a", f"trk{tag}b"
        used = _used_subnets()
        free = [n for n in range(16, 250) if f"10.213.{n}" not in used]
        net = f"10.213.{random.choice(free)}"
        self.here_ip, self.there_ip = f"{net}.1", f"{net}.2"
        self.made = False

    def up(self) -> PeerHost:
        try:
            _ip("netns", "add", self.name)
            self.made = True
            _ip("link", "add", self.veth_here, "type", "veth", "peer", "name", self.veth_there)
            _ip("link", "set", self.veth_there, "netns", self.name)
            _ip("addr", "add", f"{self.here_ip}/24", "dev", self.veth_here)
            _ip("link", "set", self.veth_here, "up")
            _ip("-n", self.name, "addr", "add", f"{self.there_ip}/24", "dev", self.veth_there)
            _ip("-n", self.name, "link", "set", self.veth_there, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise
        return self

    @property
    def prefix(self) -> tuple[str, ...]:
        """Prepended to a command, runs it on the peer host."""
        return ("ip", "netns", "exec", self.name)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                             check=False)  # fmt: skip
        return [int(p) for p in out.stdout.split()]

    def kill_everything(self, rounds: int = 50) -> list[int]:
        """SIGKILL every process of the peer host (a machine losing power); the pids."""
        killed: list[int] = []
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            killed.extend(pids)
            time.sleep(0.05)
        return killed

    def down(self) -> None:
        if self.made:
            self.kill_everything()
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self.made = False
        # Deleting the namespace deletes the pair; this is for a pair left half-made.
        subprocess.run(["ip", "link", "del", self.veth_here], capture_output=True, check=False)


class RayNode:
    """`ray start --block`: the node's Ray processes are this process's descendants."""

    def __init__(self, args: Sequence[str], log_path: Path, prefix: Sequence[str] = ()) -> None:
        self.cmd = [*prefix, RAY, "start", "--block", "--disable-usage-stats", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def head(cls, ip: str, log_path: Path) -> tuple[RayNode, str]:
        """A head node on `ip`; and the cluster's address."""
        port = free_port(ip)
        node = cls([
            "--head", f"--node-ip-address={ip}", f"--port={port}", "--include-dashboard=false",
            f"--dashboard-agent-listen-port={free_port(ip)}", "--num-cpus=2",
        ], log_path)  # fmt: skip
        return node, f"{ip}:{port}"

    def start(self) -> RayNode:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, env={**os.environ, **RAY_ENV}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        family = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def alive_nodes(address: str, prefix: Sequence[str] = ()) -> list[str]:
    """The addresses of the cluster's live nodes, asked by a driver of its own."""
    code = (
        "import ray, json\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))\n"
        "ray.shutdown()\n"
    )
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                             text=True, env={**os.environ, **RAY_ENV}, timeout=60,
                             check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return []
    if out.returncode != 0:
        return []
    import json

    nodes: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return nodes
