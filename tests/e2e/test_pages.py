"""The tracking page in headless Chromium against a real server: live updates, reconnects with
catch-up from history, expiry, not found, and the optional tile layer."""

from __future__ import annotations

import math
import socket
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from harness import ServerProcess
from tests.e2e.test_pages_support import (
    DROPOFF,
    EXPECT_S,
    Rider,
    ServerFactory,
    eta_text,
    expect_step,
    haversine_km,
    north_of,
    pin_tip,
    settled_centre,
    wait_until,
)
from tests.support import timeout

pytestmark = pytest.mark.browser
# The fixtures (browser, open_page, rider, screenshots) come from the support module.
pytest_plugins = ["tests.e2e.test_pages_support"]

# Sessions of the short-lived server expire while a page shows them, yet must outlive every
# wait made while they are meant to be live (an expectation, or the poll for tiles: at most
# EXPECT_S each, scaled), with room for a second such wait back to back: a slow step then
# fails on its own expectation instead of meeting an expired session.
SHORT_TTL_S = 2 * timeout(EXPECT_S)
# The page's reconnect backoff, and the expiry sweep's notice, on top of the TTL.
RECONNECT_S = 40.0


class CuttableProxy:
    """A loopback TCP forwarder whose connections can be cut, as a dropped network would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.accepting = True
        self.stopped = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self.threads[0].start()

    def _accept_loop(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self.lock:
            self.conns.discard(s)
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore()`."""
        self.accepting = False
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.stopped = True
        self.cut()
        for t in self.threads:
            t.join(timeout(5))
        self.listener.close()


