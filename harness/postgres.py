"""A throwaway PostgreSQL server from Debian's `postgresql` package, for tests and benchmarks.

    with PostgresServer() as pg:
        url = pg.create_database("t1")      # postgresql://postgres@127.0.0.1:PORT/t1

A fresh cluster (initdb) in a temporary directory, on a free port, with trust authentication for
the addresses it listens on (loopback, or the test's own network namespaces' addresses).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (`runuser`);
otherwise as the current user. `stop()` stops it and removes its files.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness.server import free_port

DEBIAN_BIN = "/usr/lib/postgresql/*/bin"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def bin_dir() -> Path:
    """Where initdb and pg_ctl are (the newest Debian version installed, else PATH)."""
    found = sorted(glob.glob(DEBIAN_BIN), key=lambda p: int(Path(p).parent.name)
                   if Path(p).parent.name.isdigit() else 0)  # fmt: skip
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresMissing(
        "PostgreSQL's server is not installed: apt-get install postgresql (Debian), or put"
        " initdb and pg_ctl on PATH"
    )


class PostgresServer:
    """See the module docstring. `fsync=False` only where durability of the server itself is
    not under test (it then survives no crash of its own; a client's crash is unaffected)."""

    def __init__(
        self, listen: Sequence[str] = ("127.0.0.1",), port: int = 0, fsync: bool = True,
        max_connections: int = 400, allow: Sequence[str] = (),
    ) -> None:
        self.listen = tuple(listen)
        # Clients trusted without a password: the listen addresses, and these networks (CIDR).
        self.allow = (*(f"{a}/32" for a in self.listen), *allow)
        self.port = port
        self.fsync = fsync
        self.max_connections = max_connections
        self.root: Path | None = None
        self.bin = bin_dir()
        self._as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
            self._owner = (pw.pw_uid, pw.pw_gid)

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        return f"postgresql://postgres@{host or self.listen[0]}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=timeout, check=False,
            cwd="/",
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}):\n"
                               f"{out.stdout[-2000:]}{out.stderr[-2000:]}")  # fmt: skip

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="tracking-pg-"))
        self.root.chmod(0o755)  # the postgres user must reach its data dir inside
        self.data.mkdir(mode=0o700)
        if self._owner is not None:
            os.chown(self.data, *self._owner)
        try:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--no-instructions")  # fmt: skip
            for attempt in range(3):
                if not self.port or attempt:
                    self.port = free_port("0.0.0.0")
                conf = {
                    "listen_addresses": f"'{','.join(self.listen)}'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.data}'",
                    "max_connections": str(self.max_connections),
                    "fsync": "on" if self.fsync else "off",
                    "synchronous_commit": "on" if self.fsync else "off",
                    "full_page_writes": "on" if self.fsync else "off",
                    "shared_buffers": "256MB", "max_wal_size": "2GB",
                    "log_min_messages": "warning", "logging_collector": "off",
                }
                with open(self.data / "postgresql.auto.conf", "w") as f:
                    f.writelines(f"{k} = {v}\n" for k, v in conf.items())
                with open(self.data / "pg_hba.conf", "w") as f:
                    f.write("local all all trust\n")
                    f.writelines(f"host all all {a} trust\n" for a in self.allow)
                try:
                    self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                              str(self.data / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
                    return self
                except RuntimeError:
                    if attempt == 2 or "in use" not in self.log_tail():
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.data / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._run(str(self.bin / "psql"), "-h", str(self.data), "-p", str(self.port), "-U",
                  "postgres", "-q", "-c", f'CREATE DATABASE "{name}"')  # fmt: skip
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate: nothing here needs a clean shutdown) and remove it."""
        if self.root is None:
            return
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "-t", "30", "stop", timeout=60)  # fmt: skip
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)  # pg_ctl gave up: the postmaster goes anyway
                time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
