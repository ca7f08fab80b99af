"""The embedded store as a database would be: durable settings pinned, read-only files refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store import StoreSpec, check_store
from engine.store.base import StoreError
from engine.store.sqlite import SqliteOutbox, SqliteStore, shard_db_path


@pytest.mark.parametrize("kind", [SqliteStore, SqliteOutbox])
def test_every_connection_journals_in_wal_mode_and_syncs_fully(
    tmp_path: Path, kind: type[SqliteStore] | type[SqliteOutbox]
) -> None:
    # An acknowledged change must survive a power cut: WAL with synchronous=FULL syncs the log
    # at every commit (NORMAL would leave the last commits to the next checkpoint).
    store = kind(shard_db_path(tmp_path, 0))
    try:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` read-only even for root (immutable), as a read-only mount or a file copied
    from a backup with the wrong owner would be."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


def test_a_read_only_shard_file_is_refused_at_start_with_a_clear_message(tmp_path: Path) -> None:
    # Finding 9: the data dir is writable, one shard file is not. Refuse it at start, naming
    # the file and what to do, instead of starting and refusing every write.
    spec = StoreSpec(tmp_path, 2)
    for i in range(2):
        check_store(spec, i)
    bad = shard_db_path(tmp_path, 1)
    with read_only(bad):
        check_store(spec, 0)
        with pytest.raises(StoreError) as refused:
            check_store(spec, 1)
        with pytest.raises(StoreError):
            SqliteStore(bad)
    detail = refused.value.detail
    assert str(bad) in detail
    assert "read-only" in detail
    assert "writable" in detail


def test_a_read_only_write_ahead_log_is_refused_too(tmp_path: Path) -> None:
    db = shard_db_path(tmp_path, 0)
    store = SqliteStore(db)
    store.conn.execute("PRAGMA wal_autocheckpoint=0")
    store.conn.execute("INSERT INTO meta VALUES ('x', 'y')")
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()
    with read_only(wal), pytest.raises(StoreError, match="read-only"):
        SqliteStore(db)
    store.close()
