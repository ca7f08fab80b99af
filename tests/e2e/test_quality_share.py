"""Share links over real HTTP and WebSockets: who may create one, what its token opens (only
that session's view, history, socket and page, read-only) and that it expires."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    assert_error,
    bearer,
    expect_error_then_close,
    initial_state,
    recv_json,
    run,
    send_update,
    ws_connect,
)


def share(api: Api, tid: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    return api.http.post(f"/tracking/{tid}/share", json=body or None, headers=headers)


def test_who_may_share(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        tid = view["tracking_id"]
        for role, sub in (("rider", view["rider_id"]), ("merchant", "m-1"), ("superadmin", "a")):
            resp = share(api, tid, api.auth(role, sub))
            assert resp.status_code == 201, resp.text
        assert_error(share(api, tid, api.auth("rider", "someone-else")), 403, "rider")
        assert_error(share(api, tid, api.auth("customer", "c-1")), 403)
        assert_error(share(api, tid, {}), 401)
        assert_error(share(api, "TRK-nope", api.auth("merchant", "m")), 404)
        assert_error(share(api, tid, api.auth("merchant", "m"), ttl_s=5), 422, "ttl_s")


def test_a_share_link_opens_only_its_session(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        other = api.start_ok()
        tid = view["tracking_id"]
        resp = share(api, tid, api.auth("merchant", "m-1"))
        link = resp.json()
        token = link["token"]
        assert link["path"] == f"/track/{tid}?share={token}"
        assert link["url"] == server.base_url + link["path"]
        # By default it lives as long as the session (TRACKING_SESSION_TTL_S after the start).
        assert abs(link["expires_at"] - (view["started_at"] + 86400)) <= 1
        claims = jwt.decode(token, server.secret, algorithms=["HS256"])
        assert claims["scope"] == "share"
        assert claims["tid"] == tid
        assert "role" not in claims  # no user role: it passes no other check

        # The page, the view, the history and the socket of this session.
        page = api.http.get(link["path"])
        assert page.status_code == 200
        assert api.get(tid, bearer(token)).json() == api.view(tid)
        hist = api.http.get(f"/tracking/{tid}/history", headers=bearer(token))
        assert hist.status_code == 200
        # Nothing else: another session, and every endpoint that needs a user.
        assert_error(api.get(other["tracking_id"], bearer(token)), 403, "another")
        assert_error(api.update(tid, 5.61, -0.18, headers=bearer(token)), 401, "share")
        assert_error(api.http.get("/stats/tracking", headers=bearer(token)), 401)
        assert_error(api.http.get(f"/tracking/rider/{view['rider_id']}",
                                  headers=bearer(token)), 401)  # fmt: skip
        assert_error(share(api, tid, bearer(token)), 401)

        async def body() -> None:
            async with ws_connect(server, tid, token) as ws:
                assert (await initial_state(ws))["tracking_id"] == tid
                await send_update(ws, 5.61, -0.18)  # read-only
                msg = await recv_json(ws)
                assert msg["type"] == "error"
                assert "not authorised" in msg["message"]
            async with ws_connect(server, other["tracking_id"], token) as ws:
                assert "another" in await expect_error_then_close(ws, 1008)

        run(body())


def test_a_share_link_expires(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        tid = view["tracking_id"]
        link = share(api, tid, api.auth("rider", view["rider_id"]), ttl_s=60).json()
        assert abs(link["expires_at"] - (time.time() + 60)) <= 2
        expired = jwt.encode(
            {"scope": "share", "tid": tid, "sub": f"share:{tid}", "exp": int(time.time()) - 1},
            server.secret, algorithm="HS256",
        )
        assert_error(api.get(tid, bearer(expired)), 401, "expired")

        async def body() -> None:
            async with ws_connect(server, tid, expired) as ws:
                assert "expired" in await expect_error_then_close(ws, 1008)

        run(body())
        forged = jwt.encode({"scope": "share", "tid": tid, "exp": int(time.time()) + 60},
                            "not-the-secret-" + "x" * 32, algorithm="HS256")  # fmt: skip
        assert_error(api.get(tid, bearer(forged)), 401)
