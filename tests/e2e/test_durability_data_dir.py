"""A data directory that cannot be used stops `tracking serve` at start with a clear message
(exit code 2, no traceback); a data directory that does not exist yet is created."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from engine.store.sqlite import SqliteStore, shard_db_path
from harness import ServerProcess
from tests.support import timeout


def _serve(ray_address: str, data_dir: Path, log: Path) -> ServerProcess:
    # Joined to the session's Ray (a fresh namespace) so that, should the check ever move after
    # Ray starts, no second Ray instance is started here.
    env = {"TRACKING_RAY_ADDRESS": ray_address,
           "TRACKING_RAY_NAMESPACE": "dd-" + uuid.uuid4().hex[:8], "TRACKING_SHARDS": "2"}
    return ServerProcess(env=env, data_dir=str(data_dir), log_path=str(log),
                         startup_timeout_s=timeout(60))


def _refused(srv: ServerProcess, log: Path) -> str:
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    srv.stop()
    assert srv.proc is not None
    assert srv.proc.returncode == 2, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text, text
    return text


def test_a_corrupt_store_file_is_refused_with_a_clear_message(
    ray_address: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard-001.sqlite3").write_bytes(b"this is not a database\n" * 200)
    log = tmp_path / "server.log"
    text = _refused(_serve(ray_address, data, log), log)
    assert "tracking: " in text
    assert "shard-001.sqlite3" in text
    assert "corrupt" in text or "cannot be used" in text


def test_a_damaged_database_is_refused(ray_address: str, tmp_path: Path) -> None:
    # A real SQLite file whose pages were overwritten (a torn disk, not a wrong file).
    data = tmp_path / "data"
    SqliteStore(shard_db_path(data, 0)).close()  # a healthy store file, as a shard leaves it
    target = data / "shard-000.sqlite3"
    raw = bytearray(target.read_bytes())
    assert len(raw) >= 4096
    raw[100:4096] = b"\xff" * (4096 - 100)  # the schema page, after the file header
    target.write_bytes(bytes(raw))
    for leftover in data.glob("shard-000.sqlite3-*"):  # WAL/SHM would mask the damage
        leftover.unlink()
    log = tmp_path / "server.log"
    text = _refused(_serve(ray_address, data, log), log)
    assert "shard-000.sqlite3" in text


def test_a_data_dir_that_is_a_file_is_refused(ray_address: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be\n")
    log = tmp_path / "server.log"
    text = _refused(_serve(ray_address, data, log), log)
    assert str(data) in text


def test_a_data_dir_that_cannot_be_created_is_refused(ray_address: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x\n")
    data = blocker / "data"
    log = tmp_path / "server.log"
    text = _refused(_serve(ray_address, data, log), log)
    assert "data directory" in text
    assert str(data) in text


def test_a_missing_data_dir_is_created_and_used(ray_address: str, tmp_path: Path) -> None:
    data = tmp_path / "does" / "not" / "exist"
    srv = _serve(ray_address, data, tmp_path / "server.log")
    try:
        srv.start()
        r = httpx.get(srv.base_url + "/health", timeout=timeout(30))
        assert r.status_code == 200, r.text
        assert sorted(p.name for p in data.glob("shard-*.sqlite3")) == [
            "shard-000.sqlite3", "shard-001.sqlite3"]
    finally:
        srv.stop()
