"""API.md "Identity": HS256 pinned; bad tokens get 401 over HTTP, error + 1008 over WebSocket."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from harness import ServerProcess
from tests.e2e.clients import (
    Api,
    assert_error,
    bearer,
    expect_error_then_close,
    initial_state,
    run,
    uid,
    ws_connect,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "ops", "role": "superadmin", "iat": now, "exp": now + 3600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    parts = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join(_b64(p) for p in parts) + "." + _b64(signature)


def _tampered(secret: str) -> str:
    # A real rider token whose payload is swapped for a superadmin's, signature kept.
    header, _, sig = jwt.encode(_claims(sub="r1", role="rider"), secret, "HS256").split(".")
    return f"{header}.{_b64(json.dumps(_claims()).encode())}.{sig}"


def _other_hmac(secret: str, alg: str) -> str:
    # The server's own secret under another HMAC; pyjwt warns that it is short for that hash.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(_claims(), secret, alg)


# Every token is a superadmin's in all but its flaw, so accepting it would let the call succeed.
BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "alg-none": lambda s: _unsigned({"alg": "none", "typ": "JWT"}, _claims()),
    "alg-None-cased": lambda s: _unsigned({"alg": "None", "typ": "JWT"}, _claims()),
    "hs384": lambda s: _other_hmac(s, "HS384"),
    "hs512": lambda s: _other_hmac(s, "HS512"),
    "rs256-label": lambda s: _unsigned({"alg": "RS256", "typ": "JWT"}, _claims(), b"\x01" * 256),
    "expired": lambda s: jwt.encode(_claims(exp=int(time.time()) - 600), s, "HS256"),
    "bad-signature": lambda s: jwt.encode(_claims(), s + "-not-the-secret", "HS256"),
    "tampered-payload": _tampered,
    "missing-sub": lambda s: jwt.encode(_claims(sub=None), s, "HS256"),
    "missing-role": lambda s: jwt.encode(_claims(role=None), s, "HS256"),
    "missing-exp": lambda s: jwt.encode(_claims(exp=None), s, "HS256"),
    "unknown-role": lambda s: jwt.encode(_claims(role="admin"), s, "HS256"),
    "garbage": lambda s: "not-a-jwt",
}


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    with Api(server) as a:
        yield a


@pytest.fixture(scope="module")
def live(api: Api) -> dict[str, Any]:
    return api.start_ok()


def test_a_valid_hs256_token_is_accepted(api: Api, live: dict[str, Any]) -> None:
    # The positive control: the same calls the refusals below make succeed with a good token.
    token = jwt.encode(_claims(), api.srv.secret, "HS256")
    assert api.http.get("/stats/tracking", headers=bearer(token)).status_code == 200
    resp = api.update(live["tracking_id"], 5.61, -0.18, headers=bearer(token))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("flaw", sorted(BAD_TOKENS))
def test_invalid_token_is_401_on_every_http_endpoint(
    api: Api, live: dict[str, Any], flaw: str
) -> None:
    token = BAD_TOKENS[flaw](api.srv.secret)
    h = bearer(token)
    rider = uid("RIDER")
    before = api.view(live["tracking_id"])
    assert_error(api.start(rider, headers=h), 401)
    assert_error(api.update(live["tracking_id"], 5.6, -0.18, headers=h), 401)
    assert_error(api.http.get(f"/tracking/rider/{live['rider_id']}", headers=h), 401)
    assert_error(api.http.get("/stats/tracking", headers=h), 401)
    # Nothing changed: no session for the rider, the live one untouched.
    assert api.http.get(f"/tracking/rider/{rider}", headers=api.auth("merchant", "m")
                        ).status_code == 404
    assert api.view(live["tracking_id"]) == before


def test_invalid_token_is_401_even_on_a_public_read(api: Api, live: dict[str, Any]) -> None:
    # Reading needs no token, but API.md refuses a token that is present and invalid
    # (as the WebSocket, also public, closes 1008 for one).
    refused = {}
    for flaw, make in sorted(BAD_TOKENS.items()):
        resp = api.get(live["tracking_id"], headers=bearer(make(api.srv.secret)))
        refused[flaw] = resp.status_code
    assert refused == dict.fromkeys(BAD_TOKENS, 401)


@pytest.mark.parametrize("flaw", sorted(BAD_TOKENS))
def test_invalid_token_closes_websocket_1008(api: Api, live: dict[str, Any], flaw: str) -> None:
    token = BAD_TOKENS[flaw](api.srv.secret)

    async def body() -> str:
        async with ws_connect(api.srv, live["tracking_id"], token) as ws:
            return await expect_error_then_close(ws, 1008)

    message = run(body())
    assert "token" in message.lower(), f"the error should say the token is the problem: {message!r}"


@pytest.mark.parametrize(
    "header",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic b3BzOm9wcw=="},
     {"Authorization": "Token abc"}],
    ids=["absent", "empty-bearer", "basic", "other-scheme"],
)
def test_missing_token_is_401_where_required(
    api: Api, live: dict[str, Any], header: dict[str, str]
) -> None:
    rider = uid("RIDER")
    assert_error(api.start(rider, headers=header), 401)
    assert_error(api.update(live["tracking_id"], 5.6, -0.18, headers=header), 401)
    assert_error(api.http.get(f"/tracking/rider/{rider}", headers=header), 401)
    assert_error(api.http.get("/stats/tracking", headers=header), 401)


def test_public_read_and_watch_need_no_token(api: Api, live: dict[str, Any]) -> None:
    resp = api.get(live["tracking_id"])
    assert resp.status_code == 200, resp.text

    async def body() -> dict[str, Any]:
        async with ws_connect(api.srv, live["tracking_id"]) as ws:
            return await initial_state(ws)

    assert run(body())["tracking_id"] == live["tracking_id"]


@pytest.mark.parametrize("role", ["rider", "merchant", "customer", "superadmin"])
def test_every_role_is_a_valid_identity(api: Api, live: dict[str, Any], role: str) -> None:
    # Valid tokens of every role may watch; none is refused as an identity (no 401 / 1008).
    token = api.srv.token(role, uid(role))

    async def body() -> dict[str, Any]:
        async with ws_connect(api.srv, live["tracking_id"], token) as ws:
            return await initial_state(ws)

    assert run(body())["tracking_id"] == live["tracking_id"]
    resp = api.http.get("/stats/tracking", headers=bearer(token))
    assert resp.status_code == (200 if role == "superadmin" else 403), resp.text
