"""Version 4 of the store file: fix times and change flags in the journal. A version 3 file is
migrated in place, its rows read as ordinary changes, and new rows carry the new columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.domain.session import LATE, Rules
from engine.domain.status import Status
from engine.store.sqlite import SCHEMA_VERSION, SqliteOutbox, SqliteStore, shard_db_path
from tests.unit.test_store_contract import LT, T0, Ids, history_item, session, starts, walk

V3_SCHEMA = """
CREATE TABLE sessions (tracking_id TEXT PRIMARY KEY, order_id, rider_id, phone, dropoff_lat,
    dropoff_lng, started_at) WITHOUT ROWID;
CREATE TABLE journal (id INTEGER PRIMARY KEY, tracking_id TEXT NOT NULL, seq INTEGER NOT NULL,
    status TEXT NOT NULL, previous_status TEXT, lat REAL, lng REAL, at REAL NOT NULL,
    prev INTEGER NOT NULL DEFAULT 0);
CREATE TABLE marks (tracking_id TEXT NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY (tracking_id, seq)) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('store_id', 'v3-file');
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, tracking_id TEXT NOT NULL,
    target TEXT NOT NULL, path TEXT NOT NULL, body BLOB NOT NULL, idempotency_key TEXT NOT NULL,
    created_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, finished_at REAL);
PRAGMA user_version = 3;
"""


def test_a_version_3_file_is_migrated_and_extended(tmp_path: Path) -> None:
    db = shard_db_path(tmp_path, 0)
    a = session("TRK-a", "ORD-a")
    changes = walk(a, [None, Status.PICKED_UP])
    conn = sqlite3.connect(db)
    conn.executescript(V3_SCHEMA)
    conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", a.to_row())
    conn.executemany(
        "INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(i + 1, c.tracking_id, c.seq, c.status.value,
          c.previous_status.value if c.previous_status else None, c.lat, c.lng, c.at, i)
         for i, c in enumerate(changes)],
    )  # fmt: skip
    conn.commit()
    conn.close()
    outbox = SqliteOutbox(db)  # the dispatcher may open it first: it migrates then
    store = SqliteStore(db)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        [loaded] = store.load_sessions(LT)
        assert loaded.view() == a.view()
        assert store.history(loaded.head, 0, 10) == [history_item(c) for c in changes]
        # New rows: a device-time fix, then a late one; the current location is the first.
        now = T0 + 100
        first = loaded.report(5.70, -0.19, None, now, LT, Rules(), now - 20).change
        late = loaded.report(5.7001, -0.19, None, now, LT, Rules(), now - 30).change
        assert first is not None
        assert late is not None
        assert late.flags == LATE
        store.commit([], Ids(10)([(loaded, first), (loaded, late)]), [])
        [again] = store.load_sessions(LT)
        assert again.view() == loaded.view()
        assert again.view().current_location is not None
        assert again.view().current_location.timestamp == int(now - 20)
        items = store.history(again.head, 3, 10)
        assert [(i.seq, i.recorded_at, i.late) for i in items] == [
            (4, int(now - 20), False), (5, int(now - 30), True),
        ]  # fmt: skip
    finally:
        store.close()
        outbox.close()


def test_a_new_file_is_version_4(tmp_path: Path) -> None:
    store = SqliteStore(shard_db_path(tmp_path, 0))
    try:
        store.commit([session("TRK-x")], Ids()(starts(session("TRK-x"))), [])
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 4
        cols = [r[1] for r in store.conn.execute("PRAGMA table_info(journal)")]
        assert cols[-2:] == ["fix_at", "flags"]
    finally:
        store.close()
