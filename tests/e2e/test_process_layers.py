"""A running API process on the Ray engine has no database driver mapped: the stores live in the
shard actors (the unit test checks the imports; this checks the real process)."""

from __future__ import annotations

from pathlib import Path

from harness import ServerProcess


def test_the_api_process_maps_no_sqlite(server: ServerProcess) -> None:
    assert server.proc is not None
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "python" in maps  # the scan reads a real process's mappings
    assert "_sqlite3" not in maps
    assert "libsqlite3" not in maps
