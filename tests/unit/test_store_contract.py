"""What every store does, run on each (`backend`: SQLite files, and a PostgreSQL database on the
session's throwaway server): journal, history, checkpoint and recovery, purge, and the outbox
as shards write it and the dispatcher reads it. Store-specific behaviour is in test_store.py
(SQLite) and test_store_postgres.py."""

from __future__ import annotations

from collections.abc import Iterator
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
from engine.shard import Shard, ShardConfig
from engine.store.base import Entry, OutboxMark, OutboxStore, Store
from tests.stores import StoreBackend

LT = Lifetimes(session_ttl_s=1000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
DROP = (5.6037, -0.1869)
T0 = 1_704_067_800.0


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


def three_sessions(store: Store, ids: Ids) -> tuple[Session, Session, Session]:
    a, b, c = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b"), session("TRK-c", "ORD-c")
    store.commit([a, b, c], ids(starts(a, b, c)), [])
    store.commit([], ids(of(a, walk(a, [None, Status.PICKED_UP])[1:])), [])
    store.commit([], ids(of(b, walk(b, [Status.PICKED_UP, Status.IN_TRANSIT,
                                        Status.DELIVERED])[1:])), [])  # fmt: skip
    return a, b, c


def checkpoint(store: Store, upto: int, *sessions: Session) -> None:
    rows = [(s.tracking_id, s.seq, s.status.value, s.lat, s.lng, s.updated_at, s.head)
            for s in sessions]  # fmt: skip
    store.write_checkpoint(upto, len(rows), [orjson.dumps(rows[:1]), orjson.dumps(rows[1:])])


def restored(backend: StoreBackend) -> dict[str, Session]:
    reopened = backend.open()
    try:
        return {s.tracking_id: s for s in reopened.load_sessions(LT)}
    finally:
        reopened.close()


@pytest.fixture
def store(backend: StoreBackend) -> Iterator[Store]:
    s = backend.open()
    s.load_sessions(LT)  # as a shard does first
    yield s
    s.close()  # a second close (a test closed it to reopen) is harmless


def test_commit_then_load_restores_each_session(backend: StoreBackend, store: Store) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    assert {s.tracking_id: s.view() for s in store.load_sessions(LT)} == expected
    assert store.journal_high() == ids.next - 1 == 8
    store.close()
    loaded = restored(backend)
    assert {t: s.view() for t, s in loaded.items()} == expected
    assert {t: s.head for t, s in loaded.items()} == {"TRK-a": 5, "TRK-b": 8, "TRK-c": 3}
    assert loaded["TRK-b"].delivered_at == b.delivered_at
    assert loaded["TRK-a"].phone == "+233 20 555 0101"


def test_shards_of_one_store_keep_apart(backend: StoreBackend) -> None:
    """Journal ids, sessions, history and outbox are per shard, whatever the store shares."""
    zero, one = backend.open(0, 2), backend.open(1, 2)
    try:
        a, b = session("TRK-a", "ORD-a"), session("TRK-b", "ORD-b")
        zero.commit([a], Ids()(starts(a)), [item("TRK-a", 1)])
        one.commit([b], Ids()(starts(b)), [item("TRK-b", 1)])  # the same journal id, 1
        one.commit([], Ids(2)(of(b, walk(b, [None])[1:])), [])
        assert [s.tracking_id for s in zero.load_sessions(LT)] == ["TRK-a"]
        assert [s.tracking_id for s in one.load_sessions(LT)] == ["TRK-b"]
        assert (zero.journal_high(), one.journal_high()) == (1, 2)
        assert [x.seq for x in zero.history(a.head, 0, 10)] == [1]
        assert [x.seq for x in one.history(b.head, 0, 10)] == [1, 2]
    finally:
        zero.close()
        one.close()
    outboxes = [backend.outbox(i, 2) for i in range(2)]
    try:
        assert [[r.tracking_id for r in o.due_heads(T0)] for o in outboxes] == [["TRK-a"],
                                                                                 ["TRK-b"]]
    finally:
        for o in outboxes:
            o.close()


def test_load_from_a_checkpoint_and_the_journal_after_it(
    backend: StoreBackend, store: Store
) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    checkpoint(store, ids.next - 1, a, b, c)
    # Changes after the checkpoint, one of them to a session that did not exist at it.
    d = session("TRK-d", "ORD-d")
    store.commit([d], ids(starts(d)), [])
    store.commit([], ids(of(a, walk(a, [Status.IN_TRANSIT])[1:])), [])
    store.close()
    loaded = restored(backend)
    assert {t: s.view() for t, s in loaded.items()} == {s.tracking_id: s.view()
                                                         for s in (a, b, c, d)}  # fmt: skip
    assert loaded["TRK-a"].head == a.head == ids.next - 1
    # The journal alone gives the same answer: the checkpoint only saves replaying it.
    backend.drop_checkpoint()
    assert {t: s.view() for t, s in restored(backend).items()} == {
        t: s.view() for t, s in loaded.items()
    }


def test_a_fuzzy_checkpoint_replays_only_what_is_newer(
    backend: StoreBackend, store: Store
) -> None:
    # A checkpoint reads sessions after `upto`, so it may hold states newer than `upto`.
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    upto = 4  # a's second change; a and b have later ones, already in the checkpoint
    checkpoint(store, upto, a, b, c)
    store.close()
    assert {t: s.view() for t, s in restored(backend).items()} == {
        s.tracking_id: s.view() for s in (a, b, c)
    }


def test_a_checkpoint_that_cannot_be_trusted_is_ignored(
    backend: StoreBackend, store: Store
) -> None:
    ids = Ids()
    a, b, c = three_sessions(store, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    stale = session("TRK-a", "ORD-a")  # a state the journal has long passed
    stale.head = 1
    store.close()
    for bad in ((ids.next + 100, (stale,)),  # ahead of the journal
                (ids.next - 1, (a,))):  # misses sessions: replay it all  # fmt: skip
        writer = backend.open()
        writer.load_sessions(LT)
        checkpoint(writer, bad[0], *bad[1])
        writer.close()
        assert {t: s.view() for t, s in restored(backend).items()} == expected


def test_a_commit_is_all_or_nothing(store: Store) -> None:
    good = session("TRK-good")
    bad = Change("TRK-good", 2, "NOT-A-STATUS", None, 1.0, 1.0, T0)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.commit([good], [(1, 0, good.first_change()), (2, 1, bad)], [item("TRK-good", 1)])
    assert store.load_sessions(LT) == []
    assert store.history(1, 0, 10) == []
    # No transaction was left open: the store still works.
    store.commit([good], [(1, 0, good.first_change())], [])
    assert [s.tracking_id for s in store.load_sessions(LT)] == ["TRK-good"]


def test_empty_commit_is_a_no_op(store: Store) -> None:
    store.commit([], [], [])
    assert store.load_sessions(LT) == []


def test_history_in_seq_order_with_cursor_and_limit(store: Store) -> None:
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


def test_a_long_history_pages_in_order(store: Store) -> None:
    ids = Ids()
    s = session("TRK-long")
    store.commit([s], ids(starts(s)), [])
    for _ in range(10):
        store.commit([], ids(of(s, walk(s, [None] * 200)[1:])), [])
    seqs: list[int] = []
    while page := store.history(s.head, seqs[-1] if seqs else 0, 150):
        seqs.extend(x.seq for x in page)
    assert seqs == list(range(1, 2002))
    assert [x.seq for x in store.history(s.head, 255, 2)] == [256, 257]
    assert [x.seq for x in store.history(s.head, 1990, 100)] == list(range(1991, 2002))


def test_purge_forgets_sessions_but_never_owed_calls(backend: StoreBackend, store: Store) -> None:
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
    assert backend.journal_counts() == [("TRK-b", 2)]
    outbox = backend.outbox()
    try:
        assert [r.tracking_id for r in outbox.due_heads(T0, 200)] == ["TRK-a"]
    finally:
        outbox.close()


# -- the outbox ------------------------------------------------------------------------------


@pytest.fixture
def outbox(backend: StoreBackend, store: Store) -> Iterator[OutboxStore]:
    o = backend.outbox()  # a connection of its own, as the dispatcher has
    yield o
    o.close()


def test_due_heads_keep_per_session_order(store: Store, outbox: OutboxStore) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1), item("TRK-a", 2)])
    store.commit([], [], [item("TRK-a", 3)])
    heads = outbox.due_heads(T0, 200)
    assert [(r.tracking_id, r.idempotency_key) for r in heads] == [
        ("TRK-a", "TRK-a:1"), ("TRK-b", "TRK-b:1"),
    ]  # fmt: skip
    a1 = heads[0]
    assert (a1.target, a1.path, a1.body, a1.attempts) == (
        NOTIFICATION, "/notifications", b'{"n": 1}', 0,
    )  # fmt: skip
    # The head waits for a retry: the session's later calls wait behind it.
    outbox.mark([retry(a1.id, T0, T0 + 30, "HTTP 503")])
    assert [r.idempotency_key for r in outbox.due_heads(T0 + 29, 200)] == ["TRK-b:1"]
    retried = outbox.due_heads(T0 + 30, 200)
    assert (retried[0].idempotency_key, retried[0].attempts) == ("TRK-a:1", 1)
    outbox.mark([done(a1.id, T0 + 30)])
    heads = outbox.due_heads(T0 + 30, 200)
    assert sorted(r.idempotency_key for r in heads) == ["TRK-a:2", "TRK-b:1"]
    a2 = next(r for r in heads if r.tracking_id == "TRK-a")
    outbox.mark([dead(a2.id, T0 + 31, "HTTP 400 bad request")])  # a 4xx is not retried forever
    assert sorted(r.idempotency_key for r in outbox.due_heads(T0 + 31, 200)) == [
        "TRK-a:3", "TRK-b:1",
    ]  # fmt: skip
    assert outbox.counts() == {"pending": 2, "done": 1, "dead": 1, "retries": 1}
    letters = outbox.dead_letters(10)
    assert [(d["idempotency_key"], d["last_error"], d["attempts"]) for d in letters] == [
        ("TRK-a:2", "HTTP 400 bad request", 1),
    ]  # fmt: skip
    assert letters[0]["body"] == '{"n": 2}'


