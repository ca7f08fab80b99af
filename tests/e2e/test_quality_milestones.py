"""Approaching and arrived over real HTTP and WebSockets: each once per delivery despite GPS
jitter at the thresholds, as messages to sockets that ask for them, in the view, and as one
`rider_approaching` notification (only with a phone) through the durable outbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from harness import ServerProcess
from sim.stubs import IntegrationStubs
from tests.e2e.clients import Api, run, ws_connect
from tests.e2e.quality import drain, fix, kinds, post_fix_ok
from tests.support import timeout

ServerFactory = Callable[..., AbstractContextManager[ServerProcess]]

# Riding in with jitter around both thresholds (500 m by ETA at 30 km/h; 30 m at the door),
# a jump into the door zone from far away, and dwelling at the door.
TRIP = [3000, 2000, 1200, 700, 520, 480, 530, 490, 300, 150, 60, 45, 28, 55, 24, 12, 8, 10]


@pytest.fixture(scope="module")
def stubs() -> Iterator[IntegrationStubs]:
    with IntegrationStubs() as s:
        yield s


@pytest.fixture(scope="module")
def srv(server_factory: ServerFactory, stubs: IntegrationStubs) -> Iterator[ServerProcess]:
    with server_factory(**stubs.env()) as s:
        yield s


def deliver(api: Api, view: dict[str, Any], t0: float) -> list[dict[str, Any]]:
    """PICKED_UP and IN_TRANSIT far away, then TRIP 20 s apart, then DELIVERED at the door."""
    t = t0
    answers = [post_fix_ok(api, view, fix(5000, t, "PICKED_UP"))]
    t += 20
    answers.append(post_fix_ok(api, view, fix(4900, t, "IN_TRANSIT")))
    for m in TRIP:
        t += 20 if m > 100 else 10
        answers.append(post_fix_ok(api, view, fix(m, t)))
    answers.append(post_fix_ok(api, view, fix(9, t + 30, "DELIVERED")))
    return answers


def test_approaching_then_arrived_once_each(srv: ServerProcess, stubs: IntegrationStubs) -> None:
    with Api(srv) as api:
        view = api.start_ok(phone="+233 20 555 0101")
        tid = view["tracking_id"]

        async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with ws_connect(srv, tid + "?milestones=true") as asks, \
                    ws_connect(srv, tid) as plain:
                await drain(asks, 0.5)
                await drain(plain, 0.5)
                await asyncio.to_thread(deliver, api, view, time.time() - 1200)
                return await drain(asks, 1.5), await drain(plain, 1.5)

        asked, plain = run(body(), seconds=120)
        fired = [(m["type"], m["data"]["seq"]) for m in asked if m["type"].startswith("rider_")]
        assert [t for t, _ in fired] == ["rider_approaching", "rider_arrived"]
        # Each right after the location_update of the change that fired it.
        stream = kinds(asked)
        for name, seq in fired:
            i = stream.index((name, seq))
            assert stream[i - 1] == ("location_update", seq)
        approaching, arrived = (m for m in asked if m["type"].startswith("rider_"))
        assert approaching["data"]["proximity"] == "approaching"
        assert arrived["data"]["proximity"] == "arrived"
        # A socket that did not ask sees exactly API.md's messages.
        assert {m["type"] for m in plain} == {"location_update", "status_change"}
        assert api.view(tid)["proximity"] == "arrived"
        history = api.http.get(f"/tracking/{tid}/history").json()["items"]
        assert [i["milestones"] for i in history if i.get("milestones")] == [
            ["approaching"], ["arrived"],
        ]
        # The notification service hears of it once, through the outbox, in order.
        key = f"{tid}:rider_approaching:IN_TRANSIT"
        assert stubs.notifications.wait_for(
            lambda reqs: any(r.idempotency_key == f"{tid}:delivered:DELIVERED" for r in reqs),
            timeout(30),
        )
        mine = [r for r in stubs.notifications.requests if (r.body or {}).get("tracking_id") == tid]
        events = [r.body["event"] for r in mine]
        assert events == ["tracking_started", "status_changed", "status_changed",
                          "rider_approaching", "delivered"]  # fmt: skip
        approach = mine[3]
        assert approach.idempotency_key == key
        assert approach.body["phone"] == "+233 20 555 0101"
        assert approach.headers.get("authorization", "").startswith("Bearer ")


def test_no_phone_no_notification_and_plain_updates_fire_nothing(
    srv: ServerProcess, stubs: IntegrationStubs
) -> None:
    with Api(srv) as api:
        quiet = api.start_ok()  # no phone
        deliver(api, quiet, time.time() - 1200)
        assert api.view(quiet["tracking_id"])["proximity"] == "arrived"
        plain = api.start_ok(phone="+233 20 555 0102")
        for status in ("PICKED_UP", "IN_TRANSIT", None, None, "DELIVERED"):
            api.update_ok(plain, 5.6037, -0.1869, status)  # at the dropoff, API.md style
        assert "proximity" not in api.view(plain["tracking_id"])
        assert stubs.notifications.wait_for(
            lambda reqs: any(r.idempotency_key == f"{plain['tracking_id']}:delivered:DELIVERED"
                             for r in reqs), timeout(30),
        )  # fmt: skip
        events = {(r.body or {}).get("event") for r in stubs.notifications.requests
                  if (r.body or {}).get("tracking_id") in (quiet["tracking_id"],
                                                           plain["tracking_id"])}  # fmt: skip
        assert "rider_approaching" not in events
