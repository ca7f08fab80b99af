"""The shared durable store: every shard's journal, checkpoint and outbox in one PostgreSQL
database that every node of a cluster reaches, so a shard may run (and restart) on any node.

The same behaviour as the SQLite store (`engine.store.base`), in tables of schema `tracking`
keyed by shard number:
- Each batch is one transaction: its new sessions, its journal rows and the outbox rows it
  owes, sent with COPY, committed before anything is answered or published.
- The journal is append-only; history pages by (tracking id, seq) through an index.
- Recovery reads the shard's checkpoint (kept in the database, rewritten by the checkpointer
  thread on a connection of its own) and then the journal rows after it (`engine.store.recovery`).
- One writer per shard: a store claims its shard number with a session advisory lock on a
  connection of its own, held for its life (a second claimant waits, then is refused), and
  bumps the shard's generation in `shards`. Every commit, checkpoint and purge first reads that
  generation FOR SHARE in its own transaction: a writer that lost its claim (its lock
  connection dropped, and another process claimed the shard) is fenced off instead of writing
  beside the new owner, and a claim waits for an in-flight commit of the old owner to finish.
- The schema is created at start, under a transaction-level advisory lock (several shards
  start at once), and checked: a database written by a newer version, or for another shard
  count, is refused with a clear error.

Driver (measured with `python -m loadtests.pg_driver_bench`): psycopg 3, synchronous, as the
shard's commit path runs on the shard actor's threads, with binary COPY per table. Per journal
row at batches of 500-1000 it cost the shard's process 4-6 us of CPU, as asyncpg's
copy_records_to_table did (executemany: 8-31 us; one INSERT from unnest(arrays): 10-22 us);
asyncpg would need an event loop thread beside the shard's and a hop into it per batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
import psycopg

from engine.domain.integrations import OutboxItem
from engine.domain.outbox_policy import Outcome
from engine.domain.session import (
    ROW_COLUMNS,
    Lifetimes,
    Session,
    SessionRow,
)
from engine.domain.view import HistoryItem
from engine.store.base import (
    CheckpointRow,
    Entry,
    OutboxMark,
    OutboxRow,
    OutboxStore,
    StoreError,
    history_items,
)
from engine.store.recovery import JournalRow, recover

log = logging.getLogger(__name__)

SCHEMA = "tracking"
SCHEMA_VERSION = 2  # 2: journal fix_at and flags (fix times; late fixes, milestones)
# Advisory lock keys (two int4): this class, and the shard number (-1: schema changes).
LOCK_CLASS = 0x74726B31
SCHEMA_LOCK = -1
# How long a new owner waits for a shard's previous owner to let go (its process died: its
# connection closes at once; its node vanished: the server drops it within KEEPALIVE below).
CLAIM_WAIT_S = 60.0
RECLAIM_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 10

# Each column of a session's fixed facts (`ROW_COLUMNS`): its type, and whether it may be null.
_SESSION_TYPES = {
    "tracking_id": ("text", False), "order_id": ("text", False), "rider_id": ("text", False),
    "phone": ("text", True), "dropoff_lat": ("float8", False), "dropoff_lng": ("float8", False),
    "started_at": ("float8", False),
}
_SESSION_COLUMNS = ", ".join(ROW_COLUMNS)
# Rows go in with binary COPY: the cheapest per row for the shard's own CPU (measured).
_SESSION_COPY = ["int4", *(_SESSION_TYPES[c][0] for c in ROW_COLUMNS)]
_JOURNAL_COPY = [
    "int4", "int8", "text", "int4", "text", "text", "float8", "float8", "float8", "float8", "int4",
]
_OUTBOX_COPY = ["int4", "text", "text", "text", "bytea", "text", "float8"]

DDL = f"""
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE shards (
    shard integer PRIMARY KEY, generation bigint NOT NULL,
    holder text NOT NULL, claimed_at timestamptz NOT NULL
);
CREATE TABLE sessions (
    shard integer NOT NULL,
    {", ".join(f"{c} {t}{'' if null else ' NOT NULL'}" for c, (t, null) in
               ((c, _SESSION_TYPES[c]) for c in ROW_COLUMNS))},
    PRIMARY KEY (shard, tracking_id)
);
CREATE TABLE journal (
    shard integer NOT NULL, id bigint NOT NULL,
    tracking_id text NOT NULL, seq integer NOT NULL, status text NOT NULL,
    previous_status text, lat double precision, lng double precision,
    at double precision NOT NULL,
    fix_at double precision, flags integer NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, id)
);
CREATE INDEX journal_history ON journal (tracking_id, seq);
CREATE TABLE checkpoints (
    shard integer PRIMARY KEY, upto bigint NOT NULL, count integer NOT NULL,
    written_at timestamptz NOT NULL
);
CREATE TABLE checkpoint_chunks (
    shard integer NOT NULL, n integer NOT NULL, body bytea NOT NULL, PRIMARY KEY (shard, n)
);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY, shard integer NOT NULL,
    tracking_id text NOT NULL, target text NOT NULL, path text NOT NULL, body bytea NOT NULL,
    idempotency_key text NOT NULL, created_at double precision NOT NULL,
    state text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL DEFAULT 0, last_error text,
    finished_at double precision
);
CREATE INDEX outbox_pending ON outbox (shard, tracking_id, target, id) WHERE state = 'pending';
CREATE INDEX outbox_finished ON outbox (shard, state, finished_at) WHERE state <> 'pending';
"""

Conn = psycopg.Connection[tuple[Any, ...]]


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def connect(url: str, purpose: str) -> Conn:
    """An autocommit connection to the store's schema; StoreError when it cannot be had."""
    try:
        conn = psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
            application_name=f"tracking {purpose} ({socket.gethostname()} pid {os.getpid()})"[:63],
            options=f"-c search_path={SCHEMA}",
            # This side notices a vanished server; the server side is set per session below.
            keepalives=1, keepalives_idle=5, keepalives_interval=3, keepalives_count=3,
        )
    except psycopg.Error as e:
        raise StoreError(f"the store at {redact(url)} cannot be reached: {e}".strip()) from e
    return conn


