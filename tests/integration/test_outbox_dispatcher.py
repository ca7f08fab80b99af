"""The outbox dispatcher against real stub services on loopback.

Outbox rows are produced by real shards writing to a real store, each test on both stores (what
a change owes, in the same transaction as the change); the dispatcher under test runs in this
process's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from engine.clock import system_clock
from engine.dispatcher import Dispatcher
from engine.domain.integrations import NOTIFICATION, ORDER, OutboxItem
from engine.domain.outbox_policy import Backoff
from engine.domain.session import Lifetimes
from engine.domain.status import Status
from engine.protocol import Ok, Start, Update
from engine.settings import Settings
from engine.shard import Shard, ShardConfig
from sim.integrations import order_of
from sim.stubs import IntegrationStubs
from tests.outbox_contract import (
    Owed,
    all_delivered,
    check_call,
    check_order_per_session,
    delivered_keys,
    owed_for_walk,
)
from tests.stores import StoreBackend
from tests.support import timeout
from tests.support import until as _until

SECRET = "outbox-test-secret-" + "x" * 24  # signs the service token
USERS_SECRET = "users-jwt-secret-" + "y" * 24  # the users' tokens: never sent anywhere
SHARDS = 2
WALK = ("PICKED_UP", "IN_TRANSIT", "DELIVERED")
FAST = Backoff(base_s=0.02, cap_s=0.3)  # the policy is unit-tested; keep the waits short here


@pytest.fixture
def stubs() -> Iterator[IntegrationStubs]:
    with IntegrationStubs() as s:
        yield s


def _settings(backend: StoreBackend, stubs: IntegrationStubs | None, **over: Any) -> Settings:
    values: dict[str, Any] = {
        **backend.settings(), "shards": SHARDS, "jwt_secret": USERS_SECRET,
        "service_secret": SECRET,
        "order_service_url": stubs.orders.url if stubs else None,
        "notification_service_url": stubs.notifications.url if stubs else None,
    }
    values.update(over)
    return Settings(**values)


def _view(result: Any) -> dict[str, Any]:
    """An accepted start or update: the view's JSON the shard encoded, decoded."""
    assert isinstance(result, Ok), result
    assert isinstance(result.value, bytes), result
    out: dict[str, Any] = orjson.loads(result.value)
    return out


def _make_sessions(
    backend: StoreBackend, n: int, walk: tuple[str, ...] = WALK, *, orders: bool = True,
    notifications: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[Owed]]]:
    """Start `n` sessions on real shards with real store files and walk them through `walk`."""
    lifetimes = Lifetimes(86400.0, 3600.0, 3600.0, 30.0)
    sessions: dict[str, dict[str, Any]] = {}
    owed: dict[str, list[Owed]] = {}
    for index in range(SHARDS):
        cfg = ShardConfig(index, SHARDS, lifetimes, orders, notifications)
        store = backend.open(index, SHARDS)
        shard = Shard(cfg, store, system_clock)
        try:
            for k in range(index, n, SHARDS):
                phone = f"+23320{k:07d}"
                order_id, rider_id = f"ORD-{k}", f"RIDER-{k}"
                [started] = shard.handle([Start(order_id, rider_id, 5.6, -0.18, phone)])
                tid = _view(started)["tracking_id"]
                for st in walk:
                    [updated] = shard.handle([Update(tid, 5.61, -0.181, Status(st), rider_id)])
                    assert _view(updated)["status"] == st
                sessions[tid] = {"order_id": order_id, "rider_id": rider_id, "phone": phone}
                owed[tid] = [o for o in owed_for_walk(tid, walk, phone)
                             if (o.target == "order" and orders)
                             or (o.target == "notification" and notifications)]
        finally:
            store.close()
    return sessions, owed


