"""The embedded durable store: one SQLite file per shard holding the journal and the outbox.

It implements `engine.store.base`'s interfaces for one box (no server to run). Every
batch a shard accepts is committed in one transaction (one fsync: group commit) before any of it
is acknowledged; the outbox rows of that batch are in the same transaction.

The journal is append-only and is also the history: each row carries the journal id of its
session's previous change (`prev`), so a session's history is a walk back along that chain from
its newest row (the shard keeps that id in memory). An index by session would be written at a
random page per change; when it was tried, that (or moving rows into such an index later) cost
several times the append per update, and was the largest cost of the journal. Recovery reads
a checkpoint (every session's state as of journal id W, written by a background thread into its
own file) and replays the journal rows after W.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.domain.integrations import OutboxItem
from engine.domain.outbox_policy import Outcome
from engine.domain.session import (
    ROW_COLUMNS,
    Lifetimes,
    Session,
)
from engine.domain.view import HistoryItem
from engine.store.base import (
    CheckpointRow,
    Entry,
    OutboxMark,
    OutboxRow,
    StoreError,
    history_items,
)
from engine.store.recovery import JournalRow, recover

log = logging.getLogger(__name__)

# The journal and its marks, created by SCHEMA and by the migration from version 2. `fix_at` is
# the fix's device time (NULL: `at`), `flags` what else the change is (engine.domain.session:
# LATE, APPROACHING, ARRIVED); both came with version 4.
_JOURNAL = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    tracking_id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
    previous_status TEXT, lat REAL, lng REAL, at REAL NOT NULL,
    prev INTEGER NOT NULL DEFAULT 0,
    fix_at REAL, flags INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS marks (
    tracking_id TEXT NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY (tracking_id, seq)
) WITHOUT ROWID;
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    {", ".join(c + (" TEXT PRIMARY KEY" if c == "tracking_id" else "") for c in ROW_COLUMNS)}
) WITHOUT ROWID;
{_JOURNAL}
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('store_id', lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tracking_id TEXT NOT NULL, target TEXT NOT NULL, path TEXT NOT NULL, body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL, created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT, finished_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, id);
"""


def shard_db_path(data_dir: Path, shard: int) -> Path:
    return data_dir / f"shard-{shard:03d}.sqlite3"


def checkpoint_path(db: Path) -> Path:
    return db.with_suffix(".checkpoint")


SCHEMA_VERSION = 4
# Every MARK_EVERY-th change of a session is also indexed by (session, seq), so reading a page
# of history walks at most this many rows more than the page, however long the session.
MARK_EVERY = 256


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Version 2 kept history in a table indexed by session; fold it into the chained journal."""
    try:
        conn.executescript(  # one transaction: executescript would commit an open one first
            f"""
            BEGIN IMMEDIATE;
            CREATE TEMP TABLE v2_changes AS
              SELECT ROW_NUMBER() OVER (ORDER BY at, tracking_id, seq) AS id, * FROM (
                SELECT tracking_id, seq, status, previous_status, lat, lng, at FROM history
                UNION SELECT tracking_id, seq, status, previous_status, lat, lng, at FROM journal
              );
            DROP TABLE journal;
            DROP TABLE history;
            {_JOURNAL}
            INSERT INTO journal (id, tracking_id, seq, status, previous_status, lat, lng, at, prev)
              SELECT id, tracking_id, seq, status, previous_status, lat, lng, at,
                     COALESCE(LAG(id) OVER (PARTITION BY tracking_id ORDER BY seq), 0)
              FROM v2_changes ORDER BY id;
            DROP TABLE v2_changes;
            INSERT INTO marks SELECT tracking_id, seq, id FROM journal WHERE seq % {MARK_EVERY} = 0;
            PRAGMA user_version = {SCHEMA_VERSION};
            COMMIT;
            """
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Version 3's journal had no fix times nor flags: every old row is an ordinary change.
    (The shard and the dispatcher open a file at once: whichever locks first migrates it.)"""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 3:
            conn.execute("ALTER TABLE journal ADD COLUMN fix_at REAL")
            conn.execute("ALTER TABLE journal ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file written by an incompatible version instead of failing on every write."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(sessions)"))
    if columns not in ((), ROW_COLUMNS) or version not in (0, 2, 3, SCHEMA_VERSION):
        raise StoreError(
            f"store file {path} has schema version {version} with session columns "
            f"{len(columns)}, this version needs {SCHEMA_VERSION} with {len(ROW_COLUMNS)}: "
            "point TRACKING_DATA_DIR at a new directory or move the old files away"
        )
    # Version 0 with a history table: written before versions were kept (the version 2 layout).
    # Without one it is a new file that another process is creating right now: not migrated.
    has_history = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'"
    ).fetchone()
    if version == 2 or (version == 0 and columns == ROW_COLUMNS and has_history):
        _migrate_v2(conn)
    elif version == 3:
        _migrate_v3(conn)


