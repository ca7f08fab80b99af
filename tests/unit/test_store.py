"""The embedded store: journal, history and outbox in one SQLite file per shard (in tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.clock import ManualClock
from engine.integrations import NOTIFICATION, ORDER, OutboxItem
from engine.session import Change, Lifetimes, Session
from engine.shard import Shard, ShardConfig
from engine.status import Status
from engine.store import (
    NullStore,
    OutboxStore,
    SqliteStore,
    StoreError,
    check_data_dir,
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
    s.commit([one], [one.first_change()], [item("TRK-1", 1)])
    assert s.load_sessions(LT) == []
    assert s.history("TRK-1", 0, 10) == []
    s.purge(["TRK-1"])
    s.close()


def test_commit_then_load_restores_each_session(db: Path, store: SqliteStore) -> None:
    a, b, c = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b"), session("TRK-c", "ORD-c")
    store.commit([a, b, c], [a.first_change(), b.first_change(), c.first_change()], [])
    store.commit([], walk(a, [None, Status.PICKED_UP])[1:], [])
    store.commit([], walk(b, [Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED])[1:], [])
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    assert {s.tracking_id: s.view() for s in store.load_sessions(LT)} == expected
    store.close()
    reopened = SqliteStore(db)
    try:
        loaded = {s.tracking_id: s for s in reopened.load_sessions(LT)}
        assert {t: s.view() for t, s in loaded.items()} == expected
        assert loaded["TRK-b"].delivered_at == b.delivered_at
        assert loaded["TRK-a"].phone == "+233 20 555 0101"
    finally:
        reopened.close()


def test_a_commit_is_all_or_nothing(store: SqliteStore) -> None:
    good = session("TRK-good")
    bad = Change("TRK-good", 2, "NOT-A-STATUS", None, 1.0, 1.0, T0)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.commit([good], [good.first_change(), bad], [item("TRK-good", 1)])
    assert store.load_sessions(LT) == []
    assert store.history("TRK-good", 0, 10) == []
    # No transaction was left open: the store still works.
    store.commit([good], [good.first_change()], [])
    assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-good"]


def test_empty_commit_is_a_no_op(store: SqliteStore) -> None:
    store.commit([], [], [])
    assert store.load_sessions(LT) == []


def test_history_in_seq_order_with_cursor_and_limit(store: SqliteStore) -> None:
    s = session("TRK-h")
    changes = walk(s, [None, Status.PICKED_UP, None, Status.IN_TRANSIT])
    store.commit([s], changes, [])
    other = session("TRK-o", "ORD-o")
    store.commit([other], [other.first_change()], [])
    full = store.history("TRK-h", 0, 100)
    assert full == [c.history_item() for c in changes]
    assert [h["seq"] for h in full] == [1, 2, 3, 4, 5]
    assert full[2] == {"seq": 3, "status": "PICKED_UP", "previous_status": "ASSIGNED",
                       "lat": 5.62, "lng": -0.19, "at": int(T0 + 20)}  # fmt: skip
    assert [h["seq"] for h in store.history("TRK-h", 3, 100)] == [4, 5]
    assert [h["seq"] for h in store.history("TRK-h", 0, 2)] == [1, 2]
    assert store.history("TRK-nope", 0, 100) == []


def test_purge_forgets_sessions_but_never_owed_calls(db: Path, store: SqliteStore) -> None:
    a, b = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b")
    store.commit([a, b], [a.first_change(), b.first_change()], [item("TRK-a", 1)])
    store.purge(["TRK-a"])
    store.purge([])
    assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-b"]
    assert store.history("TRK-a", 0, 10) == []
    assert len(store.history("TRK-b", 0, 10)) == 1
    outbox = OutboxStore(db)
    try:
        assert [r.tracking_id for r in outbox.due_heads(T0)] == ["TRK-a"]
    finally:
        outbox.close()


# -- the outbox ------------------------------------------------------------------------------


@pytest.fixture
def outbox(db: Path, store: SqliteStore) -> Iterator[OutboxStore]:
    o = OutboxStore(db)  # a second connection to the same file, as the dispatcher has
    yield o
    o.close()


def test_due_heads_keep_per_session_order(store: SqliteStore, outbox: OutboxStore) -> None:
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
    outbox.mark_retry(a1.id, T0 + 30, "HTTP 503")
    assert [r.idempotency_key for r in outbox.due_heads(T0 + 29)] == ["TRK-b:1"]
    retried = outbox.due_heads(T0 + 30)
    assert (retried[0].idempotency_key, retried[0].attempts) == ("TRK-a:1", 1)
    outbox.mark_done(a1.id, T0 + 30)
    heads = outbox.due_heads(T0 + 30)
    assert sorted(r.idempotency_key for r in heads) == ["TRK-a:2", "TRK-b:1"]
    a2 = next(r for r in heads if r.tracking_id == "TRK-a")
    outbox.mark_dead(a2.id, T0 + 31, "HTTP 400 bad request")  # a 4xx is not retried forever
    assert sorted(r.idempotency_key for r in outbox.due_heads(T0 + 31)) == ["TRK-a:3", "TRK-b:1"]
    assert outbox.counts() == {"pending": 2, "done": 1, "dead": 1}
    assert outbox.retries() == 1
    dead = outbox.dead_letters(10)
    assert [(d["idempotency_key"], d["last_error"], d["attempts"]) for d in dead] == [
        ("TRK-a:2", "HTTP 400 bad request", 1),
    ]  # fmt: skip
    assert dead[0]["body"] == '{"n": 2}'


def test_due_heads_limit(store: SqliteStore, outbox: OutboxStore) -> None:
    store.commit([], [], [item(f"TRK-{i}", 1) for i in range(5)])
    assert len(outbox.due_heads(T0, limit=3)) == 3


def test_prune_done_keeps_pending_and_dead(store: SqliteStore, outbox: OutboxStore) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1), item("TRK-c", 1)])
    a, b, _ = outbox.due_heads(T0)
    outbox.mark_done(a.id, T0 + 1)
    outbox.mark_dead(b.id, T0 + 1, "HTTP 404")
    outbox.prune_done(T0 + 0.5)
    assert outbox.counts() == {"pending": 1, "done": 1, "dead": 1}
    outbox.prune_done(T0 + 2)
    assert outbox.counts() == {"pending": 1, "done": 0, "dead": 1}


def shard_outbox(tmp_path: Path, phone: str | None, order: bool, notify: bool) -> list[Any]:
    """Run one delivery through a shard and return what its batches owe, from the store."""
    clock = ManualClock(T0)
    cfg = ShardConfig(0, 1, LT, order_service=order, notification_service=notify)
    db = shard_db_path(tmp_path, 0)
    shard = Shard(cfg, SqliteStore(db), clock)
    try:
        res = shard.handle([("start", "ORD-9", "RIDER-9", *DROP, phone)])[0]
        view = res[1] if isinstance(res[1], dict) else orjson.loads(res[1])
        tid = view["tracking_id"]
        for status in (None, "PICKED_UP", None, "IN_TRANSIT", "DELIVERED"):
            clock.advance(60)
            assert shard.handle([("update", tid, 5.61, -0.19, status, "RIDER-9")])[0][0] == "ok"
    finally:
        shard.store.close()
    o = OutboxStore(db)
    try:
        rows = []
        while heads := o.due_heads(T0 + 10_000):
            for r in heads:
                rows.append((r.target, r.path, r.idempotency_key, orjson.loads(r.body)))
                o.mark_done(r.id, T0 + 10_000)
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
        check_data_dir(tmp_path, 2)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "plain-file"
    f.write_text("x")
    with pytest.raises(StoreError, match="plain-file"):
        check_data_dir(f, 1)
    with pytest.raises(StoreError):
        SqliteStore(f / "shard-000.sqlite3")


def test_check_data_dir_creates_the_shard_files(tmp_path: Path) -> None:
    data = tmp_path / "new" / "dir"
    check_data_dir(data, 3)
    assert sorted(p.name for p in data.glob("shard-*.sqlite3")) == [
        "shard-000.sqlite3", "shard-001.sqlite3", "shard-002.sqlite3",
    ]  # fmt: skip
