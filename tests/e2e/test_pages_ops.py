"""The ops map in headless Chromium: superadmin sign-in, a new delivery appearing as a dot of
its status colour; and how the pages and their assets are served."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from harness import ServerProcess
from tests.e2e.test_pages_support import (
    DESKTOP,
    DROPOFF,
    Rider,
    wait_until,
)
from tests.support import timeout

pytestmark = pytest.mark.browser
# The fixtures (browser, open_page, rider, screenshots) come from the support module.
pytest_plugins = ["tests.e2e.test_pages_support"]

STATUS_RGB = {  # pages.css --picked-up, --in-transit
    "PICKED_UP": (0xC2, 0x41, 0x0C),
    "IN_TRANSIT": (0x1D, 0x4E, 0xD8),
}


def test_pages_and_assets_are_served_safely(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=timeout(10)) as http:
        page = http.get("/track/TRK-abc_DEF-123")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<meta name="tracking-id" content="TRK-abc_DEF-123">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        # Nothing outside the id alphabet reaches the page, escaped or not.
        bad = http.get("/track/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert bad.status_code == 404
        assert "<script>alert" not in bad.text
        assert http.get("/ops").status_code == 200
        js = http.get("/static/track.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        assert http.get("/static/pages.css").headers["content-type"].startswith("text/css")
        for path in ("/static/track.html", "/static/../pages.py", "/static/%2e%2e/pages.py",
                     "/static/nope.js"):
            assert http.get(path).status_code == 404, path



def canvas_rgb(page: Page, tid: str) -> tuple[int, int, int] | None:
    """The canvas pixel under the delivery's dot, or None while it is not on the map."""
    rgb: list[int] | None = page.evaluate(
        """(id) => {
            const p = window.opsMap.screenPosition(id);
            if (!p) return null;
            const c = document.getElementById('ops-canvas');
            const k = c.width / c.getBoundingClientRect().width;
            const x = Math.round(p.x * k), y = Math.round(p.y * k);
            const d = c.getContext('2d').getImageData(x, y, 1, 1).data;
            return [d[0], d[1], d[2]];
        }""",
        tid,
    )
    return (rgb[0], rgb[1], rgb[2]) if rgb else None


def close_to(rgb: tuple[int, int, int] | None, want: tuple[int, int, int]) -> bool:
    return rgb is not None and all(abs(a - b) <= 12 for a, b in zip(rgb, want, strict=True))


def test_ops_map_asks_for_a_superadmin_token_and_shows_a_new_delivery(
    server_factory: Callable[..., AbstractContextManager[ServerProcess]],
    open_page: Callable[..., Page],
    screenshots: Path,
) -> None:
    # A server of its own: the shared one holds other tests' deliveries, some at the ends of
    # the earth (coordinate edge cases), and fitting those shrank Accra to a few pixels where
    # other dots covered this one.
    with server_factory() as server:
        rider = Rider(server)
        try:
            _ops_map_flow(server, rider, open_page, screenshots)
        finally:
            rider.close()


def _ops_map_flow(
    server: ServerProcess, rider: Rider, open_page: Callable[..., Page], screenshots: Path
) -> None:
    page = open_page(f"{server.base_url}/ops", DESKTOP)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", server.token("merchant", "M-1"))
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("This token is not a superadmin token.")
    page.fill("#token", "not-a-jwt")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")

    page.fill("#token", server.token("superadmin", "ops-1"))
    page.click("#login-form button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-state", "live")
    expect(page.locator("#login")).to_be_hidden()
    shown_before = int(page.locator("#shown").get_attribute("data-count") or "0")

    tid = rider.start()["tracking_id"]
    # A spot of its own (seeded by the new id): the shared server holds other tests'
    # deliveries, and a dot of another status drawn on the same pixel hid this one.
    rng = random.Random(tid)
    spot = (DROPOFF[0] + rng.uniform(-0.05, 0.05), DROPOFF[1] + rng.uniform(-0.05, 0.05))
    rider.update(tid, spot, "PICKED_UP")
    wait_until(lambda: page.evaluate("(id) => window.opsMap.has(id)", tid), 15,
               "the new delivery on the ops map")
    wait_until(lambda: close_to(canvas_rgb(page, tid), STATUS_RGB["PICKED_UP"]), 15,
               "a picked-up coloured dot where the delivery is")
    shown = int(page.locator("#shown").get_attribute("data-count") or "0")
    assert shown >= shown_before + 1
    picked_up = page.locator('#status-table tr[data-status="PICKED_UP"] td')
    assert int(picked_up.inner_text().replace(",", "")) >= 1
    assert int(page.locator("#stat-total").inner_text().replace(",", "")) >= 1

    rider.update(tid, spot, "IN_TRANSIT")
    wait_until(lambda: close_to(canvas_rgb(page, tid), STATUS_RGB["IN_TRANSIT"]), 15,
               "the dot to turn in-transit coloured")
    page.screenshot(path=screenshots / "ops-new-delivery.png")

    # The token is kept for the tab: a reload goes straight to the map.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-state", "live")
    expect(page.locator("#login")).to_be_hidden()
    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
