"""A city of 100 simulated deliveries on a fresh server: the ops map shows all of them with the
right counts, and one customer's page shows their delivery mid-way.

The screenshots are the ones in the README: run with TRACKING_UPDATE_DOCS=1 to write them to
`docs/tracking-page.png` and `docs/ops-map.png` as well as the screenshot directory.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from harness import ServerProcess
from tests.e2e.test_pages_support import (
    DESKTOP,
    DROPOFF,
    REPO,
    ServerFactory,
    eta_text,
    expect_step,
    wait_until,
)
from tests.support import timeout

pytestmark = pytest.mark.browser
# The fixtures (browser, open_page, screenshots) come from the support module.
pytest_plugins = ["tests.e2e.test_pages_support"]

Point = tuple[float, float]
MIX = {"ASSIGNED": 15, "PICKED_UP": 15, "IN_TRANSIT": 55, "DELIVERED": 15}
KM_PER_DEG_LAT = 111.195


def offset(p: Point, north_km: float, east_km: float) -> Point:
    return (p[0] + north_km / KM_PER_DEG_LAT,
            p[1] + east_km / (KM_PER_DEG_LAT * math.cos(math.radians(p[0]))))


def street_route(a: Point, b: Point, rng: random.Random, step_km: float) -> list[Point]:
    """An L-shaped route along a street grid from `a` to `b`, a point every ~`step_km`."""
    corner = (b[0], a[1]) if rng.random() < 0.5 else (a[0], b[1])
    out: list[Point] = []
    for start, end in ((a, corner), (corner, b)):
        km = math.hypot((end[0] - start[0]) * KM_PER_DEG_LAT,
                        (end[1] - start[1]) * KM_PER_DEG_LAT * math.cos(math.radians(a[0])))
        n = max(1, round(km / step_km))
        out.extend((start[0] + (end[0] - start[0]) * i / n, start[1] + (end[1] - start[1]) * i / n)
                   for i in range(n))
    out.append(b)
    return out


@dataclass
class Delivery:
    """One simulated delivery: the updates to post, in order, to reach `status`."""

    status: str
    dropoff: Point
    updates: list[tuple[Point, str | None]] = field(default_factory=list)
    tracking_id: str = ""
    view: dict[str, Any] = field(default_factory=dict)


def plan_city(rng: random.Random, featured_index: int) -> list[Delivery]:
    hubs = [offset(DROPOFF, rng.uniform(-4, 4), rng.uniform(-5, 5)) for _ in range(8)]
    statuses = [s for s, n in MIX.items() for _ in range(n)]
    deliveries = []
    for i, status in enumerate(statuses):
        featured = i == featured_index
        hub = rng.choice(hubs)
        bearing = rng.uniform(0, 2 * math.pi)
        dist = 3.2 if featured else rng.uniform(1.5, 5.0)
        dropoff = offset(hub, dist * math.cos(bearing), dist * math.sin(bearing))
        d = Delivery(status, dropoff)
        approach = street_route(offset(hub, rng.uniform(-1, 1), rng.uniform(-1, 1)), hub, rng, 0.4)
        d.updates += [(p, None) for p in approach[:-1][-3:]]
        if status != "ASSIGNED":
            d.updates.append((hub, "PICKED_UP"))
            if status in ("IN_TRANSIT", "DELIVERED"):
                route = street_route(hub, dropoff, rng, 0.25 if featured else 0.6)[1:]
                share = 0.55 if featured else rng.uniform(0.1, 0.9)
                upto = len(route) if status == "DELIVERED" else max(1, int(len(route) * share))
                ride = route[:upto]
                d.updates.append((ride[0], "IN_TRANSIT"))
                d.updates += [(p, None) for p in ride[1:]]
                if status == "DELIVERED":
                    d.updates[-1] = (dropoff, "DELIVERED")
        if not featured:  # GPS noise, so riders waiting at one restaurant do not stack up
            d.updates = [(offset(p, rng.gauss(0, 0.03), rng.gauss(0, 0.03)), s)
                         for p, s in d.updates]
        deliveries.append(d)
    return deliveries


@pytest.fixture(scope="module")
def city(server_factory: ServerFactory) -> Iterator[tuple[ServerProcess, list[Delivery]]]:
    """A fresh server with exactly 100 live deliveries in various states."""
    with server_factory() as srv:
        deliveries = plan_city(random.Random(2024), featured_index=MIX["ASSIGNED"] + 15)
        admin = {"Authorization": f"Bearer {srv.token('superadmin', 'docs')}"}
        with httpx.Client(base_url=srv.base_url, headers=admin, timeout=timeout(10)) as http:
            for n, d in enumerate(deliveries):
                r = http.post("/tracking/start", json={
                    "order_id": f"ORD-{n:04d}", "rider_id": f"RIDER-{n:03d}",
                    "dropoff_lat": d.dropoff[0], "dropoff_lng": d.dropoff[1],
                })
                assert r.status_code == 201, r.text
                d.tracking_id = r.json()["tracking_id"]
                for p, status in d.updates:
                    body: dict[str, Any] = {"lat": p[0], "lng": p[1]}
                    if status:
                        body["status"] = status
                    r = http.post(f"/tracking/update/{d.tracking_id}", json=body)
                    assert r.status_code == 200, r.text
                    d.view = r.json()
                assert d.view["status"] == d.status
        yield srv, deliveries


def save(page: Page, shots: Path, name: str, full_page: bool = False) -> None:
    page.screenshot(path=shots / name, full_page=full_page)
    if os.environ.get("TRACKING_UPDATE_DOCS") == "1":
        shutil.copyfile(shots / name, REPO / "docs" / name)


def test_ops_map_shows_a_city_of_100_deliveries(
    city: tuple[ServerProcess, list[Delivery]], open_page: Callable[..., Page], screenshots: Path
) -> None:
    srv, deliveries = city
    page = open_page(f"{srv.base_url}/ops", DESKTOP, 1)
    page.fill("#token", srv.token("superadmin", "ops-docs"))
    page.click("#login-form button[type=submit]")
    expect(page.locator("#shown")).to_have_attribute("data-count", "100")
    expect(page.locator("#stat-total")).to_have_text("100")
    for status, n in Counter(d.status for d in deliveries).items():
        cell = page.locator(f'#status-table tr[data-status="{status}"] td')
        expect(cell).to_have_text(str(n))
    for d in deliveries[::10]:
        status = page.evaluate("(id) => window.opsMap.statusOf(id)", d.tracking_id)
        assert status == d.status
    # Let the dots finish gliding into place before the picture.
    seen = page.evaluate("window.opsMap.snapshots")
    wait_until(lambda: page.evaluate("window.opsMap.snapshots") >= seen + 2, 15, "two snapshots")
    save(page, screenshots, "ops-map.png")


def test_tracking_page_mid_delivery(
    city: tuple[ServerProcess, list[Delivery]], open_page: Callable[..., Page], screenshots: Path
) -> None:
    srv, deliveries = city
    d = deliveries[MIX["ASSIGNED"] + 15]
    assert d.status == "IN_TRANSIT"
    page = open_page(f"{srv.base_url}/track/{d.tracking_id}")
    expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
    expect_step(page, "IN_TRANSIT")
    expect(page.locator("#eta-minutes")).to_have_text(eta_text(d.view))
    expect(page.locator("#trail")).to_have_attribute("data-count", str(len(d.updates)))
    save(page, screenshots, "tracking-page.png", full_page=True)
