"""Shared pieces of the browser tests (`test_pages*.py`): Chromium, page helpers, API drivers.

No tests here. The browser is Debian's Chromium driven by Playwright (no browser download is
possible); the assertions of the tests read what a person would see. Screenshots land in the
directory printed at the end of the run (`out/screenshots` unless TRACKING_SCREENSHOT_DIR).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from harness import ServerProcess
from tests.support import timeout

CHROMIUM = os.environ.get("TRACKING_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
DROPOFF = (5.6037, -0.1869)  # Accra, as in the seed
REPO = Path(__file__).resolve().parents[2]

# How long one expectation may wait (before scaling): Playwright's assertions and actions, and
# this module's polls. Playwright waits 5 s by default; a loaded 2-core machine needs more.
EXPECT_S = 15.0
expect.set_options(timeout=timeout(EXPECT_S) * 1000)

T = TypeVar("T")
ServerFactory = Callable[..., AbstractContextManager[ServerProcess]]


# ---- helpers ------------------------------------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def north_of(p: tuple[float, float], km: float) -> tuple[float, float]:
    return (p[0] + math.degrees(km / 6371.0), p[1])


def wait_until(probe: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll `probe` until it returns something truthy; fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class Rider:
    """One rider's deliveries, driven through the public HTTP API."""

    def __init__(self, server: ServerProcess, rider_id: str | None = None) -> None:
        self.rider_id = rider_id or uid("RIDER")
        self.http = httpx.Client(
            base_url=server.base_url, timeout=timeout(10),
            headers={"Authorization": f"Bearer {server.token('rider', self.rider_id)}"},
        )

    def start(self, dropoff: tuple[float, float] = DROPOFF) -> dict[str, Any]:
        body = {"order_id": uid("ORD"), "rider_id": self.rider_id,
                "dropoff_lat": dropoff[0], "dropoff_lng": dropoff[1]}
        r = self.http.post("/tracking/start", json=body)
        assert r.status_code == 201, r.text
        view: dict[str, Any] = r.json()
        return view

    def update(self, tid: str, p: tuple[float, float], status: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"lat": p[0], "lng": p[1]}
        if status:
            body["status"] = status
        r = self.http.post(f"/tracking/update/{tid}", json=body)
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
        return view

    def close(self) -> None:
        self.http.close()


def eta_text(view: dict[str, Any]) -> str:
    return f"{max(1, math.ceil(view['eta_seconds'] / 60))} min"


def expect_step(page: Page, status: str) -> None:
    """The status steps show `status` as the current one."""
    step = page.locator(f'.steps li[data-step="{status}"]')
    expect(step).to_have_attribute("aria-current", "step")


def centre(page: Page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not displayed"
    return (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def pin_tip(page: Page) -> tuple[float, float]:
    box = page.locator("#dropoff-marker").bounding_box()
    assert box is not None
    return (box["x"] + box["width"] / 2, box["y"] + box["height"])


def settled_centre(page: Page, selector: str) -> tuple[float, float]:
    """The marker's centre once its slide animation has stopped."""
    last: list[tuple[float, float]] = []

    def probe() -> tuple[float, float] | None:
        c = centre(page, selector)
        still = bool(last) and math.dist(c, last[-1]) < 0.5
        last.append(c)
        return c if still else None

    return wait_until(probe, 10, f"{selector} to stop moving")


# ---- fixtures -----------------------------------------------------------------------------


_screenshot_dirs: set[Path] = set()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests save screenshots (printed in the run's summary)."""
    path = Path(os.environ.get("TRACKING_SCREENSHOT_DIR", REPO / "out" / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    _screenshot_dirs.add(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the screenshots are, so a person can look at them."""
    for path in sorted(_screenshot_dirs):
        terminalreporter.write_line(f"browser test screenshots: {path}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test does it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                               timeout=timeout(30) * 1000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a URL in a fresh browser context; fail the test on any script error or CSP refusal."""
    contexts = []
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Uncaught" in msg.text:
            problems.append(f"console: {msg.text}")

    def open_(url: str, viewport: dict[str, int] | None = None, scale: float = 2) -> Page:
        ctx = browser.new_context(viewport=viewport or PHONE, device_scale_factor=scale)
        ctx.set_default_timeout(timeout(EXPECT_S) * 1000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", on_console)
        page.goto(url)
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def rider(server: ServerProcess) -> Iterator[Rider]:
    r = Rider(server)
    yield r
    r.close()
