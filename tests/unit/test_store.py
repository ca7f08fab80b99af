"""The embedded store: journal (which is also the history), checkpoint and outbox, per shard."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.clock import ManualClock
from engine.domain.integrations import NOTIFICATION, ORDER, OutboxItem
from engine.domain.outbox_policy import Outcome
from engine.domain.session import Change, Lifetimes, Session
from engine.domain.status import Status
from engine.domain.view import HistoryItem
from engine.protocol import Ok, Start, Update
from engine.runtime import Deployment
from engine.settings import Settings
from engine.shard import Shard, ShardConfig
from engine.store import StoreSpec, check_data_dir, check_store
from engine.store.base import Entry, NullStore, OutboxMark, StoreError
from engine.store.sqlite import (
    SCHEMA,
    SCHEMA_VERSION,
    SqliteOutbox,
    SqliteStore,
    check_file,
    checkpoint_path,
    connect,
    shard_db_path,
)

LT = Lifetimes(session_ttl_s=1000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
DROP = (5.6037, -0.1869)
T0 = 1_704_067_800.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return shard_db_path(tmp_path, 0)


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db)
    yield s
    s.close()


def session(tid: str, order: str = "ORD-1", rider: str = "RIDER-1") -> Session:
    return Session(tid, order, rider, *DROP, "+233 20 555 0101", T0)


def item(tid: str, n: int, at: float = T0) -> OutboxItem:
    return OutboxItem(tid, NOTIFICATION, "/notifications", b'{"n": %d}' % n, f"{tid}:{n}", at)


class Ids:
    """Journal ids and chain links, assigned as a shard assigns them."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def __call__(self, pairs: list[tuple[Session, Change]]) -> list[Entry]:
        out: list[Entry] = []
        for s, ch in pairs:
            out.append((self.next, s.head, ch))
            s.head = self.next
            self.next += 1
        return out


def of(s: Session, changes: list[Change]) -> list[tuple[Session, Change]]:
    return [(s, ch) for ch in changes]


def starts(*sessions: Session) -> list[tuple[Session, Change]]:
    return [(s, s.first_change()) for s in sessions]


def history_item(ch: Change) -> HistoryItem:
    """What the history lists for a journaled change: `at` in whole seconds."""
    return HistoryItem(ch.seq, ch.status, ch.previous_status, ch.lat, ch.lng, int(ch.at))


def done(row_id: int, at: float) -> OutboxMark:
    return OutboxMark(row_id, Outcome.DONE, at)


def retry(row_id: int, at: float, next_at: float, error: str) -> OutboxMark:
    return OutboxMark(row_id, Outcome.RETRY, at, next_at, error)


def dead(row_id: int, at: float, error: str) -> OutboxMark:
    return OutboxMark(row_id, Outcome.DEAD, at, error=error)


def walk(s: Session, statuses: list[Status | None]) -> list[Change]:
    changes = [s.first_change()]
    for i, status in enumerate(statuses):
        changes.append(s.apply_update(5.61 + i / 100, -0.19, status, T0 + 10 * (i + 1), LT))
    return changes


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


def three_sessions(store: SqliteStore, ids: Ids) -> tuple[Session, Session, Session]:
    a, b, c = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b"), session("TRK-c", "ORD-c")
    store.commit([a, b, c], ids(starts(a, b, c)), [])
    store.commit([], ids(of(a, walk(a, [None, Status.PICKED_UP])[1:])), [])
    store.commit([], ids(of(b, walk(b, [Status.PICKED_UP, Status.IN_TRANSIT,
                                        Status.DELIVERED])[1:])), [])  # fmt: skip
    return a, b, c


def restored(db: Path) -> dict[str, Session]:
    reopened = SqliteStore(db)
    try:
        return {s.tracking_id: s for s in reopened.load_sessions(LT)}
    finally:
        reopened.close()


