"""The seed's "Usage Examples" (seed/tracking-service-summary.md) against the real server.

The curl calls become httpx calls with real tokens; the JavaScript client's message flow is
replayed with websockets. Where the seed and API.md differ, API.md wins, and the test says so:
the seed's update jumps ASSIGNED -> IN_TRANSIT (409 under the status machine), and its
sample ETA of 180 s does not match its own coordinates (about 110 m away: 60 s).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    assert_error,
    assert_view,
    bearer,
    close_code,
    expected_eta,
    recv_json,
    run,
    ws_connect,
)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


def test_seed_curl_examples(api: Api) -> None:
    http = api.http
    rider_token = api.srv.token("rider", "RIDER-789")

    # Start Tracking (HTTP)
    resp = http.post("/tracking/start", headers=bearer(rider_token), json={
        "order_id": "ORD-12345", "rider_id": "RIDER-789",
        "dropoff_lat": 5.6037, "dropoff_lng": -0.1869, "phone": "+233501234567",
    })
    assert resp.status_code == 201, resp.text
    started = assert_view(resp.json(), order_id="ORD-12345", rider_id="RIDER-789",
                          status="ASSIGNED", current_location=None, eta_seconds=None,
                          dropoff={"lat": 5.6037, "lng": -0.1869})
    tid = started["tracking_id"]
    assert tid.startswith("TRK-")

    # Update Location (HTTP), exactly as the seed sends it: a skip, which API.md refuses...
    seed_update = {"lat": 5.6045, "lng": -0.1875, "status": "IN_TRANSIT"}
    skipped = http.post(f"/tracking/update/{tid}", headers=bearer(rider_token), json=seed_update)
    assert_error(skipped, 409, "PICKED_UP")
    # ...so the rider picks up first, then the seed's update is accepted.
    picked = http.post(f"/tracking/update/{tid}", headers=bearer(rider_token),
                       json={"lat": 5.6050, "lng": -0.1880, "status": "PICKED_UP"})
    assert picked.status_code == 200, picked.text
    resp = http.post(f"/tracking/update/{tid}", headers=bearer(rider_token), json=seed_update)
    assert resp.status_code == 200, resp.text
    updated = assert_view(resp.json(), tracking_id=tid, status="IN_TRANSIT")
    loc = updated["current_location"]
    assert (loc["lat"], loc["lng"]) == (5.6045, -0.1875)
    assert updated["eta_seconds"] == expected_eta(5.6045, -0.1875, 5.6037, -0.1869) == 60

    # Get Tracking Status (Public): no auth.
    resp = http.get(f"/tracking/{tid}")
    assert resp.status_code == 200, resp.text
    assert resp.json() == updated
    assert "233501234567" not in resp.text

    # Get Rider Current Tracking, with the rider's token and with a merchant's.
    for token in (rider_token, api.srv.token("merchant", "MERCHANT-1")):
        resp = http.get("/tracking/rider/RIDER-789", headers=bearer(token))
        assert resp.status_code == 200, resp.text
        assert resp.json() == updated

    # Admin Statistics
    resp = http.get("/stats/tracking", headers=bearer(api.srv.token("superadmin", "ADMIN")))
    assert resp.status_code == 200, resp.text
    stats = resp.json()
    assert stats["total_active_sessions"] >= 1
    assert isinstance(stats["total_websocket_connections"], int)
    assert set(stats["status_distribution"]) == {"ASSIGNED", "PICKED_UP", "IN_TRANSIT",
                                                 "DELIVERED"}
    assert stats["status_distribution"]["IN_TRANSIT"] >= 1
    assert set(stats["sessions_by_recency"]) == {"last_5_min", "last_hour", "older"}
    assert stats["sessions_by_recency"]["last_5_min"] >= 1


def test_seed_javascript_client_flow(api: Api) -> None:
    view = api.advance_to(api.start_ok(), "PICKED_UP")
    tid = view["tracking_id"]
    jwt_token = api.srv.token("rider", view["rider_id"])

    def update_location(lat: float, lng: float, status: str) -> str:
        return json.dumps({"type": "location_update", "location": {"lat": lat, "lng": lng,
                                                                   "status": status}})

    async def body() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        # const ws = new WebSocket(`ws://localhost:8500/ws/tracking/TRK-001?token=${jwt_token}`)
        async with ws_connect(api.srv, tid, jwt_token) as ws:
            seen.append(await recv_json(ws))  # onmessage: initial_state
            await ws.send(update_location(5.6045, -0.1875, "IN_TRANSIT"))
            seen += [await recv_json(ws), await recv_json(ws)]  # location_update, status_change
            await ws.send(update_location(5.6037, -0.1869, "DELIVERED"))
            seen += [await recv_json(ws), await recv_json(ws)]
            await ws.send(json.dumps({"type": "ping"}))  # the keep-alive interval
            seen.append(await recv_json(ws))
            await ws.send(update_location(5.6037, -0.1869, "DELIVERED"))  # after delivery
            seen.append(await recv_json(ws))  # onmessage: error
            await ws.close()  # onclose: normal closure
            assert await close_code(ws) == 1000
        return seen

    seen = run(body())
    assert [m["type"] for m in seen] == [
        "initial_state", "location_update", "status_change", "location_update", "status_change",
        "pong", "error",
    ]
    assert seen[0]["data"] == view
    in_transit = seen[1]["data"]
    # What the seed's handler reads off each location_update:
    assert in_transit["current_location"]["lat"] == 5.6045
    assert in_transit["eta_seconds"] == 60
    assert in_transit["status"] == "IN_TRANSIT"
    assert seen[2]["data"]["previous_status"] == "PICKED_UP"
    assert seen[3]["data"]["status"] == "DELIVERED"
    assert seen[3]["data"]["eta_seconds"] == 0
    assert seen[4]["data"]["previous_status"] == "IN_TRANSIT"
    assert isinstance(seen[6]["message"], str)
    assert api.view(tid)["status"] == "DELIVERED"
