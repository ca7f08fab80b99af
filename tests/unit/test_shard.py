"""A shard hosting many sessions, driven by batches of commands, with a manual clock.

Each behaviour runs over both a NullStore and a real SqliteStore in tmp_path; journal-specific
behaviour (reload, history, a failing commit) runs over SqliteStore.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import host as host_module
from engine import shard as shard_module
from engine.clock import ManualClock
from engine.host import ShardHost
from engine.integrations import OutboxItem
from engine.routing import shard_of
from engine.session import Lifetimes, Session
from engine.shard import GATEWAY_IDLE_S, Command, Result, Shard, ShardConfig
from engine.store import Entry, NullStore, SqliteStore, Store
from tests.support import until

LT = Lifetimes(session_ttl_s=1000.0, delivered_ttl_s=100.0, purge_after_s=50.0, speed_kmh=30.0)
N_SHARDS, INDEX = 4, 2
DROP = (5.6037, -0.1869)
EXPIRED = {"type": "error", "message": "Tracking session expired"}


class BrokenDiskStore(SqliteStore):
    """A real SqliteStore whose commits fail while `broken` is set (a full or failing disk)."""

    broken = False

    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        super().commit(created, entries, outbox)


def decode(value: Any) -> Any:
    """Views may come back encoded once as JSON (bytes) or as dicts; tests compare dicts.

    A rider lookup answers (start time, id, view): the view is what the tests compare."""
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], bytes):
        value = value[2]
    return orjson.loads(value) if isinstance(value, bytes | bytearray) else value


def ok(result: Result) -> Any:
    assert result[0] == "ok", result
    return decode(result[1])


def err(result: Result) -> tuple[str, str]:
    assert result[0] == "err", result
    return result[1], result[2]


def unavailable(result: Result) -> bool:
    return result[:2] == ("err", "unavailable")


class Harness:
    def __init__(self, make_store: Callable[[], Store], clock: ManualClock) -> None:
        self.make_store = make_store
        self.clock = clock
        self.shard = self.fresh()

    def fresh(self) -> Shard:
        cfg = ShardConfig(index=INDEX, n_shards=N_SHARDS, lifetimes=LT)
        return Shard(cfg, self.make_store(), self.clock)

    def one(self, cmd: Command) -> Result:
        return self.shard.handle([cmd])[0]

    def start(self, order: str = "ORD-1", rider: str = "RIDER-1", phone: str | None = None) -> str:
        view = ok(self.one(("start", order, rider, *DROP, phone)))
        tid: str = view["tracking_id"]
        return tid

    def update(
        self, tid: str, lat: float = 5.61, lng: float = -0.19, status: str | None = None,
        rider: str | None = "RIDER-1",
    ) -> Result:  # fmt: skip
        return self.one(("update", tid, lat, lng, status, rider))

    def get(self, tid: str) -> Result:
        return self.one(("get", tid))

    def events(self, gw: str, ack: int = 0) -> tuple[int, list[tuple[str, str, int, Any]]]:
        base, evs = self.shard.take(gw, ack, 1)
        # (tracking_id, kind, seq, encoded message, ...): later fields are for measurements.
        return base, [(e[0], e[1], e[2], orjson.loads(e[3])) for e in evs]


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


@pytest.fixture
def hs(tmp_path: Path) -> Iterator[Harness]:
    """SqliteStore only (the journal's own behaviour)."""
    opened: list[Store] = []

    def make_store() -> Store:
        store = BrokenDiskStore(tmp_path / "s.db")
        opened.append(store)
        return store

    yield Harness(make_store, ManualClock())
    for store in opened:
        store.close()


# -- start, update, get ----------------------------------------------------------------------


def test_start(h: Harness) -> None:
    view = ok(h.one(("start", "ORD-1", "RIDER-1", *DROP, "+233 20 555 0101")))
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
    view = ok(h.update(tid, 5.62, -0.18, "PICKED_UP"))
    assert view["status"] == "PICKED_UP"
    assert view["seq"] == 2
    assert view["current_location"] == {"lat": 5.62, "lng": -0.18, "timestamp": int(h.clock())}
    assert isinstance(view["eta_seconds"], int)
    assert view["eta_seconds"] >= 60
    assert ok(h.get(tid)) == view


def test_seq_is_gap_free_over_many_batches(h: Harness) -> None:
    tid = h.start()
    for i in range(10):
        results = h.shard.handle([("update", tid, 5.6 + i / 100, -0.19, None, "RIDER-1")] * 3)
        assert [ok(r)["seq"] for r in results] == [2 + 3 * i, 3 + 3 * i, 4 + 3 * i]
    assert ok(h.get(tid))["seq"] == 31


@pytest.mark.parametrize(
    "cmd",
    [
        ("get", "TRK-nope"),
        ("update", "TRK-nope", 5.6, -0.19, None, "RIDER-1"),
        ("watch", "TRK-nope", "gw-1"),
        ("history", "TRK-nope", 0, 10),
    ],
)
def test_unknown_sessions_are_not_found(h: Harness, cmd: Command) -> None:
    assert err(h.one(cmd))[0] == "not_found"


def test_status_rules_apply_and_refusals_change_nothing(h: Harness) -> None:
    tid = h.start()
    before = ok(h.get(tid))
    code, detail = err(h.update(tid, status="IN_TRANSIT"))
    assert code == "conflict"
    assert "PICKED_UP" in detail
    code, _ = err(h.update(tid, status="LOST"))
    assert code == "invalid"
    assert ok(h.get(tid)) == before
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        ok(h.update(tid, status=status))
    delivered = ok(h.get(tid))
    assert delivered["eta_seconds"] == 0
    assert err(h.update(tid))[0] == "conflict"
    assert err(h.update(tid, status="DELIVERED"))[0] == "conflict"
    assert ok(h.get(tid)) == delivered


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
    code, detail = err(h.one(("start", "ORD-1", "RIDER-2", *DROP, None)))
    assert code == "conflict"
    assert "ORD-1" in detail
    h.start("ORD-2")  # another order is fine
    h.clock.advance(LT.session_ttl_s)
    second = h.start("ORD-1")  # the first one has expired
    assert second != first
    assert ok(h.get(second))["order_id"] == "ORD-1"
    assert err(h.get(first))[0] == "expired"


def test_an_order_is_free_again_once_its_delivered_session_expires(h: Harness) -> None:
    tid = h.start("ORD-1")
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        ok(h.update(tid, status=status))
    assert err(h.one(("start", "ORD-1", "RIDER-1", *DROP, None)))[0] == "conflict"
    h.clock.advance(LT.delivered_ttl_s)
    h.start("ORD-1")


def test_rider_lookup_finds_the_newest_live_session(h: Harness) -> None:
    assert ok(h.one(("rider", "RIDER-1"))) is None
    older = h.start("ORD-1", "RIDER-1")
    h.clock.advance(5)
    newer = h.start("ORD-2", "RIDER-1")
    h.start("ORD-3", "RIDER-2")
    assert ok(h.one(("rider", "RIDER-1")))["tracking_id"] == newer
    # Deliver the newer one; once its delivered TTL runs out, the older one is the answer.
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        ok(h.update(newer, status=status))
    assert ok(h.one(("rider", "RIDER-1")))["tracking_id"] == newer
    h.clock.advance(LT.delivered_ttl_s)
    assert ok(h.one(("rider", "RIDER-1")))["tracking_id"] == older
    h.clock.advance(LT.session_ttl_s)
    assert ok(h.one(("rider", "RIDER-1"))) is None
    assert ok(h.one(("rider", "RIDER-9"))) is None


# -- watchers and the gateways' event queues -------------------------------------------------


def test_events_reach_watching_gateways_only_in_order(h: Harness) -> None:
    a, b = h.start("ORD-A"), h.start("ORD-B")
    initial = ok(h.one(("watch", a, "gw-1")))
    assert initial == ok(h.get(a))
    ok(h.one(("watch", b, "gw-2")))
    ok(h.update(a, 5.61, -0.19))
    ok(h.update(b, 5.70, -0.10))
    ok(h.update(a, 5.62, -0.19, "PICKED_UP"))
    h.shard.handle([
        ("update", a, 5.63, -0.19, None, "RIDER-1"),
        ("update", a, 5.64, -0.19, "IN_TRANSIT", "RIDER-1"),
    ])  # fmt: skip
    base, evs = h.events("gw-1")
    assert base == 0
    assert [(tid, kind, seq) for tid, kind, seq, _ in evs] == [
        (a, "u", 2), (a, "u", 3), (a, "s", 3), (a, "u", 4), (a, "u", 5), (a, "s", 5),
    ]  # fmt: skip
    assert all(msg["type"] == "location_update" for _, k, _, msg in evs if k == "u")
    for _, _, seq, msg in evs:
        assert msg["data"]["seq"] == seq
        assert msg["data"]["tracking_id"] == a
    changes = [msg for _, k, _, msg in evs if k == "s"]
    assert [m["type"] for m in changes] == ["status_change", "status_change"]
    assert [(m["data"]["previous_status"], m["data"]["status"]) for m in changes] == [
        ("ASSIGNED", "PICKED_UP"), ("PICKED_UP", "IN_TRANSIT"),
    ]  # fmt: skip
    # The status change carries the same view as its location update, plus previous_status.
    u3 = evs[1][3]["data"]
    s3 = evs[2][3]["data"]
    assert {k: v for k, v in s3.items() if k != "previous_status"} == u3
    assert (u3["seq"], u3["status"], u3["current_location"]["lat"]) == (3, "PICKED_UP", 5.62)
    _, evs_b = h.events("gw-2")
    assert [(tid, kind, seq) for tid, kind, seq, _ in evs_b] == [(b, "u", 2)]
    _, nothing = h.events("gw-3")
    assert nothing == []


def test_acknowledged_events_are_dropped(h: Harness) -> None:
    tid = h.start()
    ok(h.one(("watch", tid, "gw-1")))
    for _ in range(5):
        ok(h.update(tid))
    base, evs = h.events("gw-1")
    assert (base, [e[2] for e in evs]) == (0, [2, 3, 4, 5, 6])
    # Acknowledge the first two: they are gone, the cursor moves on.
    base, evs = h.events("gw-1", ack=2)
    assert (base, [e[2] for e in evs]) == (2, [4, 5, 6])
    # Asking again with an older cursor does not bring anything back.
    base, evs = h.events("gw-1", ack=1)
    assert (base, [e[2] for e in evs]) == (2, [4, 5, 6])
    assert h.shard.has_events("gw-1", 4)
    assert not h.shard.has_events("gw-1", 5)
    base, evs = h.events("gw-1", ack=5)
    assert (base, evs) == (5, [])
    ok(h.update(tid))
    base, evs = h.events("gw-1", ack=5)
    assert (base, [e[2] for e in evs]) == (5, [7])
    assert h.shard.has_events("gw-1", 5)


def test_watch_then_unwatch(h: Harness) -> None:
    tid = h.start()
    ok(h.update(tid))  # before anyone watches: not queued for anyone
    ok(h.one(("watch", tid, "gw-1")))
    ok(h.one(("watch", tid, "gw-2")))
    ok(h.update(tid))
    assert [e[2] for e in h.events("gw-1")[1]] == [3]
    assert [e[2] for e in h.events("gw-2")[1]] == [3]
    assert ok(h.one(("unwatch", tid, "gw-1"))) is None
    ok(h.update(tid))
    assert [e[2] for e in h.events("gw-1")[1]] == [3]
    assert [e[2] for e in h.events("gw-2")[1]] == [3, 4]
    ok(h.one(("unwatch", tid, "gw-2")))
    ok(h.one(("unwatch", tid, "gw-2")))  # twice is harmless
    ok(h.update(tid))
    assert [e[2] for e in h.events("gw-2")[1]] == [3, 4]


def test_a_gateway_that_stops_polling_is_forgotten(h: Harness) -> None:
    tid = h.start()
    ok(h.one(("watch", tid, "gw-1")))
    h.events("gw-1")
    h.clock.advance(GATEWAY_IDLE_S + 1)
    h.shard.sweep()
    assert h.shard.stats(h.clock())["watched_sessions"] == 0
    ok(h.update(tid))
    assert h.events("gw-1")[1] == []


# -- expiry ----------------------------------------------------------------------------------


def test_sweep_expires_notifies_watchers_then_purges(h: Harness) -> None:
    tid = h.start("ORD-1")
    h.clock.advance(10)
    later = h.start("ORD-2")
    ok(h.one(("watch", tid, "gw-1")))
    ok(h.one(("watch", later, "gw-1")))
    h.clock.advance(LT.session_ttl_s - 10 - 1)
    assert h.events("gw-1") == (0, [])  # the gateway keeps polling
    assert h.shard.sweep() == []
    h.clock.advance(1)
    assert err(h.get(tid)) == ("expired", "Tracking session expired")
    assert ok(h.get(later))["tracking_id"] == later
    assert h.shard.sweep() == [tid]
    base, evs = h.events("gw-1")
    assert (base, [(t, k) for t, k, _, _ in evs]) == (0, [(tid, "x")])
    assert evs[0][3] == EXPIRED
    assert h.shard.sweep() == []  # announced once
    for cmd in (("get", tid), ("update", tid, 5.6, -0.19, None, "RIDER-1"),
                ("watch", tid, "gw-2")):  # fmt: skip
        assert err(h.one(cmd))[0] == "expired"
    h.clock.advance(LT.purge_after_s - 1)
    h.events("gw-1", ack=1)
    assert h.shard.sweep() == [later]
    assert err(h.get(tid))[0] == "expired"
    h.clock.advance(1)
    h.shard.sweep()
    assert err(h.get(tid))[0] == "not_found"
    assert err(h.one(("history", tid, 0, 10)))[0] == "not_found"
    assert err(h.get(later))[0] == "expired"
    assert [(t, k) for t, k, _, _ in h.events("gw-1", ack=1)[1]] == [(later, "x")]


def test_a_delivered_session_expires_after_the_delivered_ttl(h: Harness) -> None:
    tid = h.start()
    ok(h.one(("watch", tid, "gw-1")))
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        ok(h.update(tid, status=status))
    base, evs = h.events("gw-1")
    h.events("gw-1", ack=base + len(evs))
    h.clock.advance(LT.delivered_ttl_s - 0.5)
    assert h.shard.sweep() == []
    h.clock.advance(0.5)
    assert h.shard.sweep() == [tid]
    _, evs = h.events("gw-1", ack=base + len(evs))
    assert [(t, k) for t, k, _, _ in evs] == [(tid, "x")]


# -- statistics and small reads --------------------------------------------------------------


def test_stats(h: Harness) -> None:
    a, b, c = h.start("ORD-A"), h.start("ORD-B"), h.start("ORD-C")
    for status in ("PICKED_UP", "IN_TRANSIT"):
        ok(h.update(b, status=status))
    ok(h.one(("watch", a, "gw-1")))
    h.clock.advance(400)
    h.shard.take("gw-1", 0, 7)
    ok(h.update(a))
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        ok(h.update(c, status=status))
    stats = ok(h.one(("stats",)))
    assert stats["total_active_sessions"] == 3
    assert stats["status_distribution"] == {
        "ASSIGNED": 1, "PICKED_UP": 0, "IN_TRANSIT": 1, "DELIVERED": 1,
    }  # fmt: skip
    assert stats["sessions_by_recency"] == {"last_5_min": 2, "last_hour": 1, "older": 0}
    assert stats["websocket_connections_by_gateway"] == {"gw-1": 7}
    assert stats["watched_sessions"] == 1
    h.clock.advance(LT.delivered_ttl_s)  # c expired: no longer counted
    stats = ok(h.one(("stats",)))
    assert stats["total_active_sessions"] == 2
    assert stats["status_distribution"]["DELIVERED"] == 0
    h.clock.advance(LT.session_ttl_s)
    stats = ok(h.one(("stats",)))
    assert stats["total_active_sessions"] == 0
    assert sum(stats["sessions_by_recency"].values()) == 0


def test_ping_and_snapshot(h: Harness) -> None:
    tids = [h.start(f"ORD-{i}") for i in range(3)]
    ok(h.update(tids[0], 5.7, -0.1))
    assert ok(h.one(("ping",))) == 3
    snap = ok(h.one(("snapshot", 10)))
    assert sorted(row[0] for row in snap) == sorted(tids)
    assert [tids[0], "ASSIGNED", 5.7, -0.1] == next(r for r in snap if r[0] == tids[0])[:4]
    assert len(ok(h.one(("snapshot", 2)))) == 2


# -- batches ---------------------------------------------------------------------------------


def test_failing_commands_do_not_affect_the_rest_of_the_batch(h: Harness) -> None:
    tid = h.start("ORD-1")
    results = h.shard.handle([
        ("update", tid, 5.61, -0.19, None, "RIDER-1"),
        ("update", "TRK-unknown", 5.6, -0.19, None, "RIDER-1"),
        ("update", tid, 5.6, -0.19, None, "RIDER-2"),
        ("update", tid, 5.6, -0.19, "DELIVERED", "RIDER-1"),
        ("update", tid, 5.6, -0.19, "bogus", "RIDER-1"),
        ("start", "ORD-1", "RIDER-1", *DROP, None),
        ("no-such-command",),
        ("update", tid),  # malformed: a bug in a caller, not a reason to fail the others
        ("update", tid, 5.62, -0.19, "PICKED_UP", "RIDER-1"),
        ("start", "ORD-2", "RIDER-1", *DROP, None),
        ("get", tid),
    ])  # fmt: skip
    assert [r[0] for r in results] == ["ok", *["err"] * 7, "ok", "ok", "ok"]
    assert [r[1] for r in results[1:8]] == [
        "not_found", "forbidden", "conflict", "invalid", "conflict", "error", "error",
    ]  # fmt: skip
    assert ok(results[0])["seq"] == 2
    assert ok(results[8])["seq"] == 3
    assert ok(results[10]) == ok(results[8])
    assert ok(results[9])["order_id"] == "ORD-2"


# -- the journal (SqliteStore) ---------------------------------------------------------------


def test_reloading_from_the_store_gives_the_same_sessions(hs: Harness) -> None:
    tids = []
    for i in range(4):
        hs.clock.advance(1)  # distinct start times: "newest" must be well defined
        tids.append(hs.start(f"ORD-{i}", f"RIDER-{i % 2}", phone="+233 20 555 0101"))
    ok(hs.update(tids[0], 5.61, -0.19, rider="RIDER-0"))
    for status in ("PICKED_UP", "IN_TRANSIT"):
        hs.clock.advance(3)
        ok(hs.update(tids[1], 5.62, -0.18, status, rider="RIDER-1"))
    for status in ("PICKED_UP", "IN_TRANSIT", "DELIVERED"):
        hs.clock.advance(3)
        ok(hs.update(tids[2], 5.60, -0.18, status, rider="RIDER-0"))
    views = {t: ok(hs.get(t)) for t in tids}
    riders = {r: ok(hs.one(("rider", r))) for r in ("RIDER-0", "RIDER-1")}

    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert {t: ok(hs.get(t)) for t in tids} == views
    assert {r: ok(hs.one(("rider", r))) for r in ("RIDER-0", "RIDER-1")} == riders
    assert hs.shard.sessions[tids[0]].phone == "+233 20 555 0101"
    # Rules survive the restart: one live session per order, seq continues, expiry timers.
    assert err(hs.one(("start", "ORD-0", "RIDER-0", *DROP, None)))[0] == "conflict"
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
    ok(hs.update(tids[0], 5.7, -0.19, "PICKED_UP"))  # after the checkpoint
    views = {t: ok(hs.get(t)) for t in tids}
    history = {t: ok(hs.one(("history", t, 0, 100))) for t in tids}
    hs.shard.store.close()
    hs.shard = hs.fresh()
    assert {t: ok(hs.get(t)) for t in tids} == views
    assert {t: ok(hs.one(("history", t, 0, 100))) for t in tids} == history
    # New changes extend each session's chain, wherever its last one was read from.
    ok(hs.update(tids[1], 5.8, -0.19))
    assert [i["seq"] for i in ok(hs.one(("history", tids[1], 0, 100)))] == [1, 2, 3, 4, 5]
    assert [i["seq"] for i in ok(hs.one(("history", tids[0], 3, 100)))] == [4, 5]


def test_a_checkpoint_gives_up_when_the_shard_reloads_under_it(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_module, "CHECKPOINT_SLICE", 1)
    tids = [hs.start(f"ORD-{i}") for i in range(3)]
    host = ShardHost(hs.shard, sweep_interval_s=60, background=False)
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore)

    def a_batch_fails() -> None:  # between two slices of the checkpoint
        store.broken = True  # this batch fails: the shard reloads from the journal
        assert unavailable(hs.update(tids[2], 5.9, -0.19))
        store.broken = False

    assert host.checkpoint(between_slices=a_batch_fails) is False
    assert not store.checkpoint.exists()


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
    ok(hs.update(tid, 5.62, -0.19, "PICKED_UP"))
    t0 = int(hs.clock()) - 20
    items = ok(hs.one(("history", tid, 0, 100)))
    assert items == [
        {"seq": 1, "status": "ASSIGNED", "previous_status": None, "lat": None, "lng": None,
         "at": t0},
        {"seq": 2, "status": "ASSIGNED", "previous_status": None, "lat": 5.61, "lng": -0.19,
         "at": t0 + 10},
        {"seq": 3, "status": "PICKED_UP", "previous_status": "ASSIGNED", "lat": 5.62,
         "lng": -0.19, "at": t0 + 20},
    ]  # fmt: skip
    assert [i["seq"] for i in ok(hs.one(("history", tid, 1, 100)))] == [2, 3]
    assert [i["seq"] for i in ok(hs.one(("history", tid, 0, 2)))] == [1, 2]