def test_due_heads_limit(store: Store, outbox: OutboxStore) -> None:
    store.commit([], [], [item(f"TRK-{i}", 1) for i in range(5)])
    assert len(outbox.due_heads(T0, 3)) == 3


def test_prune_done_keeps_pending_and_dead(store: Store, outbox: OutboxStore) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1), item("TRK-c", 1)])
    a, b, _ = outbox.due_heads(T0, 200)
    outbox.mark([done(a.id, T0 + 1), dead(b.id, T0 + 1, "HTTP 404")])  # one transaction
    outbox.prune_done(T0 + 0.5)
    assert outbox.counts() == {"pending": 1, "done": 1, "dead": 1, "retries": 0}
    outbox.prune_done(T0 + 2)
    assert outbox.counts() == {"pending": 1, "done": 0, "dead": 1, "retries": 0}


def test_marks_are_recorded_all_or_nothing(
    backend: StoreBackend, store: Store, outbox: OutboxStore
) -> None:
    store.commit([], [], [item("TRK-a", 1), item("TRK-b", 1)])
    a, b = outbox.due_heads(T0, 200)
    outbox.mark([])
    outbox.mark([retry(a.id, T0, T0 + 5, "HTTP 503"), retry(b.id, T0, T0 + 5, "timeout")])
    assert [(r.id, r.attempts) for r in outbox.due_heads(T0 + 5, 200)] == [(a.id, 1), (b.id, 1)]
    # A mark that cannot be written takes the others of its call down with it.
    refused = backend.refuse_done(b.id)
    with pytest.raises(refused):
        outbox.mark([done(a.id, T0 + 5), done(b.id, T0 + 5)])
    assert outbox.counts() == {"pending": 2, "done": 0, "dead": 0, "retries": 0}
    # No transaction was left open: the next marks are recorded.
    outbox.mark([done(a.id, T0 + 6), retry(b.id, T0 + 6, T0 + 9, "HTTP 503")])
    # Each was tried twice now: one retry each, the delivered one's included.
    assert outbox.counts() == {"pending": 1, "done": 1, "dead": 0, "retries": 2}