def test_commit_then_load_restores_each_session(db: Path, store: SqliteStore) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    assert {s.tracking_id: s.view() for s in store.load_sessions(LT)} == expected
    assert store.journal_high() == ids.next - 1 == 8
    store.close()
    loaded = restored(db)
    assert {t: s.view() for t, s in loaded.items()} == expected
    assert {t: s.head for t, s in loaded.items()} == {"TRK-a": 5, "TRK-b": 8, "TRK-c": 3}
    assert loaded["TRK-b"].delivered_at == b.delivered_at
    assert loaded["TRK-a"].phone == "+233 20 555 0101"


def checkpoint(store: SqliteStore, upto: int, *sessions: Session) -> None:
    rows = [(s.tracking_id, s.seq, s.status.value, s.lat, s.lng, s.updated_at, s.head)
            for s in sessions]  # fmt: skip
    store.write_checkpoint(upto, len(rows), [orjson.dumps(rows[:1]), orjson.dumps(rows[1:])])


def test_load_from_a_checkpoint_and_the_journal_after_it(db: Path, store: SqliteStore) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    checkpoint(store, ids.next - 1, a, b, c)
    # Changes after the checkpoint, one of them to a session that did not exist at it.
    d = session("TRK-d", "ORD-d")
    store.commit([d], ids(starts(d)), [])
    store.commit([], ids(of(a, walk(a, [Status.IN_TRANSIT])[1:])), [])
    store.close()
    loaded = restored(db)
    assert {t: s.view() for t, s in loaded.items()} == {s.tracking_id: s.view()
                                                         for s in (a, b, c, d)}  # fmt: skip
    assert loaded["TRK-a"].head == a.head == ids.next - 1
    # The journal alone gives the same answer: the checkpoint only saves replaying it.
    checkpoint_path(db).unlink()
    assert {t: s.view() for t, s in restored(db).items()} == {
        t: s.view() for t, s in loaded.items()
    }


def test_a_fuzzy_checkpoint_replays_only_what_is_newer(db: Path, store: SqliteStore) -> None:
    # A checkpoint reads sessions after `upto`, so it may hold states newer than `upto`.
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    upto = 4  # a's second change; a and b have later ones, already in the checkpoint
    checkpoint(store, upto, a, b, c)
    store.close()
    assert {t: s.view() for t, s in restored(db).items()} == {
        s.tracking_id: s.view() for s in (a, b, c)
    }


def test_an_unusable_checkpoint_is_ignored(db: Path, store: SqliteStore) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    stale = session("TRK-a", "ORD-a")  # a state the journal has long passed
    stale.head = 1
    bad_checkpoints = [
        lambda: checkpoint(store, ids.next + 100, stale),  # ahead of the journal
        lambda: checkpoint_path(db).write_bytes(b'{"format": 1, "store_id": "other", "upto": 1,'
                                                b' "count": 1}\n[]\n'),
        lambda: checkpoint_path(db).write_bytes(b"not json at all"),
        lambda: checkpoint_path(db).write_bytes(
            checkpoint_path(db).read_bytes().rsplit(b"\n", 2)[0]),  # truncated
        lambda: checkpoint(store, ids.next - 1, a),  # misses sessions: replay it all
    ]
    for write_bad in bad_checkpoints:
        checkpoint(store, ids.next - 1, a, b, c)
        write_bad()
        assert {t: s.view() for t, s in restored(db).items()} == expected


def test_a_commit_is_all_or_nothing(store: SqliteStore) -> None:
    good = session("TRK-good")
    bad = Change("TRK-good", 2, "NOT-A-STATUS", None, 1.0, 1.0, T0)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.commit([good], [(1, 0, good.first_change()), (2, 1, bad)], [item("TRK-good", 1)])
    assert store.load_sessions(LT) == []
    assert store.history(1, 0, 10) == []
    # No transaction was left open: the store still works.
    store.commit([good], [(1, 0, good.first_change())], [])
    assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-good"]


def test_empty_commit_is_a_no_op(store: SqliteStore) -> None:
    store.commit([], [], [])
    assert store.load_sessions(LT) == []