def connect(path: Path, check: bool = False) -> sqlite3.Connection:
    """Open a store file, creating it; raise StoreError with a clear message when unusable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if f.exists() and not os.access(f, os.W_OK):
                raise StoreError(_read_only(f, "no write access"))
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        if check:
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise StoreError(f"store file {path} is corrupt: {result}")
        _check_schema(conn, path)
        conn.executescript(SCHEMA)
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return conn
    except sqlite3.DatabaseError as e:
        if "readonly" in str(e) or "read-only" in str(e):
            raise StoreError(_read_only(path, str(e))) from e
        raise StoreError(f"store file {path} cannot be used: {e}") from e
    except OSError as e:
        raise StoreError(f"data directory {path.parent} cannot be used: {e}") from e


def _read_only(path: Path, why: str) -> str:
    return (
        f"store file {path} is read-only ({why}): every write would fail; make it (and the"
        " data directory) writable for the service's user, or point TRACKING_DATA_DIR elsewhere"
    )


_HISTORY = """
WITH RECURSIVE chain(id, prev, seq) AS (
    SELECT id, prev, seq FROM journal WHERE id = ?1
    UNION ALL
    SELECT j.id, j.prev, j.seq FROM journal j JOIN chain c ON j.id = c.prev WHERE c.seq > ?2 + 1
)
SELECT j.seq, j.status, j.previous_status, j.lat, j.lng, j.at, j.fix_at, j.flags
FROM chain c JOIN journal j ON j.id = c.id WHERE c.seq > ?2 ORDER BY c.seq LIMIT ?3
"""

_MARK = """
SELECT m.id FROM marks m
WHERE m.tracking_id = (SELECT tracking_id FROM journal WHERE id = ?1) AND m.seq >= ?2 AND m.id < ?1
ORDER BY m.seq LIMIT 1
"""

_CHAIN = """
WITH RECURSIVE chain(id) AS (
    SELECT ?1 UNION ALL SELECT j.prev FROM journal j JOIN chain c ON j.id = c.id WHERE j.prev > 0
)
DELETE FROM journal WHERE id IN chain
"""


class SqliteStore:
    """The journal of one shard in `shard-NNN.sqlite3` under the data dir (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = checkpoint_path(path)
        self.conn = connect(path)
        self.store_id: str = self.conn.execute(
            "SELECT value FROM meta WHERE key = 'store_id'"
        ).fetchone()[0]
        self._high = 0

    # -- recovery -------------------------------------------------------------------------------
    def _read_checkpoint(self) -> tuple[int, list[CheckpointRow]] | None:
        """(upto, rows) of this file's checkpoint, or None when there is no usable one."""
        try:
            with open(self.checkpoint, "rb") as f:
                header = orjson.loads(f.readline())
                if header.get("store_id") != self.store_id or header.get("format") != 1:
                    log.warning("ignoring checkpoint %s: it belongs to another store file",
                                self.checkpoint)
                    return None
                rows: list[CheckpointRow] = []
                for line in f:
                    rows.extend(orjson.loads(line))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring unreadable checkpoint %s: %s", self.checkpoint, e)
            return None
        if len(rows) != header.get("count"):
            log.warning("ignoring truncated checkpoint %s", self.checkpoint)
            return None
        return int(header["upto"]), rows

    def load_sessions(self, lt: Lifetimes) -> list[Session]:
        c = self.conn
        facts = {r[0]: r for r in c.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM sessions")}
        top = c.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0]

        def rows_after(upto: int) -> Iterable[JournalRow]:
            return c.execute(
                "SELECT id, tracking_id, seq, status, lat, lng, at, fix_at, flags FROM journal"
                " WHERE id > ? ORDER BY id", (upto,),
            )

        sessions, self._high = recover(
            facts, top, self._read_checkpoint(), rows_after, lt, str(self.checkpoint)
        )
        return sessions

    def journal_high(self) -> int:
        return self._high

    # -- writing --------------------------------------------------------------------------------
    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        rows = [s.to_row() for s in created]
        if not rows and not entries and not outbox:
            return
        marks = ", ".join("?" * len(ROW_COLUMNS))
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                c.executemany(f"INSERT INTO sessions VALUES ({marks})", rows)
            c.executemany(
                "INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (jid, ch.tracking_id, ch.seq, ch.status.value,
                     ch.previous_status.value if ch.previous_status else None,
                     ch.lat, ch.lng, ch.at, prev, ch.fix_at, ch.flags)
                    for jid, prev, ch in entries
                ],
            )
            indexed = [(ch.tracking_id, ch.seq, jid) for jid, _, ch in entries
                       if ch.seq % MARK_EVERY == 0]  # fmt: skip
            if indexed:
                c.executemany("INSERT INTO marks VALUES (?, ?, ?)", indexed)
            if outbox:
                c.executemany(
                    "INSERT INTO outbox (tracking_id, target, path, body, idempotency_key,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [(o.tracking_id, o.target, o.path, o.body, o.idempotency_key, o.created_at)
                     for o in outbox],
                )
            c.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk at COMMIT): a second
            # ROLLBACK would raise and hide the reason.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        if entries:
            self._high = max(self._high, entries[-1][0])

    def write_checkpoint(self, upto: int, count: int, chunks: Sequence[bytes]) -> None:
        header = orjson.dumps(
            {"format": 1, "store_id": self.store_id, "upto": upto, "count": count}
        )
        tmp = self.checkpoint.with_suffix(".checkpoint.tmp")
        with open(tmp, "wb") as f:
            f.write(header + b"\n")
            for ch in chunks:
                f.write(ch + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint)
        dir_fd = os.open(self.checkpoint.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- reading and forgetting -----------------------------------------------------------------
    def history(self, head: int, since_seq: int, limit: int) -> list[HistoryItem]:
        if head <= 0:
            return []
        # Start from the session's first mark past the page, if any, instead of its newest row.
        mark = self.conn.execute(_MARK, (head, since_seq + limit)).fetchone()
        cur = self.conn.execute(_HISTORY, (mark[0] if mark else head, since_seq, limit))
        return history_items(cur)

    def purge(self, sessions: Sequence[tuple[str, int]]) -> None:
        if not sessions:
            return
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            ids = [(t,) for t, _ in sessions]
            c.executemany("DELETE FROM sessions WHERE tracking_id = ?", ids)
            c.executemany("DELETE FROM marks WHERE tracking_id = ?", ids)
            for _, head in sessions:
                if head > 0:
                    c.execute(_CHAIN, (head,))
            c.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk at COMMIT): a second
            # ROLLBACK would raise and hide the reason.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()


