"""Read Linux /proc to see a server's side of our loopback connections.

Lets e2e tests prove what they claim: which API worker process holds a given WebSocket, and
whether the server has unsent bytes queued toward a client that stopped reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ESTABLISHED = "01"


@dataclass(frozen=True)
class TcpEntry:
    local_port: int
    remote_port: int
    state: str
    tx_queue: int
    rx_queue: int
    inode: int


def _entries() -> list[TcpEntry]:
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            tx, rx = f[4].split(":")
            out.append(TcpEntry(
                local_port=int(f[1].rsplit(":", 1)[1], 16),
                remote_port=int(f[2].rsplit(":", 1)[1], 16),
                state=f[3], tx_queue=int(tx, 16), rx_queue=int(rx, 16), inode=int(f[9]),
            ))
    return out


def server_side(server_port: int, client_port: int) -> TcpEntry | None:
    """The server's socket of the connection from our `client_port`, if it still exists."""
    for e in _entries():
        if e.local_port == server_port and e.remote_port == client_port and e.inode:
            return e
    return None


def process_group(pgid: int) -> list[int]:
    """Every live process in the group (a `tracking serve` and the workers it spawned)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def owner_of(inode: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the socket with this inode."""
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def serving_process(pgid: int, server_port: int, client_port: int) -> int | None:
    """The pid of the server process (in group `pgid`) holding our connection from `client_port`."""
    entry = server_side(server_port, client_port)
    if entry is None:
        return None
    return owner_of(entry.inode, process_group(pgid))
