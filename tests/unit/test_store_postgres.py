"""The PostgreSQL store's own behaviour: one writer per shard (claim and fencing), the schema's
version check, a checkpoint in the database, connections that break. What every store does is
in test_store_contract.py."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from engine.clock import ManualClock
from engine.domain.session import Rules
from engine.protocol import Err, Ok, Start, Update
from engine.settings import Settings
from engine.shard import RELOAD_BACKOFF_S, Shard, ShardConfig
from engine.store import StoreSpec, check_store, open_outboxes
from engine.store.base import StoreError
from engine.store.postgres import LOCK_CLASS, Fenced, PostgresStore, redact
from harness.postgres import PostgresServer
from tests.unit.test_store_contract import (
    LT,
    T0,
    Ids,
    checkpoint,
    item,
    of,
    session,
    starts,
    three_sessions,
    walk,
)


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, options="-c search_path=tracking") as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def first(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url, 0, 2)
    s.load_sessions(LT)
    yield s
    s.close()


def take_over(url: str, old: PostgresStore) -> PostgresStore:
    """What a new owner does after the old one lost its claim without dying (its lock's
    connection was dropped: a network partition, a server restart)."""
    sql(url, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
             f" AND classid = {LOCK_CLASS} AND objid = {old.shard} AND granted")  # fmt: skip
    return PostgresStore(url, old.shard, old.shards, claim_wait_s=10)


def test_a_second_claimant_of_a_shard_is_refused(pg_url: str, first: PostgresStore) -> None:
    with pytest.raises(StoreError, match=r"shard 0 of the store at .* is held by another process"):
        PostgresStore(pg_url, 0, 2, claim_wait_s=0.5)
    other = PostgresStore(pg_url, 1, 2, claim_wait_s=0.5)  # another shard of the same store
    other.close()
    first.close()
    again = PostgresStore(pg_url, 0, 2, claim_wait_s=0.5)  # free once its owner let go
    try:
        assert again.generation == first.generation + 1
    finally:
        again.close()


def test_a_writer_that_lost_its_claim_is_fenced_off(pg_url: str, first: PostgresStore) -> None:
    ids = Ids()
    a, _, _ = three_sessions(first, ids)
    new = take_over(pg_url, first)
    try:
        assert new.generation == first.generation + 1
        # Everything the old owner committed is the new owner's.
        assert sorted(s.tracking_id for s in new.load_sessions(LT)) == ["TRK-a", "TRK-b", "TRK-c"]
        late = session("TRK-late", "ORD-late")
        with pytest.raises(Fenced, match="claimed by another process"):
            first.commit([late], Ids(ids.next)(starts(late)), [item("TRK-late", 1)])
        with pytest.raises(Fenced):
            checkpoint(first, ids.next - 1, a)
        with pytest.raises(Fenced):
            first.purge([("TRK-a", a.head)])
        # Nothing of it reached the store; the new owner writes on.
        assert sql(pg_url, "SELECT COUNT(*) FROM sessions WHERE tracking_id = 'TRK-late'") == [(0,)]
        assert sql(pg_url, "SELECT COUNT(*) FROM outbox") == [(0,)]
        assert sql(pg_url, "SELECT COUNT(*) FROM checkpoints") == [(0,)]
        new.commit([], Ids(ids.next)(of(a, walk(a, [None])[1:])), [])
        assert [x.seq for x in new.history(a.head, 0, 10)] == [1, 2, 3, 4]
    finally:
        new.close()


def test_a_commit_in_flight_holds_off_a_claim(pg_url: str, first: PostgresStore) -> None:
    """The old owner's transaction holds the fence row: the claim waits for it, so the new
    owner loads the rows of that transaction too."""
    entered, release = threading.Event(), threading.Event()
    a = session("TRK-a", "ORD-a")
    original = first._fenced

    @contextlib.contextmanager
    def slow_fenced(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
        with original(conn):  # type: ignore[arg-type]
            entered.set()
            release.wait(10)
            yield

    first._fenced = slow_fenced  # type: ignore[method-assign]
    committing = threading.Thread(target=first.commit, args=([a], Ids()(starts(a)), []))
    committing.start()
    assert entered.wait(10)
    claimed: list[PostgresStore] = []
    claiming = threading.Thread(target=lambda: claimed.append(take_over(pg_url, first)))
    claiming.start()
    claiming.join(1.0)
    assert claiming.is_alive()  # waiting for the commit's transaction
    release.set()
    committing.join(10)
    claiming.join(10)
    try:
        assert [s.tracking_id for s in claimed[0].load_sessions(LT)] == ["TRK-a"]
    finally:
        claimed[0].close()


def test_a_shard_reconnects_after_its_connection_broke(pg_url: str) -> None:
    clock = ManualClock(T0)
    shard = Shard(ShardConfig(0, 1, LT), PostgresStore(pg_url, 0, 1), clock)
    store = shard.store
    assert isinstance(store, PostgresStore)
    try:
        started = shard.handle([Start("ORD-1", "RIDER-1", 5.6, -0.18, None)])[0]
        assert isinstance(started, Ok)
        assert isinstance(started.value, bytes)
        tid = started.value.split(b'"tracking_id":"')[1].split(b'"')[0].decode()
        generation = store.generation
        sql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'tracking shard 0 (%'")  # fmt: skip
        failed = shard.handle([Update(tid, 5.61, -0.18, None, "RIDER-1")])[0]
        assert isinstance(failed, Err)
        assert failed.code == "unavailable"
        # After its backoff the shard reloads (once) on a new connection; it serves again.
        clock.advance(RELOAD_BACKOFF_S)
        again = shard.handle([Update(tid, 5.61, -0.18, None, "RIDER-1")])[0]
        assert isinstance(again, Ok), again
        assert store.generation == generation  # the claim was never lost
        # Its lock's connection dropped too: it claims the shard again before writing.
        sql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'tracking shard 0 lock%'")  # fmt: skip
        shard._load()
        assert store.generation == generation + 1
        assert isinstance(shard.handle([Update(tid, 5.62, -0.18, None, "RIDER-1")])[0], Ok)
    finally:
        store.close()


def test_shards_start_together_on_a_new_database(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            stores.append(PostgresStore(pg_url, i, 4))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert errors == []
    assert sorted(s.shard for s in stores) == [0, 1, 2, 3]


def test_a_database_of_another_version_or_shard_count_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url, 0, 2).close()
    with pytest.raises(StoreError, match="holds 2 shards and TRACKING_SHARDS is 3"):
        PostgresStore(pg_url, 0, 3)
    with pytest.raises(StoreError, match="holds 2 shards"):
        open_outboxes(StoreSpec(Path("/nonexistent"), 3, url=pg_url))
    sql(pg_url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        check_store(StoreSpec(Path("/nonexistent"), 2, url=pg_url), 0)


def test_an_unusable_checkpoint_row_is_ignored(pg_url: str, first: PostgresStore) -> None:
    ids = Ids()
    a, b, c = three_sessions(first, ids)
    expected = {s.tracking_id: s.view() for s in (a, b, c)}
    for damage in ("UPDATE checkpoint_chunks SET body = 'not json' WHERE n = 1",
                   "DELETE FROM checkpoint_chunks WHERE n = 1",  # incomplete
                   "UPDATE checkpoints SET count = 7"):  # fmt: skip
        checkpoint(first, ids.next - 1, a, b, c)
        sql(pg_url, damage)
        assert {s.tracking_id: s.view() for s in first.load_sessions(LT)} == expected


def test_an_unreachable_store_is_reported_without_its_password(pg_server: PostgresServer) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(StoreError, match="cannot be reached") as caught:
        PostgresStore(url, 0, 1)
    assert "s3cret" not in str(caught.value)
    assert redact(url) == f"postgresql://postgres:***@127.0.0.1:{pg_server.port}/no_such_db"
    assert "s3cret" not in repr(StoreSpec(Path("."), 1, url=url))


def test_the_store_url_setting() -> None:
    assert Settings(store_url=" ").store_url is None
    assert Settings(store_url="postgresql://db/tracking").store_url == "postgresql://db/tracking"
    with pytest.raises(ValidationError, match="postgresql://"):
        Settings(store_url="mysql://db/tracking")


def test_a_version_1_database_gains_fix_times_and_flags(pg_url: str) -> None:
    """Version 1 (before fix times) had no journal fix_at/flags: it is migrated in place, its
    rows read as plain changes."""
    first = PostgresStore(pg_url, 0, 1)
    first.load_sessions(LT)
    a = session("TRK-a", "ORD-a")
    ids = Ids()
    first.commit([a], ids(starts(a) + of(a, walk(a, [None])[1:])), [])
    first.close()
    sql(pg_url, "ALTER TABLE journal DROP COLUMN fix_at, DROP COLUMN flags")
    sql(pg_url, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    again = PostgresStore(pg_url, 0, 1)
    try:
        [loaded] = again.load_sessions(LT)
        assert loaded.view() == a.view()
        assert sql(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
        out = loaded.report(5.7, -0.19, None, T0 + 100, LT, Rules(), T0 + 90)
        assert out.change is not None
        again.commit([], ids(of(loaded, [out.change])), [])
        assert again.history(loaded.head, 2, 10)[0].recorded_at == int(T0 + 90)
    finally:
        again.close()
