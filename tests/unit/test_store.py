"""The embedded SQLite store's own behaviour: one file per shard, its checkpoint file, the marks
that bound a history walk, migrations, and unusable data dirs. What every store does is in
test_store_contract.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.domain.session import Session
from engine.domain.status import Status
from engine.runtime import Deployment
from engine.settings import Settings
from engine.store import StoreSpec, check_data_dir, check_store
from engine.store.base import NullStore, StoreError
from engine.store.sqlite import (
    SCHEMA,
    SCHEMA_VERSION,
    SqliteStore,
    check_file,
    checkpoint_path,
    connect,
    shard_db_path,
)
from tests.unit.test_store_contract import (
    LT,
    Ids,
    checkpoint,
    history_item,
    item,
    of,
    session,
    starts,
    three_sessions,
    walk,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return shard_db_path(tmp_path, 0)


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db)
    yield s
    s.close()


def test_file_per_shard_naming(tmp_path: Path) -> None:
    assert shard_db_path(tmp_path, 7) == tmp_path / "shard-007.sqlite3"
    assert shard_db_path(tmp_path, 0) != shard_db_path(tmp_path, 1)


def test_null_store_keeps_nothing() -> None:
    s = NullStore()
    one = session("TRK-1")
    s.commit([one], Ids()(starts(one)), [item("TRK-1", 1)])
    assert s.load_sessions(LT) == []
    assert s.journal_high() == 0
    assert s.history(1, 0, 10) == []
    s.purge([("TRK-1", 1)])
    s.write_checkpoint(1, 0, [])
    s.close()


def restored(db: Path) -> dict[str, Session]:
    reopened = SqliteStore(db)
    try:
        return {s.tracking_id: s for s in reopened.load_sessions(LT)}
    finally:
        reopened.close()


def test_an_unusable_checkpoint_file_is_ignored(db: Path, store: SqliteStore) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    bad_checkpoints = [
        lambda: checkpoint_path(db).write_bytes(b'{"format": 1, "store_id": "other", "upto": 1,'
                                                b' "count": 1}\n[]\n'),
        lambda: checkpoint_path(db).write_bytes(b"not json at all"),
        lambda: checkpoint_path(db).write_bytes(
            checkpoint_path(db).read_bytes().rsplit(b"\n", 2)[0]),  # truncated
    ]
    for write_bad in bad_checkpoints:
        checkpoint(store, ids.next - 1, a, b, c)
        write_bad()
        assert {t: s.view() for t, s in restored(db).items()} == expected


def test_a_long_history_is_marked_every_256_changes(store: SqliteStore) -> None:
    ids = Ids()
    s = session("TRK-long")
    store.commit([s], ids(starts(s)), [])
    for _ in range(10):
        store.commit([], ids(of(s, walk(s, [None] * 200)[1:])), [])
    # Every 256th change is indexed: a page starts its walk at most that far past its end.
    marks = store.conn.execute("SELECT seq FROM marks ORDER BY seq").fetchall()
    assert [m[0] for m in marks] == [256 * k for k in range(1, 8)]
    assert [x.seq for x in store.history(s.head, 255, 2)] == [256, 257]
    store.purge([(s.tracking_id, s.head)])
    assert store.conn.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0


V2_SCHEMA = """
CREATE TABLE sessions (tracking_id TEXT PRIMARY KEY, order_id, rider_id, phone, dropoff_lat,
    dropoff_lng, started_at) WITHOUT ROWID;
CREATE TABLE history (tracking_id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
    previous_status TEXT, lat REAL, lng REAL, at REAL NOT NULL, PRIMARY KEY (tracking_id, seq)
) WITHOUT ROWID;
CREATE TABLE journal (id INTEGER PRIMARY KEY, tracking_id TEXT NOT NULL, seq INTEGER NOT NULL,
    status TEXT NOT NULL, previous_status TEXT, lat REAL, lng REAL, at REAL NOT NULL);