def test_a_failed_journal_write_is_unavailable_and_memory_goes_back(hs: Harness) -> None:
    tid = hs.start("ORD-1")
    ok(hs.one(("watch", tid, "gw-1")))
    journaled = ok(hs.update(tid, 5.61, -0.19))
    base, evs = hs.events("gw-1")
    ack = base + len(evs)
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore)

    store.broken = True
    results = hs.shard.handle([
        ("update", tid, 5.70, -0.10, "PICKED_UP", "RIDER-1"),
        ("start", "ORD-2", "RIDER-2", *DROP, None),
        ("unwatch", tid, "gw-9"),
    ])  # fmt: skip
    assert [err(r)[0] for r in results[:2]] == ["unavailable", "unavailable"]
    assert "retry" in err(results[0])[1]
    assert results[2] == ("ok", None) or unavailable(results[2])
    # Memory is the journaled state again: the update and the new session never happened.
    assert ok(hs.get(tid)) == journaled
    assert ok(hs.one(("rider", "RIDER-2"))) is None
    assert hs.events("gw-1", ack)[1] == []  # nothing was announced

    store.broken = False
    retried = ok(hs.update(tid, 5.70, -0.10, "PICKED_UP"))
    assert retried["seq"] == journaled["seq"] + 1
    hs.start("ORD-2", "RIDER-2")
    assert [e[2] for e in hs.events("gw-1", ack)[1]] == [3, 3]