async def _drained(d: Dispatcher, seconds: float = 10) -> dict[str, int]:
    """Counts once no call is pending (the marks follow the stub's answers by a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    counts = await d.counts()
    while counts["pending"] and loop.time() < deadline:
        await asyncio.sleep(0.05)
        counts = await d.counts()
    return counts


async def _with_dispatcher(d: Dispatcher, body: Callable[[], Any]) -> Any:
    task = asyncio.create_task(d.run())
    try:
        return await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await d.close()


def _check_everything_arrived(
    stubs: IntegrationStubs, sessions: dict[str, dict[str, Any]], owed: dict[str, list[Owed]],
    parked: frozenset[str] = frozenset(),
) -> None:
    orders, notes = stubs.orders.requests, stubs.notifications.requests
    for r in orders + notes:
        check_call(r, SECRET, sessions, users_secret=USERS_SECRET)
    want = {o.key for calls in owed.values() for o in calls} - parked
    assert want <= delivered_keys(orders) | delivered_keys(notes)
    check_order_per_session(orders, owed, parked)
    check_order_per_session(notes, owed, parked)


def test_every_owed_call_arrives_with_the_contract_body_key_and_service_token(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    sessions, owed = _make_sessions(backend, 12)
    d = Dispatcher(_settings(backend, stubs), rng=random.Random(1), backoff=FAST)

    async def body() -> dict[str, int]:
        assert await _until(lambda: all_delivered(
            stubs.orders.requests, stubs.notifications.requests, owed), 30)
        return await _drained(d)

    counts = asyncio.run(_with_dispatcher(d, body))
    _check_everything_arrived(stubs, sessions, owed)
    total = sum(len(c) for c in owed.values())
    assert len(stubs.orders.requests) + len(stubs.notifications.requests) == total
    assert counts == {"pending": 0, "done": total, "dead": 0, "retries": 0}


def test_receiver_down_then_back_gets_every_call_in_order_per_session(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    sessions, owed = _make_sessions(backend, 10)
    stubs.notifications.go_down(1.0)  # connections refused for a second
    stubs.orders.set_failing(503, calls=4)
    d = Dispatcher(_settings(backend, stubs), rng=random.Random(2), backoff=FAST)

    async def body() -> dict[str, int]:
        assert await _until(lambda: all_delivered(
            stubs.orders.requests, stubs.notifications.requests, owed), 60)
        return await _drained(d)

    counts = asyncio.run(_with_dispatcher(d, body))
    _check_everything_arrived(stubs, sessions, owed)
    assert [r.answered for r in stubs.orders.requests[:4]] == [503] * 4
    assert counts["pending"] == 0
    assert counts["dead"] == 0
    # Refused connections leave no request at the stub, but they are retries all the same.
    assert counts["retries"] >= 4


def test_dropped_connections_are_retried(backend: StoreBackend, stubs: IntegrationStubs) -> None:
    sessions, owed = _make_sessions(backend, 4)
    stubs.notifications.set_failing(0, calls=3)  # read the request, close without answering
    d = Dispatcher(_settings(backend, stubs), rng=random.Random(3), backoff=FAST)

    async def body() -> None:
        assert await _until(lambda: all_delivered(
            stubs.orders.requests, stubs.notifications.requests, owed), 30)

    asyncio.run(_with_dispatcher(d, body))
    _check_everything_arrived(stubs, sessions, owed)
    assert [r.answered for r in stubs.notifications.requests[:3]] == [0, 0, 0]


def test_4xx_is_parked_as_a_dead_letter_and_the_session_moves_on(
    backend: StoreBackend, stubs: IntegrationStubs, caplog: pytest.LogCaptureFixture
) -> None:
    sessions, owed = _make_sessions(backend, 3)
    stubs.orders.set_failing(422)
    d = Dispatcher(_settings(backend, stubs), rng=random.Random(4), backoff=FAST)
    order_keys = frozenset(o.key for c in owed.values() for o in c if o.target == "order")

    async def body() -> tuple[dict[str, int], list[dict[str, Any]]]:
        def settled() -> bool:
            notes_ok = {o.key for c in owed.values() for o in c if o.target == "notification"}
            tried = {r.idempotency_key for r in stubs.orders.requests}
            return notes_ok <= delivered_keys(stubs.notifications.requests) and \
                order_keys <= tried
        assert await _until(settled, 30)
        return await _drained(d), await d.dead_letters(10)

    with caplog.at_level(logging.INFO, logger="engine.dispatcher"):
        counts, dead = asyncio.run(_with_dispatcher(d, body))
    _check_everything_arrived(stubs, sessions, owed, parked=order_keys)
    # Each refused call was tried once: a 4xx is not retried.
    assert sorted(r.idempotency_key or "" for r in stubs.orders.requests) == sorted(order_keys)
    assert counts == {"pending": 0, "done": 12, "dead": 3, "retries": 0}
    assert {x["idempotency_key"] for x in dead} == order_keys
    for x in dead:
        assert x["target"] == "order"
        assert x["path"] == f"/orders/{sessions[x['tracking_id']]['order_id']}/status"
        assert x["body"]["status"] == "DELIVERED"
        assert x["attempts"] == 1
        assert "422" in x["last_error"]
    # Logged, and the log names the call without the phone number or the token.
    text = "\n".join(r.getMessage() for r in caplog.records)
    for tid in sessions:
        assert f"tracking_id={tid}" in text
    for s in sessions.values():
        assert s["phone"] not in text
    assert "Bearer" not in text
    assert "eyJ" not in text  # no JWT


def test_the_attempt_cap_parks_a_call_that_keeps_failing(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    sessions, _ = _make_sessions(backend, 1, walk=("PICKED_UP",), orders=False)
    stubs.notifications.set_failing(503)
    settings = _settings(backend, stubs, outbox_max_attempts=3)
    d = Dispatcher(settings, rng=random.Random(5), backoff=FAST)

    async def body() -> dict[str, int]:
        assert await _until(lambda: len(stubs.notifications.requests) >= 6, 30)
        return await _drained(d)

    counts = asyncio.run(_with_dispatcher(d, body))
    [tid] = sessions
    keys = [r.idempotency_key for r in stubs.notifications.requests]
    # Three attempts for the first call, then it is parked and the next one gets its three.
    assert keys == [f"{tid}:tracking_started:ASSIGNED"] * 3 + [
        f"{tid}:status_changed:PICKED_UP"] * 3
    assert counts == {"pending": 0, "done": 0, "dead": 2, "retries": 4}


def test_nothing_is_sent_where_no_url_is_set_and_the_rows_wait(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    _, owed = _make_sessions(backend, 4, orders=False)
    settings = _settings(backend, stubs, notification_service_url=None)
    d = Dispatcher(settings, rng=random.Random(6), backoff=FAST)

    async def body() -> dict[str, int]:
        for _ in range(10):  # several polling rounds
            await d.step()
            await asyncio.sleep(0.05)
        return await d.counts()

    counts = asyncio.run(_with_dispatcher(d, body))
    assert stubs.notifications.requests == []
    assert counts["pending"] == sum(len(c) for c in owed.values())

    # Configured later (a restart with the URL set): the rows that waited are delivered.
    d2 = Dispatcher(_settings(backend, stubs), rng=random.Random(6), backoff=FAST)

    async def body2() -> None:
        assert await _until(lambda: all_delivered([], stubs.notifications.requests, owed), 30)

    asyncio.run(_with_dispatcher(d2, body2))


def test_no_rows_are_written_for_unconfigured_services(backend: StoreBackend) -> None:
    _make_sessions(backend, 3, orders=False, notifications=False)
    d = Dispatcher(_settings(backend, None), rng=random.Random(7))

    async def body() -> dict[str, int]:
        return await d.counts()

    assert asyncio.run(_with_dispatcher(d, body)) == {
        "pending": 0, "done": 0, "dead": 0, "retries": 0}


def test_timeouts_are_retried_and_a_new_dispatcher_finishes_the_job(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    sessions, owed = _make_sessions(backend, 2, walk=("PICKED_UP",), orders=False)
    # A receiver that accepts connections and never answers.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        settings = _settings(backend, stubs, notification_service_url=url, outbox_timeout_s=0.2)
        d = Dispatcher(settings, rng=random.Random(8), backoff=FAST)

        async def body() -> tuple[dict[str, int], list[dict[str, Any]]]:
            async def retried() -> bool:
                return (await d.counts())["retries"] >= 4

            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout(30)
            while not await retried():
                assert loop.time() < deadline
                await asyncio.sleep(0.1)
            return await d.counts(), await d.dead_letters(10)

        counts, dead = asyncio.run(_with_dispatcher(d, body))
    assert counts["pending"] == 4
    assert dead == []

    # The next dispatcher on the same store (a restart) delivers everything still owed.
    d2 = Dispatcher(_settings(backend, stubs), rng=random.Random(9), backoff=FAST)

    async def body2() -> None:
        assert await _until(lambda: all_delivered([], stubs.notifications.requests, owed), 30)

    asyncio.run(_with_dispatcher(d2, body2))
    _check_everything_arrived(stubs, sessions, owed)


HOSTILE_ORDER_IDS = (
    "../../admin?x=1#frag",  # finding 4: a rider-chosen id shaped the order service's URL
    "..",
    "a/b/../c%2F%00?#",
    "100% ?&=#/",
    "ORD\x7fDEL",  # httpx refuses this raw in a URL: old rows were retried forever
)


def test_order_ids_reach_the_order_service_as_one_encoded_path_segment(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    lifetimes = Lifetimes(86400.0, 3600.0, 3600.0, 30.0)
    store = backend.open(0, 1)
    shard = Shard(ShardConfig(0, 1, lifetimes, True, False), store, system_clock)
    sessions: dict[str, dict[str, Any]] = {}
    try:
        for k, order_id in enumerate(HOSTILE_ORDER_IDS):
            rider = f"RIDER-{k}"
            [started] = shard.handle([Start(order_id, rider, 5.6, -0.18, None)])
            tid = _view(started)["tracking_id"]
            for st in WALK:
                [updated] = shard.handle([Update(tid, 5.61, -0.181, Status(st), rider)])
                assert _view(updated)["status"] == st
            sessions[tid] = {"order_id": order_id, "rider_id": rider, "phone": None}
    finally:
        store.close()
    d = Dispatcher(_settings(backend, stubs, shards=1), rng=random.Random(10), backoff=FAST)

    async def body() -> dict[str, int]:
        assert await _until(lambda: len(stubs.orders.requests) >= len(sessions), 30)
        return await _drained(d)

    counts = asyncio.run(_with_dispatcher(d, body))
    got = stubs.orders.requests
    assert sorted(order_of(r.path) or "" for r in got) == sorted(HOSTILE_ORDER_IDS), [
        r.path for r in got]
    for r in got:
        assert r.path.startswith("/orders/")
        assert r.path.endswith("/status")
        assert r.path.count("/") == 3
        assert "?" not in r.path
        assert "#" not in r.path
        check_call(r, SECRET, sessions, users_secret=USERS_SECRET)
    assert counts == {"pending": 0, "done": len(sessions), "dead": 0, "retries": 0}


def test_a_call_that_cannot_be_built_is_a_dead_letter_at_once(
    backend: StoreBackend, stubs: IntegrationStubs
) -> None:
    # A row written by an older version with the order id raw in its path: httpx refuses the
    # URL. It fails the same way every time, so it is parked at once (even with no attempt
    # cap), and the session's next call is not held behind it.
    store = backend.open(0, 1)
    try:
        store.commit([], [], [
            OutboxItem("TRK-old", ORDER, "/orders/ORD\x7f1/status", b'{"status":"DELIVERED"}',
                       "TRK-old:DELIVERED", 1.0),
            OutboxItem("TRK-old", NOTIFICATION, "/notifications", b'{"tracking_id":"TRK-old"}',
                       "TRK-old:delivered:DELIVERED", 1.0),
        ])
    finally:
        store.close()
    settings = _settings(backend, stubs, shards=1, outbox_max_attempts=0)
    d = Dispatcher(settings, rng=random.Random(11), backoff=FAST)

    async def body() -> tuple[dict[str, int], list[dict[str, Any]]]:
        assert await _until(lambda: len(stubs.notifications.requests) >= 1, 30)
        counts = await _drained(d)
        for _ in range(10):  # more rounds: nothing is retried
            await asyncio.sleep(0.05)
        return counts, await d.dead_letters(10)

    counts, dead = asyncio.run(_with_dispatcher(d, body))
    assert stubs.orders.requests == []
    assert counts == {"pending": 0, "done": 1, "dead": 1, "retries": 0}
    [letter] = dead
    assert letter["idempotency_key"] == "TRK-old:DELIVERED"
    assert letter["attempts"] == 1
    assert "cannot be built" in letter["last_error"]