def ensure_schema(conn: Conn, url: str, shards: int) -> None:
    """Create the schema if it is new; refuse one of a newer version or another shard count."""
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, SCHEMA_LOCK))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            row = conn.execute("SELECT to_regclass('meta')").fetchone()
            if row is None or row[0] is None:
                conn.execute(DDL)
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s), ('shards', %s)",
                    (str(SCHEMA_VERSION), str(shards)),
                )
                return
            meta: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema_version") == "1":  # journal rows of version 1: plain changes
                conn.execute("ALTER TABLE journal ADD COLUMN fix_at double precision,"
                             " ADD COLUMN flags integer NOT NULL DEFAULT 0")  # fmt: skip
                conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'",
                             (str(SCHEMA_VERSION),))  # fmt: skip
                meta["schema_version"] = str(SCHEMA_VERSION)
    except psycopg.Error as e:
        raise StoreError(f"the store at {redact(url)} cannot be used: {e}".strip()) from e
    version = int(meta.get("schema_version", "0"))
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"the store at {redact(url)} has schema version {version}; this version of the"
            f" service reads version {SCHEMA_VERSION}: point TRACKING_STORE_URL at another"
            " database, or run the version that wrote it"
        )
    if int(meta.get("shards", "0")) != shards:
        raise StoreError(
            f"the store at {redact(url)} holds {meta.get('shards')} shards and"
            f" TRACKING_SHARDS is {shards}: sessions live on the shard their id hashes to, so"
            " the count is fixed for the life of a store"
        )


def check_database(url: str, shards: int) -> None:
    """Connect once and check (or create) the schema: StoreError if unusable."""
    conn = connect(url, "check")
    try:
        ensure_schema(conn, url, shards)
    finally:
        conn.close()


class Fenced(StoreError):
    """Another process claimed this store's shard: this one must not write any more."""