def shard_outbox(
    backend: StoreBackend, phone: str | None, order: bool, notify: bool, order_id: str = "ORD-9"
) -> list[Any]:
    """Run one delivery through a shard and return what its batches owe, from the store."""
    clock = ManualClock(T0)
    cfg = ShardConfig(0, 1, LT, order_service=order, notification_service=notify)
    shard = Shard(cfg, backend.open(), clock)
    try:
        res = shard.handle([Start(order_id, "RIDER-9", *DROP, phone)])[0]
        assert isinstance(res, Ok), res
        assert isinstance(res.value, bytes), res
        tid = orjson.loads(res.value)["tracking_id"]
        for status in (None, Status.PICKED_UP, None, Status.IN_TRANSIT, Status.DELIVERED):
            clock.advance(60)
            res = shard.handle([Update(tid, 5.61, -0.19, status, "RIDER-9")])[0]
            assert isinstance(res, Ok), res
    finally:
        shard.store.close()
    o = backend.outbox()
    try:
        rows = []
        while heads := o.due_heads(T0 + 10_000, 200):
            for r in heads:
                rows.append((r.target, r.path, r.idempotency_key, orjson.loads(r.body)))
                o.mark([done(r.id, T0 + 10_000)])
        return [tid, rows]
    finally:
        o.close()