PRAGMA user_version = 2;
"""


def test_a_version_2_file_is_migrated(db: Path) -> None:
    """Version 2 kept history in its own table, partly still in the journal."""
    a, b = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b")
    ca = walk(a, [None, Status.PICKED_UP, None])
    cb = walk(b, [Status.PICKED_UP])
    row = lambda c: (c.tracking_id, c.seq, c.status.value,  # noqa: E731
                     c.previous_status.value if c.previous_status else None, c.lat, c.lng, c.at)
    conn = sqlite3.connect(db)
    conn.executescript(V2_SCHEMA)
    conn.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [a.to_row(), b.to_row()])  # fmt: skip
    conn.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [row(c) for c in ca[:3] + cb[:1]])  # fmt: skip
    conn.executemany("INSERT INTO journal (tracking_id, seq, status, previous_status, lat, lng,"
                     " at) VALUES (?, ?, ?, ?, ?, ?, ?)", [row(c) for c in ca[2:] + cb[1:]])
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    try:
        loaded = {s.tracking_id: s for s in store.load_sessions(LT)}
        assert {t: s.view() for t, s in loaded.items()} == {"TRK-a": a.view(), "TRK-b": b.view()}
        assert store.history(loaded["TRK-a"].head, 0, 100) == [history_item(c) for c in ca]
        assert store.history(loaded["TRK-b"].head, 0, 100) == [history_item(c) for c in cb]
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()


def test_a_new_file_caught_mid_creation_is_not_migrated(db: Path) -> None:
    """Another process has created the tables but not yet stamped the version."""
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)  # user_version still 0
    conn.close()
    store = SqliteStore(db)
    try:
        a = session("TRK-a", "ORD-a")
        store.commit([a], Ids()(starts(a)), [])
        assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-a"]
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()


def test_a_file_of_an_unknown_version_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(V2_SCHEMA.replace("user_version = 2", "user_version = 9"))
    conn.close()
    with pytest.raises(StoreError, match="schema version 9"):
        SqliteStore(db)


# -- unusable data directories ---------------------------------------------------------------


def test_a_corrupt_shard_file_is_reported_by_name(tmp_path: Path) -> None:
    bad = shard_db_path(tmp_path, 1)
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="shard-001"):
        connect(bad, check=True)
    with pytest.raises(StoreError, match="shard-001"):
        check_file(bad)
    check_data_dir(tmp_path)
    check_store(StoreSpec(tmp_path, 2), 0)
    with pytest.raises(StoreError, match="shard-001"):
        check_store(StoreSpec(tmp_path, 2), 1)
    # What `tracking serve` runs before anything starts (the local runtime needs no Ray).
    with pytest.raises(StoreError, match="shard-001"):
        Deployment(Settings(data_dir=tmp_path, engine="local", shards=2)).start()


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "plain-file"
    f.write_text("x")
    with pytest.raises(StoreError, match="plain-file"):
        check_data_dir(f)
    with pytest.raises(StoreError, match="plain-file"):
        Deployment(Settings(data_dir=f, engine="local", shards=1)).start()
    with pytest.raises(StoreError):
        SqliteStore(f / "shard-000.sqlite3")


def test_the_startup_checks_create_the_shard_files(tmp_path: Path) -> None:
    data = tmp_path / "new" / "dir"
    check_data_dir(data)
    assert data.is_dir()
    for i in range(3):
        check_store(StoreSpec(data, 3), i)
    assert sorted(p.name for p in data.glob("shard-*.sqlite3")) == [
        "shard-000.sqlite3", "shard-001.sqlite3", "shard-002.sqlite3",
    ]  # fmt: skip
    other = tmp_path / "other"
    assert Deployment(Settings(data_dir=other, engine="local", shards=2)).start() == {}
    assert sorted(p.name for p in other.glob("shard-*.sqlite3")) == [
        "shard-000.sqlite3", "shard-001.sqlite3",
    ]  # fmt: skip


def test_without_a_journal_no_file_is_opened(tmp_path: Path) -> None:
    spec = StoreSpec(tmp_path, 2, journal=False)
    check_store(spec, 0)
    assert list(tmp_path.iterdir()) == []
