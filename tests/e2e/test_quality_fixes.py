"""Fix filtering, fix times and batch upload, over real HTTP and WebSockets (README "Beyond
API.md"): a dropped fix answers 200 with the unchanged view and the reason, is counted and never
broadcast; a late fix goes into the history only; a status rides through a dropped fix; a batch
is one command whose answer says which fixes were kept."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from harness import ServerProcess
from tests.e2e.clients import Api, assert_error, assert_view, run, ws_connect
from tests.e2e.quality import (
    at_distance,
    drain,
    fix,
    kinds,
    post_batch,
    post_fix_ok,
)
from tests.support import timeout


def test_dropped_fixes_answer_the_unchanged_view_and_are_never_broadcast(
    server: ServerProcess,
) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time()

        async def body() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            async with ws_connect(server, view["tracking_id"]) as ws:
                await drain(ws, 0.5)  # initial_state
                kept = await asyncio.to_thread(post_fix_ok, api, view, fix(3000, t - 40))
                assert "filtered" not in kept
                for body, reason in (
                    (fix(3000, t - 40), "duplicate"),
                    (fix(0, t - 30) | {"lat": 0.0, "lng": 0.0}, "null_island"),
                    (fix(2900, t - 30, accuracy_m=500), "inaccurate"),
                    (fix(2900, t + 3600), "in_future"),
                    (fix(2900, t - 3 * 86400), "too_old"),
                    (fix(30_000, t - 20), "too_fast"),
                ):
                    answer = await asyncio.to_thread(post_fix_ok, api, view, body)
                    assert answer.pop("filtered") == reason, body
                    assert answer == kept  # the unchanged view
                return kept, await drain(ws, 1.0)

        kept, seen = run(body())
        assert kinds(seen) == [("location_update", 2)]  # only the kept fix reached watchers
        assert api.view(view["tracking_id"]) == kept
        filtered = api.stats()["fixes"]["filtered"]
        for reason in ("duplicate", "null_island", "inaccurate", "in_future", "too_old",
                       "too_fast"):  # fmt: skip
            assert filtered.get(reason, 0) >= 1, (reason, filtered)
        metrics = api.http.get("/metrics", headers=api.auth("superadmin", "ops")).text
        assert 'tracking_fixes_filtered_total{reason="too_fast"}' in metrics


def test_a_plain_update_is_taken_as_api_md_says(server: ServerProcess) -> None:
    # No recorded_at nor accuracy_m: a client of the contract sees no filtering at all.
    with Api(server) as api:
        view = api.start_ok()
        after = api.update_ok(view, 0.0, 0.0)
        assert after["current_location"]["lat"] == 0.0
        assert "filtered" not in after
        assert "proximity" not in after
        assert set(after) == set(view)  # no new keys in a plain session's view


def test_fix_times_and_late_fixes(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time()
        post_fix_ok(api, view, fix(2000, t - 60))
        newest = post_fix_ok(api, view, fix(1900, t - 30))
        # The location's timestamp is the fix's device time, not when it arrived.
        assert newest["current_location"]["timestamp"] == int(t - 30)
        late = post_fix_ok(api, view, fix(1950, t - 45))
        assert late["seq"] == newest["seq"] + 1
        assert late["current_location"] == newest["current_location"]
        items = api.http.get(f"/tracking/{view['tracking_id']}/history").json()["items"]
        assert items[-1] == {
            "seq": late["seq"], "status": "ASSIGNED", "previous_status": None,
            "lat": at_distance(1950)[0], "lng": at_distance(1950)[1], "at": items[-1]["at"],
            "recorded_at": int(t - 45), "late": True,
        }  # fmt: skip
        # Two fixes of one engine batch are judged by their own times: 500 m in 25 s is fine.
        v2 = api.start_ok()

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout(30)) as c:
                h = api.auth("rider", v2["rider_id"])
                url = f"/tracking/update/{v2['tracking_id']}"
                first = await c.post(url, json=fix(3000, t - 30), headers=h)
                return [first, await c.post(url, json=fix(2500, t - 5), headers=h)]

        for resp in run(together()):
            assert resp.status_code == 200, resp.text
            assert "filtered" not in resp.json()


def test_a_status_carried_by_a_dropped_fix_applies(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time()
        before = post_fix_ok(api, view, fix(3000, t - 60))
        answer = post_fix_ok(api, view, fix(50_000, t - 50, status="PICKED_UP"))
        assert answer.pop("filtered") == "too_fast"
        assert_view(answer, status="PICKED_UP", seq=before["seq"] + 1)
        assert answer["current_location"] == before["current_location"]


def test_batch_upload_over_http(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time() - 600
        fixes = [fix(4000, t), fix(3800, t + 30, "PICKED_UP"), fix(3800, t + 30),
                 fix(40_000, t + 60), fix(3500, t + 90), fix(3700, t + 45)]  # fmt: skip
        resp = post_batch(api, view, fixes)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["fixes"] == [
            {"kept": True, "seq": 2, "filtered": None, "late": False},
            {"kept": True, "seq": 3, "filtered": None, "late": False},
            {"kept": False, "seq": None, "filtered": "duplicate", "late": False},
            {"kept": False, "seq": None, "filtered": "too_fast", "late": False},
            {"kept": True, "seq": 4, "filtered": None, "late": False},
            {"kept": True, "seq": 5, "filtered": None, "late": True},
        ]
        assert_view(out["view"], status="PICKED_UP", seq=5)
        assert out["view"]["current_location"]["timestamp"] == int(t + 90)
        assert api.view(view["tracking_id"]) == out["view"]
        # Re-sent (no answer reached the phone): nothing changes.
        again = post_batch(api, view, fixes).json()
        assert [f["kept"] for f in again["fixes"]] == [False] * len(fixes)
        assert again["view"] == out["view"]


def test_batch_refusals_change_nothing(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time() - 100
        tid = view["tracking_id"]
        resp = post_batch(api, view, [fix(900, t, "PICKED_UP"), fix(800, t + 10, "DELIVERED")])
        assert_error(resp, 409, "fixes[1]", "IN_TRANSIT")
        assert_error(post_batch(api, view, []), 422)
        assert_error(post_batch(api, view, [{"lat": 5.6, "lng": -0.18}]), 422, "recorded_at")
        too_many = [fix(900 - i, t + i) for i in range(101)]
        assert_error(post_batch(api, view, too_many), 413, "100")
        assert_error(post_batch(api, view, [fix(900, t)], headers=api.auth("customer", "c")),
                     403)  # fmt: skip
        assert_error(post_batch(api, view, [fix(900, t)], headers={}), 401)
        assert api.view(tid)["seq"] == 1


def test_batch_and_filtered_reports_over_websocket(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        tid, rider = view["tracking_id"], view["rider_id"]
        t = time.time() - 300

        async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with ws_connect(server, tid, server.token("rider", rider)) as phone, \
                    ws_connect(server, tid) as watcher:
                await drain(phone, 0.5)
                await drain(watcher, 0.5)
                await phone.send(json.dumps({"type": "location_batch", "fixes": [
                    fix(2000, t), fix(1900, t + 20, "PICKED_UP"), fix(80_000, t + 30),
                ]}))
                await phone.send(json.dumps({"type": "location_update",
                                             "location": fix(1900, t + 20)}))
                return await drain(phone, 1.5), await drain(watcher, 1.5)

        to_phone, to_watcher = run(body())
        result = next(m for m in to_phone if m["type"] == "location_batch_result")
        assert [f["kept"] for f in result["data"]["fixes"]] == [True, True, False]
        assert result["data"]["fixes"][2]["filtered"] == "too_fast"
        assert result["data"]["view"]["seq"] == 3
        dropped = next(m for m in to_phone if m["type"] == "fix_filtered")
        assert dropped["data"]["filtered"] == "duplicate"
        assert dropped["fix"]["recorded_at"] == t + 20  # tells the phone which fix it was
        assert dropped["data"]["seq"] == 3
        # Watchers see each accepted change, not the phone's private answers.
        assert kinds(to_watcher) == [("location_update", 2), ("location_update", 3),
                                     ("status_change", 3)]  # fmt: skip
        assert {m["type"] for m in to_watcher} == {"location_update", "status_change"}
