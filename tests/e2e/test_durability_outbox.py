"""The outbox end to end: a real server (Ray engine) calling real stub services on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from harness import ServerProcess
from sim.stubs import IntegrationStubs
from tests.e2e.durability import RiderStream, verify_durable
from tests.outbox_contract import delivered_keys
from tests.support import timeout, until

ServerFactory = Callable[..., AbstractContextManager[ServerProcess]]


@pytest.fixture(scope="module")
def stubs() -> Iterator[IntegrationStubs]:
    with IntegrationStubs() as s:
        yield s


@pytest.fixture(scope="module")
def srv(server_factory: ServerFactory, stubs: IntegrationStubs) -> Iterator[ServerProcess]:
    with server_factory(TRACKING_SHARDS="2", **stubs.env()) as s:
        yield s


@pytest.fixture(autouse=True)
def _healthy_stubs(stubs: IntegrationStubs) -> Iterator[None]:
    stubs.orders.clear_failing()
    stubs.notifications.clear_failing()
    yield
    stubs.orders.clear_failing()
    stubs.notifications.clear_failing()


def _admin(srv: ServerProcess) -> dict[str, str]:
    return {"Authorization": "Bearer " + srv.token("superadmin", "ops")}


def test_receiver_down_then_back_every_call_arrives_in_order(
    srv: ServerProcess, stubs: IntegrationStubs
) -> None:
    stream = RiderStream(srv.secret, n=6, steps=12)
    stubs.notifications.go_down(2.0)  # refused connections for a while
    stubs.orders.set_failing(503, calls=5)  # then 5xx

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=timeout(30)) as client:
            await stream.start_sessions(client)
            await stream.run(client)
            assert all(r.done for r in stream.rides)
            await verify_durable(client, stream, stubs, srv.service_secret)

    asyncio.run(scenario())
    assert any(r.answered == 503 for r in stubs.orders.requests)


def test_a_4xx_is_a_dead_letter_visible_to_a_superadmin_and_counted(
    srv: ServerProcess, stubs: IntegrationStubs
) -> None:
    stream = RiderStream(srv.secret, n=1, steps=4)
    stubs.orders.set_failing(422)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=timeout(30)) as client:
            before = (await client.get("/stats/tracking", headers=_admin(srv))).json()["outbox"]
            await stream.start_sessions(client)
            await stream.run(client)
            tid = stream.rides[0].tracking_id
            key = f"{tid}:DELIVERED"
            # The notification owed after the refused order call still goes out.
            assert await until(lambda: f"{tid}:delivered:DELIVERED" in delivered_keys(
                stubs.notifications.requests), 60)

            async def dead() -> list[dict[str, Any]]:
                r = await client.get("/outbox/dead-letters", params={"limit": 50},
                                     headers=_admin(srv))
                assert r.status_code == 200, r.text
                items: list[dict[str, Any]] = r.json()["items"]
                return [d for d in items if d["idempotency_key"] == key]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout(30)
            found = await dead()
            while not found and loop.time() < deadline:
                await asyncio.sleep(0.1)
                found = await dead()
            assert len(found) == 1, "the refused call is not among the dead letters"
            after = (await client.get("/stats/tracking", headers=_admin(srv))).json()["outbox"]
            return found[0], {"before": before, "after": after}

    letter, stats = asyncio.run(scenario())
    ride = stream.rides[0]
    assert letter["target"] == "order"
    assert letter["path"] == f"/orders/{ride.order_id}/status"
    assert letter["body"]["tracking_id"] == ride.tracking_id
    assert letter["body"]["status"] == "DELIVERED"
    assert "422" in (letter["last_error"] or "")
    assert letter["attempts"] == 1  # a 4xx is not retried
    assert [r.answered for r in stubs.orders.requests
            if r.idempotency_key == letter["idempotency_key"]] == [422]
    assert stats["after"]["dead"] == stats["before"]["dead"] + 1
    assert set(stats["after"]) >= {"pending", "done", "dead", "retries"}


@pytest.mark.parametrize(("role", "code"), [(None, 401), ("rider", 403), ("merchant", 403),
                                            ("customer", 403)])
def test_dead_letters_are_for_superadmins_only(
    srv: ServerProcess, role: str | None, code: int
) -> None:
    headers = {} if role is None else {"Authorization": "Bearer " + srv.token(role, "someone")}
    r = httpx.get(srv.base_url + "/outbox/dead-letters", headers=headers, timeout=timeout(30))
    assert r.status_code == code, r.text
    assert isinstance(r.json()["detail"], str)


def test_dead_letters_limit_is_validated(srv: ServerProcess) -> None:
    for bad in ("0", "1001", "x"):
        r = httpx.get(srv.base_url + "/outbox/dead-letters", params={"limit": bad},
                      headers=_admin(srv), timeout=timeout(30))
        assert r.status_code == 422, r.text