def test_history_in_seq_order_with_cursor_and_limit(store: SqliteStore) -> None:
    ids = Ids()
    s = session("TRK-h")
    other = session("TRK-o", "ORD-o")
    changes = walk(s, [None, Status.PICKED_UP, None, Status.IN_TRANSIT])
    # Interleaved with another session's changes, as a shard's batches are.
    store.commit([s, other], ids([(s, changes[0]), (other, other.first_change())]), [])
    store.commit([], ids(of(s, changes[1:3])), [])
    store.commit([], ids([(other, other.apply_update(5.6, -0.18, None, T0 + 5.9, LT))]), [])
    store.commit([], ids(of(s, changes[3:])), [])
    h = s.head
    full = store.history(h, 0, 100)
    assert full == [history_item(c) for c in changes]
    assert [h.seq for h in full] == [1, 2, 3, 4, 5]
    assert full[2] == HistoryItem(3, Status.PICKED_UP, Status.ASSIGNED, 5.62, -0.19, int(T0 + 20))
    assert [x.seq for x in store.history(h, 3, 100)] == [4, 5]
    assert [x.seq for x in store.history(h, 0, 2)] == [1, 2]
    assert [x.seq for x in store.history(h, 2, 2)] == [3, 4]
    assert store.history(h, 5, 100) == []
    assert [x.seq for x in store.history(other.head, 0, 100)] == [1, 2]
    assert store.history(other.head, 1, 1)[0].at == int(T0) + 5  # whole seconds, truncated
    assert store.history(0, 0, 100) == []


def test_a_long_history_pages_in_order(store: SqliteStore) -> None:
    ids = Ids()
    s = session("TRK-long")
    store.commit([s], ids(starts(s)), [])
    for _ in range(10):
        store.commit([], ids(of(s, walk(s, [None] * 200)[1:])), [])
    # Every 256th change is indexed: a page starts its walk at most that far past its end.
    marks = store.conn.execute("SELECT seq FROM marks ORDER BY seq").fetchall()
    assert [m[0] for m in marks] == [256 * k for k in range(1, 8)]
    seqs: list[int] = []
    while page := store.history(s.head, seqs[-1] if seqs else 0, 150):
        seqs.extend(x.seq for x in page)
    assert seqs == list(range(1, 2002))
    assert [x.seq for x in store.history(s.head, 255, 2)] == [256, 257]
    assert [x.seq for x in store.history(s.head, 1990, 100)] == list(range(1991, 2002))
    store.purge([(s.tracking_id, s.head)])
    assert store.conn.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0


def test_purge_forgets_sessions_but_never_owed_calls(db: Path, store: SqliteStore) -> None:
    ids = Ids()
    a, b = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b")
    store.commit([a, b], ids(starts(a, b)), [item("TRK-a", 1)])
    store.commit([], ids(of(a, walk(a, [None, None])[1:])), [])
    store.commit([], ids(of(b, walk(b, [None])[1:])), [])
    store.purge([("TRK-a", a.head)])
    store.purge([])
    assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-b"]
    assert store.history(a.head, 0, 10) == []
    assert len(store.history(b.head, 0, 10)) == 2
    left = store.conn.execute("SELECT tracking_id, COUNT(*) FROM journal GROUP BY 1").fetchall()
    assert left == [("TRK-b", 2)]
    outbox = SqliteOutbox(db)
    try:
        assert [r.tracking_id for r in outbox.due_heads(T0)] == ["TRK-a"]
    finally:
        outbox.close()


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


# -- the outbox ------------------------------------------------------------------------------


@pytest.fixture
def outbox(db: Path, store: SqliteStore) -> Iterator[SqliteOutbox]:
    o = SqliteOutbox(db)  # a second connection to the same file, as the dispatcher has
    yield o
    o.close()