def tile_png(size: int = 256, rgb: tuple[int, int, int] = (0xDD, 0xE4, 0xEA)) -> bytes:
    """A plain square PNG, built by hand so the test needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


class TileServer:
    """A stand-in for an external map tile server: answers every tile with a tiny PNG."""

    PNG = tile_png()

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.referers: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                owner.referers.append(self.headers.get("Referer"))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(owner.PNG)))
                self.end_headers()
                self.wfile.write(owner.PNG)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout(5))


@pytest.fixture(scope="module")
def tile_server() -> Iterator[TileServer]:
    t = TileServer()
    yield t
    t.close()


@pytest.fixture(scope="module")
def short_lived_server(
    server_factory: ServerFactory, tile_server: TileServer
) -> Iterator[ServerProcess]:
    """Sessions live SHORT_TTL_S; map tiles come from the local stand-in tile server."""
    tiles = f"http://127.0.0.1:{tile_server.port}/tiles/{{z}}/{{x}}/{{y}}.png"
    with server_factory(TRACKING_SESSION_TTL_S=f"{SHORT_TTL_S:g}", TRACKING_TILE_URL=tiles) as srv:
        yield srv


# ---- the tracking page --------------------------------------------------------------------


def test_tracking_page_follows_a_delivery_live(
    server: ServerProcess, rider: Rider, open_page: Callable[..., Page], screenshots: Path
) -> None:
    tid = rider.start()["tracking_id"]
    page = open_page(f"{server.base_url}/track/{tid}")

    expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
    expect_step(page, "ASSIGNED")
    expect(page.locator("#status-text")).to_contain_text("assigned")
    expect(page.locator("#eta-minutes")).to_have_text("\u2013")
    expect(page.locator("#rider-marker")).to_have_attribute("visibility", "hidden")

    far = north_of(DROPOFF, 2.5)
    view = rider.update(tid, far, "PICKED_UP")
    assert view["eta_seconds"] == 300  # API.md: 2.5 km at 30 km/h
    expect_step(page, "PICKED_UP")
    expect(page.locator("#eta-minutes")).to_have_text("5 min")
    expect(page.locator("#distance")).to_have_text("2.5 km")
    expect(page.locator("#rider-marker")).to_have_attribute("data-lat", str(far[0]))
    before = settled_centre(page, "#rider-marker")
    gap_before = math.dist(before, pin_tip(page))

    near = (DROPOFF[0] + 0.006, DROPOFF[1] - 0.004)
    view = rider.update(tid, near, "IN_TRANSIT")
    expect_step(page, "IN_TRANSIT")
    expect(page.locator('.steps li[data-step="PICKED_UP"]')).to_have_class("done")
    expect(page.locator("#status-text")).to_have_text("Your order is on the way.")
    expect(page.locator("#eta-minutes")).to_have_text(eta_text(view))
    assert eta_text(view) != "5 min"
    km = float(page.locator("#distance").get_attribute("data-km") or "nan")
    assert km == pytest.approx(haversine_km(near, DROPOFF), abs=1e-3)
    expect(page.locator("#rider-marker")).to_have_attribute("data-lat", str(near[0]))
    after = settled_centre(page, "#rider-marker")
    assert math.dist(after, before) > 10, "the rider marker did not move on screen"
    assert math.dist(after, pin_tip(page)) < gap_before, "the marker did not approach the drop-off"
    expect(page.locator("#trail")).to_have_attribute("data-count", "2")
    expect(page.locator("#eta-clock")).to_contain_text("around")
    page.screenshot(path=screenshots / "track-in-transit.png", full_page=True)

    rider.update(tid, DROPOFF, "DELIVERED")
    expect(page.locator("body")).to_have_attribute("data-state", "delivered")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice-title")).to_have_text("Delivered")
    expect_step(page, "DELIVERED")
    expect(page.locator("#eta-label")).to_have_text("Delivered at")
    expect(page.locator("#conn")).to_have_attribute("data-conn", "done")
    page.screenshot(path=screenshots / "track-delivered.png", full_page=True)


def test_tracking_page_reconnects_and_catches_up_from_history(
    server: ServerProcess, rider: Rider, open_page: Callable[..., Page], screenshots: Path
) -> None:
    tid = rider.start()["tracking_id"]
    route = [north_of(DROPOFF, km) for km in (3.0, 2.5, 2.0, 1.5)]
    rider.update(tid, route[0], "PICKED_UP")
    proxy = CuttableProxy(server.port)
    try:
        page = open_page(f"http://127.0.0.1:{proxy.port}/track/{tid}")
        expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        expect(page.locator("#trail")).to_have_attribute("data-count", "1")

        proxy.cut()
        expect(page.locator("#conn")).to_have_attribute("data-conn", "reconnecting")
        expect(page.locator("#conn-text")).to_contain_text("reconnecting in")
        rider.update(tid, route[1], "IN_TRANSIT")
        rider.update(tid, route[2])
        last = rider.update(tid, route[3])
        # Nothing can reach the page while the network is down.
        expect_step(page, "PICKED_UP")
        page.screenshot(path=screenshots / "track-reconnecting.png", full_page=True)

        proxy.restore()
        conn = page.locator("#conn")
        expect(conn).to_have_attribute("data-conn", "live", timeout=timeout(RECONNECT_S) * 1000)
        expect_step(page, "IN_TRANSIT")
        expect(page.locator("#eta-minutes")).to_have_text(eta_text(last))
        # The updates made while disconnected come back from history, not just the latest.
        expect(page.locator("#trail")).to_have_attribute("data-count", "4")
        expect(page.locator("#rider-marker")).to_have_attribute("data-lat", str(route[3][0]))
        settled_centre(page, "#rider-marker")
        page.screenshot(path=screenshots / "track-caught-up.png", full_page=True)

        # Still live after the reconnect: a new update arrives over the new socket.
        rider.update(tid, north_of(DROPOFF, 1.0))
        expect(page.locator("#trail")).to_have_attribute("data-count", "5")
    finally:
        proxy.close()


def test_unknown_tracking_link_says_not_found(
    server: ServerProcess, open_page: Callable[..., Page]
) -> None:
    page = open_page(f"{server.base_url}/track/TRK-{uuid.uuid4().hex}")
    expect(page.locator("body")).to_have_attribute("data-state", "notfound")
    expect(page.locator("#notice-title")).to_have_text("We couldn't find this delivery")
    expect(page.locator("#live")).to_be_hidden()


def test_tracking_link_expires_while_open_and_when_opened_later(
    short_lived_server: ServerProcess, open_page: Callable[..., Page], screenshots: Path
) -> None:
    srv = short_lived_server
    rider = Rider(srv)
    try:
        tid = rider.start()["tracking_id"]
        rider.update(tid, north_of(DROPOFF, 1.2), "PICKED_UP")
        page = open_page(f"{srv.base_url}/track/{tid}")
        expect(page.locator("#conn")).to_have_attribute("data-conn", "live")
        # The session expires SHORT_TTL_S after it started; the server tells watchers.
        expired = page.locator("body")
        expect(expired).to_have_attribute(
            "data-state", "expired", timeout=(SHORT_TTL_S + timeout(RECONNECT_S)) * 1000)
        expect(page.locator("#notice-title")).to_have_text("This tracking link has expired")
        expect(page.locator("#status-text")).to_have_text("This tracking link has expired.")
        expect(page.locator("#live")).to_be_hidden()
        page.screenshot(path=screenshots / "track-expired.png", full_page=True)

        later = open_page(f"{srv.base_url}/track/{tid}")
        expect(later.locator("body")).to_have_attribute("data-state", "expired")
        expect(later.locator("#notice-title")).to_have_text("This tracking link has expired")
    finally:
        rider.close()


def test_tracking_page_layers_tiles_only_from_the_configured_server(
    short_lived_server: ServerProcess, tile_server: TileServer, open_page: Callable[..., Page]
) -> None:
    srv = short_lived_server
    rider = Rider(srv)
    try:
        tid = rider.start()["tracking_id"]
        rider.update(tid, north_of(DROPOFF, 1.0), "PICKED_UP")
        page = open_page(f"{srv.base_url}/track/{tid}")
        expect(page.locator("#rider-marker")).to_be_visible()
        tiles = page.locator("#map-tiles image")
        expect(tiles.first).to_be_attached()
        wait_until(lambda: tile_server.paths, EXPECT_S, "the page to fetch tiles")
        assert all(p.startswith("/tiles/") and p.endswith(".png") for p in tile_server.paths)
        # The tracking URL is a secret: it must not leak to the tile server.
        assert all(ref is None for ref in tile_server.referers), tile_server.referers
        expect(page.locator("#tile-credit")).to_be_visible()
    finally:
        rider.close()