def test_a_read_batched_after_a_failed_write_does_not_see_it(hs: Harness) -> None:
    tid = hs.start("ORD-1")
    journaled = ok(hs.update(tid, 5.61, -0.19))
    store = hs.shard.store
    assert isinstance(store, BrokenDiskStore)
    store.broken = True
    results = hs.shard.handle([
        ("update", tid, 5.70, -0.10, "PICKED_UP", "RIDER-1"),
        ("get", tid),
        ("watch", tid, "gw-1"),
    ])  # fmt: skip
    assert err(results[0])[0] == "unavailable"
    # Either refused too, or the journaled state: never the seq that the next write reuses.
    for r in results[1:]:
        assert unavailable(r) or decode(r[1]) == journaled
    store.broken = False
    assert ok(hs.get(tid)) == journaled


# -- the host: calls, polls and background work on threads ---------------------------------


def test_a_waiting_poll_wakes_for_events_no_reply_carried(h: Harness) -> None:
    host = ShardHost(h.shard, sweep_interval_s=60, background=False)
    tid = h.start()
    ok(host.call([("watch", tid, "gw-a")])[0][0])
    ok(host.call([("watch", tid, "gw-b")])[0][0])
    got: list[tuple[str, int, list[Any]]] = []
    poller = threading.Thread(target=lambda: got.append(host.poll("gw-a", 0, 1, 30.0)))
    poller.start()
    # gw-b's own call carries the event to gw-b; gw-a's waiting poll is woken for it.
    results, feed = host.call([("update", tid, 5.61, -0.19, None, "RIDER-1")], ("gw-b", 0, 1))
    ok(results[0])
    assert feed is not None
    assert [e[2] for e in feed[2]] == [2]
    poller.join(timeout=30)
    assert not poller.is_alive()
    epoch, base, events = got[0]
    assert (epoch, base, [e[2] for e in events]) == (host.epoch, 0, [2])
    # gw-a acknowledges; its next poll waits, and a call carrying its channel takes its event
    # without waking it.
    assert host.poll("gw-a", 1, 1, 0.0)[2] == []
    _, feed = host.call([("update", tid, 5.62, -0.19, None, "RIDER-1")], ("gw-a", 1, 1))
    assert feed is not None
    assert [e[2] for e in feed[2]] == [3]
    assert not h.shard.has_unsent("gw-a")


def test_a_newer_poll_releases_the_older_and_close_releases_all(h: Harness) -> None:
    host = ShardHost(h.shard, sweep_interval_s=60, background=False)
    done: list[str] = []

    def poll(name: str) -> None:
        host.poll("gw-a", 0, 1, 30.0)
        done.append(name)

    first = threading.Thread(target=poll, args=("first",))
    first.start()
    assert asyncio.run(until(lambda: "gw-a" in host._polls, 10))
    second = threading.Thread(target=poll, args=("second",))
    second.start()
    first.join(timeout=30)
    assert done == ["first"]  # superseded, not left to time out
    host.close()
    second.join(timeout=30)
    assert done == ["first", "second"]