class PostgresStore:
    """One shard's side of the shared store (see the module docstring)."""

    def __init__(
        self, url: str, shard: int, shards: int, claim_wait_s: float = CLAIM_WAIT_S
    ) -> None:
        self.url = url
        self.shard = shard
        self.shards = shards
        self.claim_wait_s = claim_wait_s
        self.generation = 0
        self._high = 0
        self._cp_conn: Conn | None = None
        self._lock_conn: Conn | None = None
        self.conn = connect(url, f"shard {shard}")
        try:
            ensure_schema(self.conn, url, shards)
            self._claim(claim_wait_s)
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"shard {shard} cannot claim its place in the store at"
                             f" {redact(url)}: {e}".strip()) from e  # fmt: skip
        except BaseException:
            self.close()
            raise

    # -- the claim ------------------------------------------------------------------------------
    def _claim(self, wait_s: float) -> None:
        """Take the shard's advisory lock (waiting up to `wait_s` for a previous owner to let
        go), then bump its generation: the fencing token of every write after this."""
        if self._lock_conn is not None:
            self._lock_conn.close()
        lock = self._lock_conn = connect(self.url, f"shard {self.shard} lock")
        # The server drops this session (and the lock) within ~15 s of our node vanishing, so
        # the shard's next owner need not wait for the kernel's default (hours). Best effort:
        # a server on a system without these socket options refuses them.
        for setting in ("tcp_keepalives_idle = 5", "tcp_keepalives_interval = 3",
                        "tcp_keepalives_count = 3", "tcp_user_timeout = 15000"):  # fmt: skip
            try:
                lock.execute(f"SET {setting}")
            except psycopg.Error as e:
                log.info("the store's server refused SET %s: %s", setting, e)
        deadline = time.monotonic() + wait_s
        while True:
            row = lock.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self.shard)
            ).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() >= deadline:
                holder = self.conn.execute(
                    "SELECT holder, claimed_at FROM shards WHERE shard = %s", (self.shard,)
                ).fetchone()
                who = f"{holder[0]}, since {holder[1]:%Y-%m-%d %H:%M:%S %Z}" if holder else "?"
                raise StoreError(
                    f"shard {self.shard} of the store at {redact(self.url)} is held by another"
                    f" process ({who}): is another deployment using this database?"
                )
            time.sleep(0.25)
        holder_name = f"{socket.gethostname()} pid {os.getpid()}"
        row = self.conn.execute(
            "INSERT INTO shards VALUES (%s, 1, %s, now()) ON CONFLICT (shard) DO UPDATE"
            " SET generation = shards.generation + 1, holder = EXCLUDED.holder,"
            " claimed_at = EXCLUDED.claimed_at RETURNING generation",
            (self.shard, holder_name),
        ).fetchone()
        assert row is not None
        self.generation = int(row[0])
        log.info("claimed shard %d (generation %d)", self.shard, self.generation)

    @contextlib.contextmanager
    def _fenced(self, conn: Conn) -> Iterator[None]:
        """A transaction that writes only while this store still owns the shard: it reads the
        shard's generation FOR SHARE first (so a new claim also waits for it to end). BEGIN
        and that read go in one round trip (no parameters: the simple query protocol)."""
        try:
            cur = conn.execute(
                f"BEGIN; SELECT generation FROM shards WHERE shard = {int(self.shard)} FOR SHARE"
            )
            cur.nextset()
            row = cur.fetchone()
            if row is None or int(row[0]) != self.generation:
                raise Fenced(
                    f"shard {self.shard} was claimed by another process (generation"
                    f" {row[0] if row else '?'}, this one holds {self.generation}); not writing"
                )
            yield
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _still_claimed(self) -> bool:
        lock = self._lock_conn
        if lock is None or lock.closed:
            return False
        try:
            row = lock.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2 AND granted",
                (LOCK_CLASS, self.shard),
            ).fetchone()
        except psycopg.Error:
            return False
        return row is not None

    def _reconnect_if_needed(self) -> None:
        """After a failure: a new connection if the old one broke, a new claim if it was lost."""
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = connect(self.url, f"shard {self.shard}")
        if not self._still_claimed():
            log.warning("shard %d lost its claim on the store; claiming it again", self.shard)
            # Briefly: this runs under the shard's lock, and an owner that took the shard
            # meanwhile keeps it (this process is the one that must stop).
            self._claim(min(self.claim_wait_s, RECLAIM_WAIT_S))

    # -- recovery -------------------------------------------------------------------------------
    def _read_checkpoint(self) -> tuple[int, list[CheckpointRow]] | None:
        c = self.conn
        head = c.execute(
            "SELECT upto, count FROM checkpoints WHERE shard = %s", (self.shard,)
        ).fetchone()
        if head is None:
            return None
        rows: list[CheckpointRow] = []
        try:
            for (body,) in c.execute(
                "SELECT body FROM checkpoint_chunks WHERE shard = %s ORDER BY n", (self.shard,)
            ):
                rows.extend(tuple(r) for r in orjson.loads(body))
        except (ValueError, TypeError) as e:
            log.warning("ignoring the unreadable checkpoint of shard %d: %s", self.shard, e)
            return None
        if len(rows) != head[1]:
            log.warning("ignoring the incomplete checkpoint of shard %d", self.shard)
            return None
        return int(head[0]), rows

    def load_sessions(self, lt: Lifetimes) -> list[Session]:
        try:
            return self._load_sessions(lt)
        except psycopg.Error as e:
            raise StoreError(f"shard {self.shard} cannot load from the store at"
                             f" {redact(self.url)}: {e}".strip()) from e  # fmt: skip

    def _load_sessions(self, lt: Lifetimes) -> list[Session]:
        self._reconnect_if_needed()
        c = self.conn
        facts: dict[str, SessionRow] = {
            r[0]: r for r in c.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE shard = %s", (self.shard,)
            )
        }
        top_row = c.execute(
            "SELECT COALESCE(MAX(id), 0) FROM journal WHERE shard = %s", (self.shard,)
        ).fetchone()
        top = int(top_row[0]) if top_row else 0
        sessions, self._high = recover(
            facts, top, self._read_checkpoint(), self._rows_after, lt,
            f"of shard {self.shard} in the store",
        )
        return sessions

    def _rows_after(self, upto: int) -> Iterator[JournalRow]:
        # A server-side cursor: a long journal streams instead of arriving all at once.
        with self.conn.transaction(), self.conn.cursor(name="replay") as cur:
            cur.itersize = 20_000
            cur.execute(
                "SELECT id, tracking_id, seq, status, lat, lng, at, fix_at, flags FROM journal"
                " WHERE shard = %s AND id > %s ORDER BY id", (self.shard, upto),
            )
            yield from cur

    def journal_high(self) -> int:
        return self._high

    # -- writing --------------------------------------------------------------------------------
    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        rows = [s.to_row() for s in created]
        if not rows and not entries and not outbox:
            return
        shard = self.shard
        c = self.conn
        with self._fenced(c):
            cur = c.cursor()
            if rows:
                with cur.copy(
                    f"COPY sessions (shard, {_SESSION_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as cp:
                    cp.set_types(_SESSION_COPY)
                    for r in rows:
                        cp.write_row((shard, *r))
            if entries:
                with cur.copy(
                    "COPY journal (shard, id, tracking_id, seq, status, previous_status, lat, lng,"
                    " at, fix_at, flags) FROM STDIN (FORMAT BINARY)"
                ) as cp:
                    cp.set_types(_JOURNAL_COPY)
                    for jid, _, ch in entries:
                        cp.write_row((
                            shard, jid, ch.tracking_id, ch.seq, ch.status.value,
                            ch.previous_status.value if ch.previous_status else None,
                            ch.lat, ch.lng, ch.at, ch.fix_at, ch.flags,
                        ))
            if outbox:
                with cur.copy(
                    "COPY outbox (shard, tracking_id, target, path, body, idempotency_key,"
                    " created_at) FROM STDIN (FORMAT BINARY)"
                ) as cp:
                    cp.set_types(_OUTBOX_COPY)
                    for o in outbox:
                        cp.write_row((shard, o.tracking_id, o.target, o.path, o.body,
                                      o.idempotency_key, o.created_at))
        if entries:
            self._high = max(self._high, entries[-1][0])

    def write_checkpoint(self, upto: int, count: int, chunks: Sequence[bytes]) -> None:
        # Its own connection: the checkpointer thread writes while calls commit on `conn`.
        if self._cp_conn is None or self._cp_conn.closed or self._cp_conn.broken:
            self._cp_conn = connect(self.url, f"shard {self.shard} checkpoint")
        c = self._cp_conn
        with self._fenced(c):
            c.execute("DELETE FROM checkpoint_chunks WHERE shard = %s", (self.shard,))
            with c.cursor().copy(
                "COPY checkpoint_chunks (shard, n, body) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int4", "int4", "bytea"])
                for n, body in enumerate(chunks):
                    cp.write_row((self.shard, n, body))
            c.execute(
                "INSERT INTO checkpoints VALUES (%s, %s, %s, now()) ON CONFLICT (shard) DO UPDATE"
                " SET upto = EXCLUDED.upto, count = EXCLUDED.count, written_at = now()",
                (self.shard, upto, count),
            )

    # -- reading and forgetting -----------------------------------------------------------------
    def history(self, head: int, since_seq: int, limit: int) -> list[HistoryItem]:
        if head <= 0:
            return []
        cur = self.conn.execute(
            "SELECT seq, status, previous_status, lat, lng, at, fix_at, flags FROM journal"
            " WHERE tracking_id = (SELECT tracking_id FROM journal WHERE shard = %s AND id = %s)"
            " AND seq > %s ORDER BY seq LIMIT %s",
            (self.shard, head, since_seq, limit),
        )
        return history_items(cur)

    def purge(self, sessions: Sequence[tuple[str, int]]) -> None:
        if not sessions:
            return
        ids = [t for t, _ in sessions]
        c = self.conn
        with self._fenced(c):
            c.execute("DELETE FROM sessions WHERE shard = %s AND tracking_id = ANY(%s)",
                      (self.shard, ids))  # fmt: skip
            c.execute("DELETE FROM journal WHERE tracking_id = ANY(%s) AND shard = %s",
                      (ids, self.shard))  # fmt: skip

    def close(self) -> None:
        for conn in (self._cp_conn, self.conn, self._lock_conn):  # the lock goes last
            if conn is not None:
                conn.close()