def test_due_heads_keep_per_session_order(store: SqliteStore, outbox: SqliteOutbox) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1), item("TRK-a", 2)])
    store.commit([], [], [item("TRK-a", 3)])
    heads = outbox.due_heads(T0)
    assert [(r.tracking_id, r.idempotency_key) for r in heads] == [
        ("TRK-a", "TRK-a:1"), ("TRK-b", "TRK-b:1"),
    ]  # fmt: skip
    a1 = heads[0]
    assert (a1.target, a1.path, a1.body, a1.attempts) == (
        NOTIFICATION, "/notifications", b'{"n": 1}', 0,
    )  # fmt: skip
    # The head waits for a retry: the session's later calls wait behind it.
    outbox.mark([retry(a1.id, T0, T0 + 30, "HTTP 503")])
    assert [r.idempotency_key for r in outbox.due_heads(T0 + 29)] == ["TRK-b:1"]
    retried = outbox.due_heads(T0 + 30)
    assert (retried[0].idempotency_key, retried[0].attempts) == ("TRK-a:1", 1)
    outbox.mark([done(a1.id, T0 + 30)])
    heads = outbox.due_heads(T0 + 30)
    assert sorted(r.idempotency_key for r in heads) == ["TRK-a:2", "TRK-b:1"]
    a2 = next(r for r in heads if r.tracking_id == "TRK-a")
    outbox.mark([dead(a2.id, T0 + 31, "HTTP 400 bad request")])  # a 4xx is not retried forever
    assert sorted(r.idempotency_key for r in outbox.due_heads(T0 + 31)) == ["TRK-a:3", "TRK-b:1"]
    assert outbox.counts() == {"pending": 2, "done": 1, "dead": 1, "retries": 1}
    letters = outbox.dead_letters(10)
    assert [(d["idempotency_key"], d["last_error"], d["attempts"]) for d in letters] == [
        ("TRK-a:2", "HTTP 400 bad request", 1),
    ]  # fmt: skip
    assert letters[0]["body"] == '{"n": 2}'


def test_due_heads_limit(store: SqliteStore, outbox: SqliteOutbox) -> None:
    store.commit([], [], [item(f"TRK-{i}", 1) for i in range(5)])
    assert len(outbox.due_heads(T0, limit=3)) == 3


def test_prune_done_keeps_pending_and_dead(store: SqliteStore, outbox: SqliteOutbox) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1), item("TRK-c", 1)])
    a, b, _ = outbox.due_heads(T0)
    outbox.mark([done(a.id, T0 + 1), dead(b.id, T0 + 1, "HTTP 404")])  # one transaction
    outbox.prune_done(T0 + 0.5)
    assert outbox.counts() == {"pending": 1, "done": 1, "dead": 1, "retries": 0}
    outbox.prune_done(T0 + 2)
    assert outbox.counts() == {"pending": 1, "done": 0, "dead": 1, "retries": 0}


