"""Helpers for the durability tests: riders streaming updates over real HTTP while the service is
crashed under them, keeping a log of what was acknowledged, and the checks made afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.runtime import ray_cluster as ray_runtime
from engine.settings import Settings
from harness import mint
from sim.stubs import IntegrationStubs
from tests.outbox_contract import (
    Owed,
    all_delivered,
    check_call,
    check_order_per_session,
    owed_for_history,
)
from tests.support import timeout

DROPOFF = (5.6037, -0.1869)
WALK = ("ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED")
# A step retried without any answer for this long (scaled) fails the test: a crashed service
# must come back (or the test stop the riders) well within it.
UNANSWERED_S = 90.0


@dataclass(frozen=True)
class Ack:
    """An update the server answered 200 to: it must survive any crash."""

    seq: int
    lat: float
    lng: float
    status: str


@dataclass
class Ride:
    index: int
    rider_id: str
    order_id: str
    phone: str
    tracking_id: str = ""
    acked: list[Ack] = field(default_factory=list)
    step: int = 0  # next step of the plan
    done: bool = False

    def point(self, step: int) -> tuple[float, float]:
        # Unique per ride and step, so history can be matched against the log exactly.
        return round(5.55 + self.index * 0.001 + step * 1e-5, 7), round(-0.2 + step * 1e-5, 7)


class RiderStream:
    """`n` riders each walking a session ASSIGNED -> DELIVERED in `steps` updates, as fast as
    the server answers, retrying what got no answer (503, connection refused or dropped)."""

    def __init__(self, secret: str, n: int, steps: int) -> None:
        self.secret = secret
        self.steps = steps
        tag = uuid.uuid4().hex[:8]
        self.rides = [
            Ride(i, f"RIDER-{tag}-{i}", f"ORD-{tag}-{i}", f"+2332{i:07d}") for i in range(n)
        ]
        self.unanswered = 0  # transport errors and 503s seen (the crash, from the outside)
        self.stopped = False  # set by the test to end the walk early (plain flag: any loop)

    def status_at(self, step: int) -> str:
        # Spread the status changes over the walk; the last step delivers.
        if step >= self.steps - 1:
            return "DELIVERED"
        return WALK[min(2, 3 * step // max(1, self.steps - 1))]

    def _auth(self, ride: Ride) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint(self.secret, "rider", ride.rider_id)}

    async def start_sessions(self, client: httpx.AsyncClient) -> None:
        for ride in self.rides:
            body = {"order_id": ride.order_id, "rider_id": ride.rider_id,
                    "dropoff_lat": DROPOFF[0], "dropoff_lng": DROPOFF[1], "phone": ride.phone}
            r = await client.post("/tracking/start", json=body, headers=self._auth(ride))
            assert r.status_code == 201, r.text
            ride.tracking_id = r.json()["tracking_id"]

    def acked_total(self) -> int:
        return sum(len(r.acked) for r in self.rides)

    async def run(self, client: httpx.AsyncClient) -> None:
        """Drive every ride until it is delivered or `stopped` is set."""
        await asyncio.gather(*(self._ride(client, r) for r in self.rides))

    async def _ride(self, client: httpx.AsyncClient, ride: Ride) -> None:
        loop = asyncio.get_running_loop()
        unsure = False  # the last attempt of this step got no answer: it may have been applied
        answered_at = loop.time()  # of the last answer this ride got (or of its start)
        while not ride.done and not self.stopped:
            status = self.status_at(ride.step)
            lat, lng = ride.point(ride.step)
            r: httpx.Response | None
            try:
                r = await client.post(
                    f"/tracking/update/{ride.tracking_id}",
                    json={"lat": lat, "lng": lng, "status": status}, headers=self._auth(ride),
                )
            except httpx.TransportError:
                r = None
            if r is None or r.status_code == 503:
                self.unanswered += 1
                unsure = True
                waited = loop.time() - answered_at
                assert waited < timeout(UNANSWERED_S), (
                    f"{ride.tracking_id}: step {ride.step} unanswered for {waited:.0f} s"
                )
                await asyncio.sleep(0.05)  # a retry's pace, not a wait for anything
                continue
            answered_at = loop.time()
            if r.status_code == 409 and status == "DELIVERED" and unsure:
                ride.done = True  # the unanswered DELIVERED was applied; history will say
                break
            assert r.status_code == 200, f"{r.status_code} {r.text}"
            view = r.json()
            ride.acked.append(Ack(view["seq"], lat, lng, view["status"]))
            unsure = False
            ride.step += 1
            ride.done = status == "DELIVERED"


async def history(client: httpx.AsyncClient, tracking_id: str) -> list[dict[str, Any]]:
    """Every history item of a session, following the pages."""
    items: list[dict[str, Any]] = []
    since = 0
    while True:
        r = await client.get(f"/tracking/{tracking_id}/history",
                             params={"since_seq": since, "limit": 1000})
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        if page["next_since_seq"] is None:
            return items
        since = page["next_since_seq"]


def check_acked_in_history(ride: Ride, items: list[dict[str, Any]]) -> None:
    """Every acknowledged update is in history, with what was sent; seqs have no holes."""
    seqs = [it["seq"] for it in items]
    assert seqs == list(range(1, len(seqs) + 1)), f"{ride.tracking_id}: seqs {seqs}"
    by_seq = {it["seq"]: it for it in items}
    for ack in ride.acked:
        assert ack.seq in by_seq, f"{ride.tracking_id}: acknowledged seq {ack.seq} lost"
        it = by_seq[ack.seq]
        assert (it["lat"], it["lng"], it["status"]) == (ack.lat, ack.lng, ack.status), (
            f"{ride.tracking_id} seq {ack.seq}: history {it} != acknowledged {ack}"
        )


async def wait_delivered(
    stubs: IntegrationStubs, owed: dict[str, list[Owed]], seconds: float
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not all_delivered(stubs.orders.requests, stubs.notifications.requests, owed):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def verify_durable(
    client: httpx.AsyncClient, stream: RiderStream, stubs: IntegrationStubs, secret: str,
    seconds: float = 90,
) -> dict[str, list[Owed]]:
    """History holds every acknowledged update; every call its changes owe arrives, in order
    per session, following the contract."""
    owed: dict[str, list[Owed]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    for ride in stream.rides:
        items = await history(client, ride.tracking_id)
        check_acked_in_history(ride, items)
        owed[ride.tracking_id] = owed_for_history(ride.tracking_id, items, ride.phone)
        sessions[ride.tracking_id] = {"order_id": ride.order_id, "rider_id": ride.rider_id,
                                      "phone": ride.phone}
    assert await wait_delivered(stubs, owed, seconds), _missing(stubs, owed)
    for r in stubs.orders.requests + stubs.notifications.requests:
        # A request whose body was cut off when the crash killed its sender was never
        # accepted (the stub answers it 503); every complete one must follow the contract.
        if len(r.raw_body) < int(r.headers.get("content-length", "0") or 0):
            continue
        check_call(r, secret, sessions)
    check_order_per_session(stubs.orders.requests, owed)
    check_order_per_session(stubs.notifications.requests, owed)
    return owed


def _missing(stubs: IntegrationStubs, owed: dict[str, list[Owed]]) -> str:
    got = {r.idempotency_key for r in stubs.orders.requests + stubs.notifications.requests
           if r.ok}
    missing = [o.key for calls in owed.values() for o in calls if o.key not in got]
    return f"{len(missing)} owed calls never arrived, e.g. {missing[:5]}"


def kill_namespace(namespace: str, shards: int) -> None:
    """Kill the shard actors and the dispatcher a server left in `namespace` (they are detached,
    so a SIGKILLed server leaves them running)."""
    ray_runtime.kill_all(Settings(ray_namespace=namespace, shards=shards))