class SqliteOutbox:
    """The dispatcher's side of one shard file's outbox (`engine.store.base.OutboxStore`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect(path)

    def due_heads(self, now: float, limit: int = 200) -> list[OutboxRow]:
        cur = self.conn.execute(
            "SELECT o.id, o.tracking_id, o.target, o.path, o.body, o.idempotency_key,"
            " o.attempts, o.next_attempt_at FROM outbox o"
            " JOIN (SELECT MIN(id) AS id FROM outbox WHERE state = 'pending'"
            "       GROUP BY tracking_id, target) h ON h.id = o.id"
            " WHERE o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
            (now, limit),
        )
        return [OutboxRow(*r) for r in cur]

    def mark(self, marks: Sequence[OutboxMark]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for m in marks:
                if m.outcome is Outcome.DONE:
                    c.execute(
                        "UPDATE outbox SET state = 'done', attempts = attempts + 1,"
                        " finished_at = ? WHERE id = ?", (m.at, m.row_id),
                    )
                elif m.outcome is Outcome.RETRY:
                    c.execute(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                        " last_error = ? WHERE id = ?",
                        (m.next_at, (m.error or "")[:500], m.row_id),
                    )
                else:
                    c.execute(
                        "UPDATE outbox SET state = 'dead', attempts = attempts + 1,"
                        " finished_at = ?, last_error = ? WHERE id = ?",
                        (m.at, (m.error or "")[:500], m.row_id),
                    )
            c.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk at COMMIT): a second
            # ROLLBACK would raise and hide the reason.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "done": 0, "dead": 0}
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            out[state] = n
        row = self.conn.execute(
            "SELECT COALESCE(SUM(attempts - 1), 0) FROM outbox WHERE attempts > 1"
        ).fetchone()
        out["retries"] = int(row[0]) if row else 0
        return out

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT id, tracking_id, target, path, body, idempotency_key, attempts, last_error,"
            " created_at, finished_at FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            {"id": i, "tracking_id": t, "target": tg, "path": p, "body": b.decode(),
             "idempotency_key": k, "attempts": a, "last_error": e, "created_at": int(c),
             "finished_at": int(f) if f else None}
            for i, t, tg, p, b, k, a, e, c, f in cur
        ]

    def prune_done(self, older_than: float) -> None:
        self.conn.execute(
            "DELETE FROM outbox WHERE state = 'done' AND finished_at < ?", (older_than,)
        )

    def close(self) -> None:
        self.conn.close()


def check_file(path: Path) -> None:
    """Open a shard file with an integrity check (StoreError if unusable), then close it."""
    connect(path, check=True).close()