def test_marks_are_recorded_all_or_nothing(store: SqliteStore, outbox: SqliteOutbox) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1)])
    a, b = outbox.due_heads(T0)
    outbox.mark([])
    outbox.mark([retry(a.id, T0, T0 + 5, "HTTP 503"), retry(b.id, T0, T0 + 5, "timeout")])
    assert [(r.id, r.attempts) for r in outbox.due_heads(T0 + 5)] == [(a.id, 1), (b.id, 1)]
    # A mark that cannot be written takes the others of its call down with it.
    outbox.conn.execute(
        f"CREATE TRIGGER refuse BEFORE UPDATE ON outbox WHEN NEW.id = {b.id}"
        " AND NEW.state = 'done' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        outbox.mark([done(a.id, T0 + 5), done(b.id, T0 + 5)])
    assert outbox.counts() == {"pending": 2, "done": 0, "dead": 0, "retries": 0}
    # No transaction was left open: the next marks are recorded.
    outbox.mark([done(a.id, T0 + 6), retry(b.id, T0 + 6, T0 + 9, "HTTP 503")])
    # Each was tried twice now: one retry each, the delivered one's included.
    assert outbox.counts() == {"pending": 1, "done": 1, "dead": 0, "retries": 2}


def shard_outbox(tmp_path: Path, phone: str | None, order: bool, notify: bool) -> list[Any]:
    """Run one delivery through a shard and return what its batches owe, from the store."""
    clock = ManualClock(T0)
    cfg = ShardConfig(0, 1, LT, order_service=order, notification_service=notify)
    db = shard_db_path(tmp_path, 0)
    shard = Shard(cfg, SqliteStore(db), clock)
    try:
        res = shard.handle([Start("ORD-9", "RIDER-9", *DROP, phone)])[0]
        assert isinstance(res, Ok), res
        assert isinstance(res.value, bytes), res
        tid = orjson.loads(res.value)["tracking_id"]
        for status in (None, Status.PICKED_UP, None, Status.IN_TRANSIT, Status.DELIVERED):
            clock.advance(60)
            res = shard.handle([Update(tid, 5.61, -0.19, status, "RIDER-9")])[0]
            assert isinstance(res, Ok), res
    finally:
        shard.store.close()
    o = SqliteOutbox(db)
    try:
        rows = []
        while heads := o.due_heads(T0 + 10_000):
            for r in heads:
                rows.append((r.target, r.path, r.idempotency_key, orjson.loads(r.body)))
                o.mark([done(r.id, T0 + 10_000)])
        return [tid, rows]
    finally:
        o.close()


def per_receiver(rows: list[Any]) -> dict[str, list[Any]]:
    return {t: [r for r in rows if r[0] == t] for t in (ORDER, NOTIFICATION)}


def test_a_delivery_owes_the_contracts_calls_in_order(tmp_path: Path) -> None:
    tid, rows = shard_outbox(tmp_path, "+233 20 555 0101", order=True, notify=True)
    common = {"tracking_id": tid, "order_id": "ORD-9", "rider_id": "RIDER-9",
              "phone": "+233 20 555 0101"}  # fmt: skip
    picked, transit, delivered = int(T0 + 120), int(T0 + 240), int(T0 + 300)
    # Order is owed per session and receiver (the receivers cannot see each other's calls).
    assert per_receiver(rows) == per_receiver([
        (NOTIFICATION, "/notifications", f"{tid}:tracking_started:ASSIGNED",
         {**common, "event": "tracking_started", "status": "ASSIGNED", "at": int(T0)}),
        (NOTIFICATION, "/notifications", f"{tid}:status_changed:PICKED_UP",
         {**common, "event": "status_changed", "status": "PICKED_UP", "at": picked}),
        (NOTIFICATION, "/notifications", f"{tid}:status_changed:IN_TRANSIT",
         {**common, "event": "status_changed", "status": "IN_TRANSIT", "at": transit}),
        (ORDER, "/orders/ORD-9/status", f"{tid}:DELIVERED",
         {"status": "DELIVERED", "tracking_id": tid, "rider_id": "RIDER-9",
          "delivered_at": delivered}),
        (NOTIFICATION, "/notifications", f"{tid}:delivered:DELIVERED",
         {**common, "event": "delivered", "status": "DELIVERED", "at": delivered}),
    ])  # fmt: skip


def test_no_phone_no_tracking_started(tmp_path: Path) -> None:
    _, rows = shard_outbox(tmp_path, None, order=True, notify=True)
    keys = {t: [r[2].split(":", 1)[1] for r in rs] for t, rs in per_receiver(rows).items()}
    assert keys == {
        ORDER: ["DELIVERED"],
        NOTIFICATION: ["status_changed:PICKED_UP", "status_changed:IN_TRANSIT",
                       "delivered:DELIVERED"],
    }  # fmt: skip


def test_unconfigured_services_are_owed_nothing(tmp_path: Path) -> None:
    assert shard_outbox(tmp_path, "+233 20 555 0101", order=False, notify=False)[1] == []
    _, rows = shard_outbox(tmp_path / "b", None, order=True, notify=False)
    assert [r[0] for r in rows] == [ORDER]


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