def per_receiver(rows: list[Any]) -> dict[str, list[Any]]:
    return {t: [r for r in rows if r[0] == t] for t in (ORDER, NOTIFICATION)}


def test_a_delivery_owes_the_contracts_calls_in_order(backend: StoreBackend) -> None:
    tid, rows = shard_outbox(backend, "+233 20 555 0101", order=True, notify=True)
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


def test_no_phone_no_tracking_started(backend: StoreBackend) -> None:
    _, rows = shard_outbox(backend, None, order=True, notify=True)
    keys = {t: [r[2].split(":", 1)[1] for r in rs] for t, rs in per_receiver(rows).items()}
    assert keys == {
        ORDER: ["DELIVERED"],
        NOTIFICATION: ["status_changed:PICKED_UP", "status_changed:IN_TRANSIT",
                       "delivered:DELIVERED"],
    }  # fmt: skip


def test_unconfigured_services_are_owed_nothing(backend: StoreBackend) -> None:
    assert shard_outbox(backend, "+233 20 555 0101", order=False, notify=False)[1] == []
    _, rows = shard_outbox(backend, None, order=True, notify=False, order_id="ORD-10")
    assert [r[0] for r in rows] == [ORDER]


def test_fix_times_late_fixes_and_milestones_survive(backend: StoreBackend, store: Store) -> None:
    """The journal keeps each fix's device time and what a change was besides (late, the
    milestones it fired): the history shows them, and a reload restores the current location
    (not a late fix's, nor lost to a status-only change) and what fired."""
    from engine.domain.proximity import Milestone
    from engine.domain.session import LATE, Rules

    ids = Ids()
    s = session("TRK-q", "ORD-q")
    store.commit([s], ids(starts(s)), [])
    rules, t = Rules(), T0 + 1000
    south = lambda m: DROP[0] - m / 111_195.0  # noqa: E731
    fixes: list[tuple[float, Status | None, float]] = [
        (5000, Status.PICKED_UP, t - 600), (4000, Status.IN_TRANSIT, t - 500), (450, None, t - 200),
        (480, None, t - 250), (400, None, t - 150), (20, None, t - 100), (10, None, t - 90),
    ]  # fmt: skip
    changes = []
    for metres, status, at in fixes:
        out = s.report(south(metres), DROP[1], status, t, LT, rules, at)
        assert out.change is not None
        changes.append(out.change)
    out = s.report(0.0, 0.0, Status.DELIVERED, t, LT, rules, t - 80)  # dropped: status only
    assert out.change is not None
    changes.append(out.change)
    store.commit([], ids(of(s, changes)), [])
    items = store.history(s.head, 1, 100)
    assert [(i.seq, i.recorded_at, i.late, i.milestones) for i in items] == [
        (2, int(t - 600), False, ()), (3, int(t - 500), False, ()),
        (4, int(t - 200), False, ()), (5, int(t - 250), True, ()),
        (6, int(t - 150), False, (Milestone.APPROACHING,)), (7, int(t - 100), False, ()),
        (8, int(t - 90), False, (Milestone.ARRIVED,)), (9, None, False, ()),
    ]  # fmt: skip
    assert items[-1].lat is None
    assert changes[3].flags == LATE
    store.close()
    [back] = restored(backend).values()
    assert back.view() == s.view()
    assert back.view().proximity is Milestone.ARRIVED
    assert back.view().current_location is not None
    assert back.view().current_location.timestamp == int(t - 90)
