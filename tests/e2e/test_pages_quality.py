"""The tracking page in headless Chromium with the tracking-quality features: opened from a
share link, it shows the rider approaching then arrived, resumes its socket by `seq` (no history
call) and says so when its link has expired."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Page, expect

from harness import ServerProcess
from tests.e2e.quality import fix
from tests.e2e.test_pages_support import Rider
from tests.support import timeout

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.e2e.test_pages_support"]


def post(rider: Rider, tid: str, body: dict[str, Any]) -> dict[str, Any]:
    r = rider.http.post(f"/tracking/update/{tid}", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_share_link_page_shows_approaching_then_arrived(
    server: ServerProcess, rider: Rider, open_page: Callable[..., Page]
) -> None:
    tid = rider.start()["tracking_id"]
    link = rider.http.post(f"/tracking/{tid}/share").json()
    t = time.time() - 600
    post(rider, tid, fix(3000, t, "PICKED_UP"))
    post(rider, tid, fix(2900, t + 10, "IN_TRANSIT"))
    post(rider, tid, fix(2000, t + 100))

    page = open_page(server.base_url + link["path"])
    expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
    # The whole trail came over the socket (since_seq=0), not from /history.
    expect(page.locator("#trail")).to_have_attribute("data-count", "3")
    expect(page.locator("#proximity")).to_be_hidden()

    for i, metres in enumerate((450, 400)):
        post(rider, tid, fix(metres, t + 200 + 10 * i))
    expect(page.locator("#proximity")).to_have_attribute("data-proximity", "approaching")
    expect(page.locator("#proximity")).to_have_text("Your rider is almost there.")
    for i, metres in enumerate((20, 10)):
        post(rider, tid, fix(metres, t + 260 + 10 * i))
    expect(page.locator("#proximity")).to_have_attribute("data-proximity", "arrived")
    expect(page.locator("#proximity")).to_have_text("Your rider has arrived.")
    post(rider, tid, fix(8, t + 290, "DELIVERED"))
    expect(page.locator("body")).to_have_attribute("data-state", "delivered")
    expect(page.locator("#proximity")).to_be_hidden()
    fetched = page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
    assert not [u for u in fetched if "/history" in u], fetched
    assert any(f"/tracking/{tid}" in u for u in fetched), fetched  # the first view, by HTTP


def test_an_expired_share_link_says_so(
    server: ServerProcess, rider: Rider, open_page: Callable[..., Page]
) -> None:
    tid = rider.start()["tracking_id"]
    expired = jwt.encode(
        {"scope": "share", "tid": tid, "sub": f"share:{tid}", "exp": int(time.time()) - 5},
        server.secret, algorithm="HS256",
    )
    page = open_page(f"{server.base_url}/track/{tid}?share={expired}")
    expect(page.locator("body")).to_have_attribute("data-state", "expired")
    expect(page.locator("#notice-title")).to_have_text("This tracking link has expired")
    other = rider.start()["tracking_id"]
    page = open_page(f"{server.base_url}/track/{other}?share={expired}")
    expect(page.locator("body")).to_have_attribute("data-state", "expired")
    wrong = httpx.post(f"{server.base_url}/tracking/{tid}/share", timeout=timeout(10),
                       headers={"Authorization": f"Bearer {server.token('merchant', 'm')}"})
    page = open_page(f"{server.base_url}/track/{other}?share={wrong.json()['token']}")
    expect(page.locator("body")).to_have_attribute("data-state", "badlink")
    expect(page.locator("#notice-title")).to_have_text("This link does not work")