# -- the dispatcher's side ------------------------------------------------------------------------


class _Shared:
    """One connection for every shard's outbox (the dispatcher uses them from one thread),
    reopened after it broke."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.users = 0
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    def get(self) -> Conn:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                self._conn = connect(self.url, "outbox")
            return self._conn

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0 and self._conn is not None:
                self._conn.close()
                self._conn = None


def open_outboxes(url: str, shards: int) -> list[OutboxStore]:
    """Every shard's outbox in the store at `url`, in shard order, sharing one connection."""
    shared = _Shared(url)
    shared.users += 1
    try:
        ensure_schema(shared.get(), url, shards)
    finally:
        shared.release()  # closes it if the schema was refused
    return [PostgresOutbox(shared, i) for i in range(shards)]


class PostgresOutbox:
    """The dispatcher's side of one shard's outbox (`engine.store.base.OutboxStore`)."""

    def __init__(self, shared: _Shared, shard: int) -> None:
        self.shared = shared
        self.shard = shard
        shared.users += 1

    def due_heads(self, now: float, limit: int = 200) -> list[OutboxRow]:
        cur = self.shared.get().execute(
            "SELECT o.id, o.tracking_id, o.target, o.path, o.body, o.idempotency_key,"
            " o.attempts, o.next_attempt_at FROM outbox o"
            " JOIN (SELECT MIN(id) AS id FROM outbox WHERE shard = %s AND state = 'pending'"
            "       GROUP BY tracking_id, target) h ON h.id = o.id"
            " WHERE o.next_attempt_at <= %s ORDER BY o.id LIMIT %s",
            (self.shard, now, limit),
        )
        return [OutboxRow(*r) for r in cur]

    def mark(self, marks: Sequence[OutboxMark]) -> None:
        if not marks:
            return
        done = [(m.at, m.row_id) for m in marks if m.outcome is Outcome.DONE]
        retry = [(m.next_at, (m.error or "")[:500], m.row_id)
                 for m in marks if m.outcome is Outcome.RETRY]  # fmt: skip
        dead = [(m.at, (m.error or "")[:500], m.row_id)
                for m in marks if m.outcome is Outcome.DEAD]  # fmt: skip
        c = self.shared.get()
        with c.transaction(), c.cursor() as cur:
            if done:
                cur.executemany(
                    "UPDATE outbox SET state = 'done', attempts = attempts + 1, finished_at = %s"
                    " WHERE id = %s", done,
                )
            if retry:
                cur.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = %s,"
                    " last_error = %s WHERE id = %s", retry,
                )
            if dead:
                cur.executemany(
                    "UPDATE outbox SET state = 'dead', attempts = attempts + 1, finished_at = %s,"
                    " last_error = %s WHERE id = %s", dead,
                )

    def counts(self) -> dict[str, int]:
        c = self.shared.get()
        out = {"pending": 0, "done": 0, "dead": 0}
        for state, n in c.execute(
            "SELECT state, COUNT(*) FROM outbox WHERE shard = %s GROUP BY state", (self.shard,)
        ):
            out[state] = int(n)
        row = c.execute(
            "SELECT COALESCE(SUM(attempts - 1), 0) FROM outbox WHERE shard = %s AND attempts > 1",
            (self.shard,),
        ).fetchone()
        out["retries"] = int(row[0]) if row else 0
        return out

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        cur = self.shared.get().execute(
            "SELECT id, tracking_id, target, path, body, idempotency_key, attempts, last_error,"
            " created_at, finished_at FROM outbox WHERE shard = %s AND state = 'dead'"
            " ORDER BY id DESC LIMIT %s",
            (self.shard, limit),
        )
        return [
            {"id": i, "tracking_id": t, "target": tg, "path": p, "body": bytes(b).decode(),
             "idempotency_key": k, "attempts": a, "last_error": e, "created_at": int(c),
             "finished_at": int(f) if f else None}
            for i, t, tg, p, b, k, a, e, c, f in cur
        ]

    def prune_done(self, older_than: float) -> None:
        self.shared.get().execute(
            "DELETE FROM outbox WHERE shard = %s AND state = 'done' AND finished_at < %s",
            (self.shard, older_than),
        )

    def close(self) -> None:
        self.shared.release()
