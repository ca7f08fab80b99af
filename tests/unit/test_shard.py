"""A shard hosting many sessions, driven by batches of commands, with a manual clock.

Each behaviour runs over both a NullStore and a real SqliteStore in tmp_path; journal-specific
behaviour (reload, history, a failing commit) runs over SqliteStore and PostgresStore.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson
import psycopg
import pydantic
import pytest

from api.models import UpdateRequest
from engine import host as host_module
from engine import shard as shard_module
from engine.clock import ManualClock
from engine.domain.integrations import OutboxItem
from engine.domain.routing import shard_of
from engine.domain.session import Lifetimes, Session
from engine.domain.status import Status
from engine.domain.view import HistoryItem
from engine.host import ShardHost
from engine.protocol import (
    AnyCommand,
    BadMessage,
    CallRequest,
    Channel,
    Err,
    EventKind,
    Feed,
    Get,
    HistoryQuery,
    Ok,
    Ping,
    Result,
    Resumed,
    RiderHit,
    RiderLookup,
    ShardStats,
    Start,
    StatsQuery,
    Unwatch,
    Update,
    Watch,
    Watched,
    pack,
    read_client_message,
    unpack_request,
)
from engine.shard import GATEWAY_IDLE_S, Shard, ShardConfig
from engine.store.base import Entry, NullStore, Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.support import timeout, until

LT = Lifetimes(session_ttl_s=1000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
N_SHARDS, INDEX = 4, 2
DROP = (5.6037, -0.1869)
EXPIRED = {"type": "error", "message": "Tracking session expired"}
U, S, X = EventKind.LOCATION, EventKind.STATUS, EventKind.EXPIRED
PICKED_UP, IN_TRANSIT, DELIVERED = Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED


class BrokenDiskStore(SqliteStore):
    """A real SqliteStore whose commits fail while `broken` is set (a full or failing disk)."""

    broken = False

    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        super().commit(created, entries, outbox)


class BrokenDiskPostgres(PostgresStore):
    """The same over the PostgreSQL store (its server's disk full)."""

    broken = False

    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        if self.broken:
            raise psycopg.errors.DiskFull("database or disk is full")
        super().commit(created, entries, outbox)


def ok(result: Result) -> Any:
    """An accepted command's value: a view's JSON (start, update, get) as the dict clients
    get; any other reply (Watched, RiderHit, ShardStats, ...) as it is."""
    assert isinstance(result, Ok), result
    return orjson.loads(result.value) if isinstance(result.value, bytes) else result.value


def err(result: Result) -> tuple[str, str]:
    assert isinstance(result, Err), result
    return result.code, result.detail


def unavailable(result: Result) -> bool:
    return isinstance(result, Err) and result.code == "unavailable"


def view_of(reply: Watched | RiderHit) -> Any:
    """The view a watch or a rider lookup carries, as a dict."""
    return orjson.loads(reply.view)


class Seen(NamedTuple):
    """An event as a gateway sees it, its message decoded."""

    tracking_id: str
    kind: EventKind
    seq: int
    msg: Any


class Harness:
    def __init__(self, make_store: Callable[[], Store], clock: ManualClock) -> None:
        self.make_store = make_store
        self.clock = clock
        self.shard = self.fresh()

    def fresh(self) -> Shard:
        cfg = ShardConfig(index=INDEX, n_shards=N_SHARDS, lifetimes=LT)
        return Shard(cfg, self.make_store(), self.clock)

    def one(self, cmd: AnyCommand) -> Result:
        return self.shard.handle([cmd])[0]

    def start(self, order: str = "ORD-1", rider: str = "RIDER-1", phone: str | None = None) -> str:
        view = ok(self.one(Start(order, rider, *DROP, phone)))
        tid: str = view["tracking_id"]
        return tid

    def update(
        self, tid: str, lat: float = 5.61, lng: float = -0.19, status: Status | None = None,
        rider: str | None = "RIDER-1",
    ) -> Result:  # fmt: skip
        return self.one(Update(tid, lat, lng, status, rider))

    def get(self, tid: str) -> Result:
        return self.one(Get(tid))

    def watch(self, tid: str, gw: str) -> Watched:
        watched = ok(self.one(Watch(tid, gw)))
        assert isinstance(watched, Watched), watched
        return watched

    def rider(self, rider: str) -> RiderHit | None:
        hit = ok(self.one(RiderLookup(rider)))
        assert hit is None or isinstance(hit, RiderHit), hit
        return hit

    def rider_session(self, rider: str) -> str | None:
        """The tracking id of the rider's newest live session here (its view agrees)."""
        hit = self.rider(rider)
        if hit is None:
            return None
        assert view_of(hit)["tracking_id"] == hit.tracking_id
        return hit.tracking_id

    def history(self, tid: str, since: int = 0, limit: int = 100) -> list[HistoryItem]:
        return list(ok(self.one(HistoryQuery(tid, since, limit))).items)

    def stats(self, dots: int = 0) -> ShardStats:
        stats = ok(self.one(StatsQuery(dots)))
        assert isinstance(stats, ShardStats), stats
        return stats

    def events(self, gw: str, ack: int = 0) -> tuple[int, list[Seen]]:
        base, evs = self.shard.take(gw, ack, 1)
        return base, [Seen(e.tracking_id, e.kind, e.seq, orjson.loads(e.frame)) for e in evs]


@pytest.fixture(params=["null", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    opened: list[Store] = []

    def make_store() -> Store:
        store: Store = NullStore() if request.param == "null" else SqliteStore(tmp_path / "s.db")
        opened.append(store)
        return store

    yield Harness(make_store, ManualClock())
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def hs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A journal on each store (the journal's own behaviour)."""
    opened: list[Store] = []
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def make_store() -> Store:
        store: Store = (BrokenDiskStore(tmp_path / "s.db") if url is None
                        else BrokenDiskPostgres(url, INDEX, N_SHARDS))  # fmt: skip
        opened.append(store)
        return store

    yield Harness(make_store, ManualClock())
    for store in opened:
        store.close()


# -- start, update, get ----------------------------------------------------------------------


def test_start(h: Harness) -> None:
    view = ok(h.one(Start("ORD-1", "RIDER-1", *DROP, "+233 20 555 0101")))
    assert view["status"] == "ASSIGNED"
    assert view["current_location"] is None
    assert view["eta_seconds"] is None
    assert view["seq"] == 1
    assert view["order_id"] == "ORD-1"
    assert view["rider_id"] == "RIDER-1"
    assert view["dropoff"] == {"lat": DROP[0], "lng": DROP[1]}
    assert view["updated_at"] == int(h.clock())
    assert "phone" not in view
    assert view["tracking_id"].startswith("TRK-")
    assert shard_of(view["tracking_id"], N_SHARDS) == INDEX


def test_update_then_get(h: Harness) -> None:
    tid = h.start()
    h.clock.advance(12)
    view = ok(h.update(tid, 5.62, -0.18, PICKED_UP))
    assert view["status"] == "PICKED_UP"
    assert view["seq"] == 2
    assert view["current_location"] == {"lat": 5.62, "lng": -0.18, "timestamp": int(h.clock())}
    assert isinstance(view["eta_seconds"], int)
    assert view["eta_seconds"] >= 60
    assert ok(h.get(tid)) == view


def test_seq_is_gap_free_over_many_batches(h: Harness) -> None:
    tid = h.start()
    for i in range(10):
        results = h.shard.handle([Update(tid, 5.6 + i / 100, -0.19, None, "RIDER-1")] * 3)
        assert [ok(r)["seq"] for r in results] == [2 + 3 * i, 3 + 3 * i, 4 + 3 * i]
    assert ok(h.get(tid))["seq"] == 31


@pytest.mark.parametrize(
    "cmd",
    [
        Get("TRK-nope"),
        Update("TRK-nope", 5.6, -0.19, None, "RIDER-1"),
        Watch("TRK-nope", "gw-1"),
        HistoryQuery("TRK-nope", 0, 10),
    ],
)
def test_unknown_sessions_are_not_found(h: Harness, cmd: AnyCommand) -> None:
    assert err(h.one(cmd))[0] == "not_found"


def test_status_rules_apply_and_refusals_change_nothing(h: Harness) -> None:
    tid = h.start()
    before = ok(h.get(tid))
    code, detail = err(h.update(tid, status=IN_TRANSIT))
    assert code == "conflict"
    assert "PICKED_UP" in detail
    assert ok(h.get(tid)) == before
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        ok(h.update(tid, status=status))
    delivered = ok(h.get(tid))
    assert delivered["eta_seconds"] == 0
    assert err(h.update(tid))[0] == "conflict"
    assert err(h.update(tid, status=DELIVERED))[0] == "conflict"
    assert ok(h.get(tid)) == delivered


@pytest.mark.parametrize("status", ["LOST", "delivered", "", 3])
def test_an_unknown_status_never_reaches_a_shard(status: object) -> None:
    # A command's status is a Status: an unknown one is refused where it comes in, by the
    # WebSocket reader, the HTTP body and the wire into a shard process.
    raw = {"type": "location_update", "location": {"lat": 5.6, "lng": -0.19, "status": status}}
    with pytest.raises(BadMessage, match=r"location\.status") as info:
        read_client_message(orjson.dumps(raw))
    assert info.value.report
    with pytest.raises(pydantic.ValidationError, match="status"):
        UpdateRequest.model_validate({"lat": 5.6, "lng": -0.19, "status": status})
    bad = Update("TRK-1", 5.6, -0.19, status, "RIDER-1")  # type: ignore[arg-type]
    # (a request is [tag, commands, channel]; a command [tag, tracking_id, lat, lng, status, ...])
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\[1\]\[0\]\[4\]`"):
        unpack_request(pack(CallRequest([bad], None)))


def test_only_the_sessions_rider_or_a_superadmin_may_update(h: Harness) -> None:
    tid = h.start(rider="RIDER-1")
    code, _ = err(h.update(tid, rider="RIDER-2"))
    assert code == "forbidden"
    assert ok(h.get(tid))["seq"] == 1
    assert ok(h.update(tid, rider="RIDER-1"))["seq"] == 2
    assert ok(h.update(tid, rider=None))["seq"] == 3  # superadmin


# -- orders and riders -----------------------------------------------------------------------


def test_one_live_session_per_order(h: Harness) -> None:
    first = h.start("ORD-1")
    code, detail = err(h.one(Start("ORD-1", "RIDER-2", *DROP, None)))
    assert code == "conflict"
    assert "ORD-1" in detail
    # Finding 1: another rider's start must not learn the live session's id (it opens the
    # session's public live feed).
    assert first not in detail
    assert "TRK-" not in detail
    h.start("ORD-2")  # another order is fine
    h.clock.advance(LT.session_ttl_s)
    second = h.start("ORD-1")  # the first one has expired
    assert second != first
    assert ok(h.get(second))["order_id"] == "ORD-1"
    assert err(h.get(first))[0] == "expired"


def test_an_order_is_free_again_once_its_delivered_session_expires(h: Harness) -> None:
    tid = h.start("ORD-1")
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        ok(h.update(tid, status=status))
    assert err(h.one(Start("ORD-1", "RIDER-2", *DROP, None)))[0] == "conflict"
    h.clock.advance(LT.delivered_ttl_s)
    h.start("ORD-1", "RIDER-2")


def test_a_start_repeated_by_the_orders_rider_returns_its_live_session(h: Harness) -> None:
    # A retried start (the app timed out, the rider tapped twice) is safe: the rider gets its
    # own session back, unchanged, and nothing new is journaled or owed.
    tid = h.start("ORD-1", "RIDER-1", phone="+233 20 555 0101")
    ok(h.update(tid, status=PICKED_UP))
    high = h.shard.journal_high()
    again = h.one(Start("ORD-1", "RIDER-1", 1.0, 1.0, None))
    assert isinstance(again, Ok), again
    assert isinstance(again.value, Resumed), again
    view = orjson.loads(again.value.view)
    assert view == ok(h.get(tid))
    assert (view["tracking_id"], view["status"], view["seq"]) == (tid, "PICKED_UP", 2)
    assert h.shard.journal_high() == high
    assert len(h.shard.sessions) == 1


def test_rider_lookup_finds_the_newest_live_session(h: Harness) -> None:
    assert h.rider("RIDER-1") is None
    older = h.start("ORD-1", "RIDER-1")
    h.clock.advance(5)
    newer = h.start("ORD-2", "RIDER-1")
    h.start("ORD-3", "RIDER-2")
    hit = h.rider("RIDER-1")
    assert hit is not None
    assert (hit.tracking_id, hit.started_at) == (newer, h.clock())  # precise, for comparing
    assert view_of(hit) == ok(h.get(newer))
    # Deliver the newer one; once its delivered TTL runs out, the older one is the answer.
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        ok(h.update(newer, status=status))
    assert h.rider_session("RIDER-1") == newer
    h.clock.advance(LT.delivered_ttl_s)
    assert h.rider_session("RIDER-1") == older
    h.clock.advance(LT.session_ttl_s)
    assert h.rider("RIDER-1") is None
    assert h.rider("RIDER-9") is None


# -- watchers and the gateways' event queues -------------------------------------------------


def test_events_reach_watching_gateways_only_in_order(h: Harness) -> None:
    a, b = h.start("ORD-A"), h.start("ORD-B")
    initial = h.watch(a, "gw-1")
    assert view_of(initial) == ok(h.get(a))
    assert initial.seq == 1
    h.watch(b, "gw-2")
    ok(h.update(a, 5.61, -0.19))
    ok(h.update(b, 5.70, -0.10))
    ok(h.update(a, 5.62, -0.19, PICKED_UP))
    h.shard.handle([
        Update(a, 5.63, -0.19, None, "RIDER-1"),
        Update(a, 5.64, -0.19, IN_TRANSIT, "RIDER-1"),
    ])  # fmt: skip
    base, evs = h.events("gw-1")
    assert base == 0
    assert [(e.tracking_id, e.kind, e.seq) for e in evs] == [
        (a, U, 2), (a, U, 3), (a, S, 3), (a, U, 4), (a, U, 5), (a, S, 5),
    ]  # fmt: skip
    assert all(e.msg["type"] == "location_update" for e in evs if e.kind is U)
    for e in evs:
        assert e.msg["data"]["seq"] == e.seq
        assert e.msg["data"]["tracking_id"] == a
    changes = [e.msg for e in evs if e.kind is S]
    assert [m["type"] for m in changes] == ["status_change", "status_change"]
    assert [(m["data"]["previous_status"], m["data"]["status"]) for m in changes] == [
        ("ASSIGNED", "PICKED_UP"), ("PICKED_UP", "IN_TRANSIT"),
    ]  # fmt: skip
    # The status change carries the same view as its location update, plus previous_status.
    u3 = evs[1].msg["data"]
    s3 = evs[2].msg["data"]
    assert {k: v for k, v in s3.items() if k != "previous_status"} == u3
    assert (u3["seq"], u3["status"], u3["current_location"]["lat"]) == (3, "PICKED_UP", 5.62)
    _, evs_b = h.events("gw-2")
    assert [(e.tracking_id, e.kind, e.seq) for e in evs_b] == [(b, U, 2)]
    _, nothing = h.events("gw-3")
    assert nothing == []


def test_acknowledged_events_are_dropped(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    for _ in range(5):
        ok(h.update(tid))
    base, evs = h.events("gw-1")
    assert (base, [e.seq for e in evs]) == (0, [2, 3, 4, 5, 6])
    # Acknowledge the first two: they are gone, the cursor moves on.
    base, evs = h.events("gw-1", ack=2)
    assert (base, [e.seq for e in evs]) == (2, [4, 5, 6])
    # Asking again with an older cursor does not bring anything back.
    base, evs = h.events("gw-1", ack=1)
    assert (base, [e.seq for e in evs]) == (2, [4, 5, 6])
    base, evs = h.events("gw-1", ack=4)  # one event after cursor 4 still waits
    assert (base, [e.seq for e in evs]) == (4, [6])
    base, evs = h.events("gw-1", ack=5)  # none after cursor 5
    assert (base, evs) == (5, [])
    ok(h.update(tid))
    base, evs = h.events("gw-1", ack=5)
    assert (base, [e.seq for e in evs]) == (5, [7])


def test_watch_then_unwatch(h: Harness) -> None:
    tid = h.start()
    ok(h.update(tid))  # before anyone watches: not queued for anyone
    h.watch(tid, "gw-1")
    h.watch(tid, "gw-2")
    ok(h.update(tid))
    assert [e.seq for e in h.events("gw-1")[1]] == [3]
    assert [e.seq for e in h.events("gw-2")[1]] == [3]
    assert ok(h.one(Unwatch(tid, "gw-1"))) is None
    ok(h.update(tid))
    assert [e.seq for e in h.events("gw-1")[1]] == [3]
    assert [e.seq for e in h.events("gw-2")[1]] == [3, 4]
    assert ok(h.one(Unwatch(tid, "gw-2"))) is None
    assert ok(h.one(Unwatch(tid, "gw-2"))) is None  # twice is harmless
    ok(h.update(tid))
    assert [e.seq for e in h.events("gw-2")[1]] == [3, 4]


def test_a_gateway_that_stops_polling_is_forgotten(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    h.events("gw-1")
    assert h.stats().watched_sessions == 1
    h.clock.advance(GATEWAY_IDLE_S + 1)
    h.shard.sweep()
    assert h.stats().watched_sessions == 0
    ok(h.update(tid))
    assert h.events("gw-1")[1] == []


# -- expiry ----------------------------------------------------------------------------------


def test_sweep_expires_notifies_watchers_then_purges(h: Harness) -> None:
    tid = h.start("ORD-1")
    h.clock.advance(10)
    later = h.start("ORD-2")
    h.watch(tid, "gw-1")
    h.watch(later, "gw-1")
    h.clock.advance(LT.session_ttl_s - 10 - 1)
    assert h.events("gw-1") == (0, [])  # the gateway keeps polling
    assert h.shard.sweep() == []
    h.clock.advance(1)
    assert err(h.get(tid)) == ("expired", "Tracking session expired")
    assert ok(h.get(later))["tracking_id"] == later
    assert h.shard.sweep() == [tid]
    base, evs = h.events("gw-1")
    assert (base, [(e.tracking_id, e.kind) for e in evs]) == (0, [(tid, X)])
    assert evs[0].msg == EXPIRED
    assert h.shard.sweep() == []  # announced once
    for cmd in (Get(tid), Update(tid, 5.6, -0.19, None, "RIDER-1"), Watch(tid, "gw-2"),
                HistoryQuery(tid, 0, 10)):  # fmt: skip
        assert err(h.one(cmd))[0] == "expired"
    h.clock.advance(LT.purge_after_s - 1)
    h.events("gw-1", ack=1)
    assert h.shard.sweep() == [later]
    assert err(h.get(tid))[0] == "expired"
    h.clock.advance(1)
    h.shard.sweep()
    assert err(h.get(tid))[0] == "not_found"
    assert err(h.one(HistoryQuery(tid, 0, 10)))[0] == "not_found"
    assert err(h.get(later))[0] == "expired"
    assert [(e.tracking_id, e.kind) for e in h.events("gw-1", ack=1)[1]] == [(later, X)]


def test_a_delivered_session_expires_after_the_delivered_ttl(h: Harness) -> None:
    tid = h.start()
    h.watch(tid, "gw-1")
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        ok(h.update(tid, status=status))
    base, evs = h.events("gw-1")
    h.events("gw-1", ack=base + len(evs))
    h.clock.advance(LT.delivered_ttl_s - 0.5)
    assert h.shard.sweep() == []
    h.clock.advance(0.5)
    assert h.shard.sweep() == [tid]
    _, evs = h.events("gw-1", ack=base + len(evs))
    assert [(e.tracking_id, e.kind) for e in evs] == [(tid, X)]


# -- statistics and small reads --------------------------------------------------------------


def test_stats(h: Harness) -> None:
    a, b, c = h.start("ORD-A"), h.start("ORD-B"), h.start("ORD-C")
    for status in (PICKED_UP, IN_TRANSIT):
        ok(h.update(b, status=status))
    h.watch(a, "gw-1")
    h.clock.advance(400)
    h.shard.take("gw-1", 0, 7)
    ok(h.update(a))
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        ok(h.update(c, status=status))
    stats = h.stats()
    assert stats.counts.total_active_sessions == 3
    assert stats.counts.status_distribution == {
        "ASSIGNED": 1, "PICKED_UP": 0, "IN_TRANSIT": 1, "DELIVERED": 1,
    }  # fmt: skip
    assert stats.counts.sessions_by_recency == {"last_5_min": 2, "last_hour": 1, "older": 0}
    assert stats.connections_by_gateway == {"gw-1": 7}
    assert stats.watched_sessions == 1
    h.clock.advance(LT.delivered_ttl_s)  # c expired: no longer counted
    stats = h.stats()
    assert stats.counts.total_active_sessions == 2
    assert stats.counts.status_distribution["DELIVERED"] == 0
    h.clock.advance(LT.session_ttl_s)
    stats = h.stats()
    assert stats.counts.total_active_sessions == 0
    assert sum(stats.counts.sessions_by_recency.values()) == 0


def test_ping_and_the_ops_map_positions(h: Harness) -> None:
    tids = [h.start(f"ORD-{i}") for i in range(3)]
    ok(h.update(tids[0], 5.7, -0.1))
    assert ok(h.one(Ping(False))) == 3
    assert ok(h.one(Ping(True))) == 3  # the store takes writes
    assert h.stats().dots == []  # positions only when asked for
    snap = h.stats(dots=10)
    assert sorted(d.tracking_id for d in snap.dots) == sorted(tids)
    moved = next(d for d in snap.dots if d.tracking_id == tids[0])
    assert (moved.status, moved.lat, moved.lng) == (Status.ASSIGNED, 5.7, -0.1)
    assert moved.eta_seconds == ok(h.get(tids[0]))["eta_seconds"]
    assert len(h.stats(dots=2).dots) == 2
    h.clock.advance(LT.session_ttl_s)
    assert h.stats(dots=10).dots == []  # live sessions only


# -- batches ---------------------------------------------------------------------------------


def test_failing_commands_do_not_affect_the_rest_of_the_batch(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = h.start("ORD-1")

    def broken_history(head: int, since_seq: int, limit: int) -> list[HistoryItem]:
        raise RuntimeError("a bug, not a reason to fail the other commands")

    monkeypatch.setattr(h.shard.store, "history", broken_history)
    results = h.shard.handle([
        Update(tid, 5.61, -0.19, None, "RIDER-1"),
        Update("TRK-unknown", 5.6, -0.19, None, "RIDER-1"),
        Update(tid, 5.6, -0.19, None, "RIDER-2"),
        Update(tid, 5.6, -0.19, DELIVERED, "RIDER-1"),
        Start("ORD-1", "RIDER-2", *DROP, None),
        HistoryQuery(tid, 0, 10),
        Update(tid, 5.62, -0.19, PICKED_UP, "RIDER-1"),
        Start("ORD-2", "RIDER-1", *DROP, None),
        Get(tid),
    ])  # fmt: skip
    assert [type(r) for r in results] == [Ok, *[Err] * 5, Ok, Ok, Ok]
    assert [err(r)[0] for r in results[1:6]] == [
        "not_found", "forbidden", "conflict", "conflict", "error",
    ]  # fmt: skip
    assert err(results[5])[1] == "internal error: RuntimeError"
    assert ok(results[0])["seq"] == 2
    assert ok(results[6])["seq"] == 3
    assert ok(results[8]) == ok(results[6])
    assert ok(results[7])["order_id"] == "ORD-2"


# -- the journal (SqliteStore) ---------------------------------------------------------------


def test_reloading_from_the_store_gives_the_same_sessions(hs: Harness) -> None:
    tids = []
    for i in range(4):
        hs.clock.advance(1)  # distinct start times: "newest" must be well defined
        tids.append(hs.start(f"ORD-{i}", f"RIDER-{i % 2}", phone="+233 20 555 0101"))
    ok(hs.update(tids[0], 5.61, -0.19, rider="RIDER-0"))
    for status in (PICKED_UP, IN_TRANSIT):
        hs.clock.advance(3)
        ok(hs.update(tids[1], 5.62, -0.18, status, rider="RIDER-1"))
    for status in (PICKED_UP, IN_TRANSIT, DELIVERED):
        hs.clock.advance(3)
        ok(hs.update(tids[2], 5.60, -0.18, status, rider="RIDER-0"))
    views = {t: ok(hs.get(t)) for t in tids}
    riders = {r: hs.rider(r) for r in ("RIDER-0", "RIDER-1")}
    assert None not in riders.values()

    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert {t: ok(hs.get(t)) for t in tids} == views
    assert {r: hs.rider(r) for r in ("RIDER-0", "RIDER-1")} == riders
    assert hs.shard.sessions[tids[0]].phone == "+233 20 555 0101"
    # Rules survive the restart: one live session per order, seq continues, expiry timers.
    assert err(hs.one(Start("ORD-0", "RIDER-9", *DROP, None)))[0] == "conflict"
    assert ok(hs.update(tids[0], rider=None))["seq"] == views[tids[0]]["seq"] + 1
    assert err(hs.update(tids[2], rider=None))[0] == "conflict"
    hs.clock.advance(LT.delivered_ttl_s)
    assert hs.shard.sweep() == [tids[2]]


def test_purged_sessions_stay_purged_after_a_reload(hs: Harness) -> None:
    gone = hs.start("ORD-1")
    hs.clock.advance(LT.session_ttl_s - 10)
    kept = hs.start("ORD-2")
    hs.clock.advance(10 + LT.purge_after_s)
    hs.shard.sweep()
    hs.shard.sweep()
    assert err(hs.get(gone))[0] == "not_found"
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert err(hs.get(gone))[0] == "not_found"
    assert ok(hs.get(kept))["tracking_id"] == kept


def test_history_and_restarts_from_a_checkpoint(hs: Harness) -> None:
    tids = [hs.start(f"ORD-{i}") for i in range(5)]
    for k in range(3):
        for tid in tids:
            hs.clock.advance(1)
            ok(hs.update(tid, 5.6 + k / 100, -0.19))
    host = ShardHost(hs.shard, sweep_interval_s=60, background=False)
    assert host.checkpoint()
    ok(hs.update(tids[0], 5.7, -0.19, PICKED_UP))  # after the checkpoint
    views = {t: ok(hs.get(t)) for t in tids}
    history = {t: hs.history(t) for t in tids}
    assert [len(items) for items in history.values()] == [5, 4, 4, 4, 4]
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert {t: ok(hs.get(t)) for t in tids} == views
    assert {t: hs.history(t) for t in tids} == history
    # New changes extend each session's chain, wherever its last one was read from.
    ok(hs.update(tids[1], 5.8, -0.19))
    assert [i.seq for i in hs.history(tids[1])] == [1, 2, 3, 4, 5]
    assert [i.seq for i in hs.history(tids[0], 3)] == [4, 5]


def test_a_checkpoint_gives_up_when_the_shard_reloads_under_it(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_module, "CHECKPOINT_SLICE", 1)
    tids = [hs.start(f"ORD-{i}") for i in range(3)]
    host = ShardHost(hs.shard, sweep_interval_s=60, background=False)
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore | BrokenDiskPostgres)

    def a_batch_fails() -> None:  # between two slices of the checkpoint
        store.broken = True  # this batch fails: the shard reloads from the journal
        assert unavailable(hs.update(tids[2], 5.9, -0.19))
        store.broken = False

    assert host.checkpoint(between_slices=a_batch_fails) is False
    assert store._read_checkpoint() is None


def test_purging_is_spread_over_sweeps(hs: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_module, "PURGE_PER_SWEEP", 2)
    tids = [hs.start(f"ORD-{i}") for i in range(5)]
    for tid in tids:
        ok(hs.update(tid, 5.61, -0.19))
    hs.clock.advance(LT.session_ttl_s + LT.purge_after_s + 1)
    assert sorted(hs.shard.sweep()) == sorted(tids)  # all expire at once
    left = [len(hs.shard.sessions)]  # and two of them are purged by the same sweep
    for _ in range(2):
        hs.shard.sweep()
        left.append(len(hs.shard.sessions))
    assert left == [3, 1, 0]
    assert hs.shard.store.history(1, 0, 10) == []
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert hs.shard.sessions == {}


def test_history_comes_from_the_store(hs: Harness) -> None:
    tid = hs.start()
    hs.clock.advance(10)
    ok(hs.update(tid, 5.61, -0.19))
    hs.clock.advance(10)
    ok(hs.update(tid, 5.62, -0.19, PICKED_UP))
    t0 = int(hs.clock()) - 20
    assert hs.history(tid) == [
        HistoryItem(1, Status.ASSIGNED, None, None, None, t0),
        HistoryItem(2, Status.ASSIGNED, None, 5.61, -0.19, t0 + 10),
        HistoryItem(3, PICKED_UP, Status.ASSIGNED, 5.62, -0.19, t0 + 20),
    ]
    assert [i.seq for i in hs.history(tid, 1)] == [2, 3]
    assert [i.seq for i in hs.history(tid, 0, 2)] == [1, 2]


def test_a_failed_journal_write_is_unavailable_and_memory_goes_back(hs: Harness) -> None:
    tid = hs.start("ORD-1")
    hs.watch(tid, "gw-1")
    journaled = ok(hs.update(tid, 5.61, -0.19))
    base, evs = hs.events("gw-1")
    ack = base + len(evs)
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore | BrokenDiskPostgres)

    store.broken = True
    results = hs.shard.handle([
        Update(tid, 5.70, -0.10, PICKED_UP, "RIDER-1"),
        Start("ORD-2", "RIDER-2", *DROP, None),
        Unwatch(tid, "gw-9"),
    ])  # fmt: skip
    assert [err(r)[0] for r in results[:2]] == ["unavailable", "unavailable"]
    assert "retry" in err(results[0])[1]
    assert results[2] == Ok(None) or unavailable(results[2])
    # Until the shard has reloaded from its store, it answers nothing out of its memory.
    assert unavailable(hs.get(tid))
    assert hs.events("gw-1", ack)[1] == []  # nothing was announced
    # A readiness check that asks for writes is refused, with the reason, until one succeeds.
    code, detail = err(hs.one(Ping(True)))
    assert code == "unavailable"
    assert "database or disk is full" in detail
    # After the backoff it reloads (once): memory is the journaled state again, the update
    # and the new session never happened.
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    assert ok(hs.get(tid)) == journaled
    assert hs.rider("RIDER-2") is None
    assert hs.events("gw-1", ack)[1] == []
    assert ok(hs.one(Ping(False))) == 1
    assert unavailable(hs.one(Ping(True)))

    store.broken = False
    retried = ok(hs.update(tid, 5.70, -0.10, PICKED_UP))
    assert retried["seq"] == journaled["seq"] + 1
    hs.start("ORD-2", "RIDER-2")
    assert [(e.kind, e.seq) for e in hs.events("gw-1", ack)[1]] == [(U, 3), (S, 3)]
    assert ok(hs.one(Ping(True))) == 2


def test_a_read_batched_after_a_failed_write_does_not_see_it(hs: Harness) -> None:
    tid = hs.start("ORD-1")
    journaled = ok(hs.update(tid, 5.61, -0.19))
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore | BrokenDiskPostgres)
    store.broken = True
    results = hs.shard.handle([
        Update(tid, 5.70, -0.10, PICKED_UP, "RIDER-1"),
        Get(tid),
        Watch(tid, "gw-1"),
    ])  # fmt: skip
    assert err(results[0])[0] == "unavailable"
    # Either refused too, or the journaled state: never the seq that the next write reuses.
    got, watched = results[1:]
    assert unavailable(got) or ok(got) == journaled
    assert unavailable(watched) or (
        view_of(ok(watched)) == journaled and ok(watched).seq == journaled["seq"]
    )
    store.broken = False
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    assert ok(hs.get(tid)) == journaled


def test_a_full_disk_reloads_the_shard_once_per_backoff_not_per_batch(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 9: a failing commit used to reload the whole shard under its lock for every
    # batch, so a full disk became a stall.
    tid = hs.start("ORD-1")
    journaled = ok(hs.update(tid, 5.61, -0.19))
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore | BrokenDiskPostgres)
    loads: list[int] = []
    load = store.load_sessions

    def counted(lt: Lifetimes) -> list[Session]:
        loads.append(1)
        return load(lt)

    monkeypatch.setattr(store, "load_sessions", counted)
    store.broken = True
    for _ in range(50):
        assert unavailable(hs.update(tid, 5.7, -0.1))
    assert loads == []
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    assert unavailable(hs.update(tid, 5.7, -0.1))  # one reload, then this commit fails too
    assert len(loads) == 1
    # Commits keep failing: the next reload waits twice as long.
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    assert unavailable(hs.get(tid))
    assert len(loads) == 1
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    assert ok(hs.get(tid)) == journaled  # a read commits nothing
    assert len(loads) == 2
    store.broken = False
    assert ok(hs.update(tid, 5.7, -0.1))["seq"] == journaled["seq"] + 1
    assert ok(hs.one(Ping(True))) == 1


def test_a_reload_that_fails_keeps_the_sessions_it_had(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finding 9: when the reload after a failed commit failed too, the shard had cleared its
    # memory already and answered 404 for live deliveries.
    tid = hs.start("ORD-1")
    journaled = ok(hs.update(tid, 5.61, -0.19))
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore | BrokenDiskPostgres)
    load = store.load_sessions

    def unreadable(lt: Lifetimes) -> list[Session]:
        raise sqlite3.OperationalError("disk I/O error")

    store.broken = True
    assert unavailable(hs.update(tid, 5.7, -0.1))
    monkeypatch.setattr(store, "load_sessions", unreadable)
    hs.clock.advance(shard_module.RELOAD_BACKOFF_S)
    code, detail = err(hs.get(tid))
    assert code == "unavailable"  # never not_found: the session is still there
    assert "disk I/O error" in detail
    assert tid in hs.shard.sessions
    monkeypatch.setattr(store, "load_sessions", load)
    store.broken = False
    hs.clock.advance(shard_module.RELOAD_BACKOFF_MAX_S)
    assert ok(hs.get(tid)) == journaled


# -- the host: calls, polls and background work on threads ---------------------------------


def test_a_waiting_poll_wakes_for_events_no_reply_carried(h: Harness) -> None:
    host = ShardHost(h.shard, sweep_interval_s=60, background=False)
    tid = h.start()
    assert isinstance(ok(host.call([Watch(tid, "gw-a")]).results[0]), Watched)
    assert isinstance(ok(host.call([Watch(tid, "gw-b")]).results[0]), Watched)
    got: list[Feed] = []
    poller = threading.Thread(target=lambda: got.append(host.poll(Channel("gw-a", 0, 1), 30.0)))
    poller.start()
    # gw-b's own call carries the event to gw-b; gw-a's waiting poll is woken for it.
    reply = host.call([Update(tid, 5.61, -0.19, None, "RIDER-1")], Channel("gw-b", 0, 1))
    ok(reply.results[0])
    assert reply.feed is not None
    assert [e.seq for e in reply.feed.events] == [2]
    poller.join(timeout=timeout(30))
    assert not poller.is_alive()
    feed = got[0]
    assert (feed.epoch, feed.base, [e.seq for e in feed.events]) == (host.epoch, 0, [2])
    # gw-a acknowledges; its next poll waits, and a call carrying its channel takes its event
    # without waking it.
    assert host.poll(Channel("gw-a", 1, 1), 0.0).events == []
    reply = host.call([Update(tid, 5.62, -0.19, None, "RIDER-1")], Channel("gw-a", 1, 1))
    assert reply.feed is not None
    assert [e.seq for e in reply.feed.events] == [3]
    assert not h.shard.has_unsent("gw-a")
    # Without a channel, a reply carries no events.
    assert host.call([Get(tid)]).feed is None


def test_a_newer_poll_releases_the_older_and_close_releases_all(h: Harness) -> None:
    host = ShardHost(h.shard, sweep_interval_s=60, background=False)
    done: list[str] = []

    def poll(name: str) -> None:
        host.poll(Channel("gw-a", 0, 1), 30.0)
        done.append(name)

    first = threading.Thread(target=poll, args=("first",))
    first.start()
    assert asyncio.run(until(lambda: "gw-a" in host._polls, 10))
    second = threading.Thread(target=poll, args=("second",))
    second.start()
    first.join(timeout=timeout(30))
    assert done == ["first"]  # superseded, not left to time out
    host.close()
    second.join(timeout=timeout(30))
    assert done == ["first", "second"]
