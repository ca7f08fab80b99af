"""API.md "Running it": `tracking token` mints what `tracking serve` accepts, secret or not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest

from harness import ServerProcess, free_port
from tests.e2e.clients import DROPOFF, assert_error, assert_view, bearer, uid
from tests.support import SERVER_STARTUP_S, timeout

JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def _clean_env(**env: str) -> dict[str, str]:
    # No TRACKING_* or RAY_ADDRESS leaks in from the test process: only what the test names.
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("TRACKING_") and k != "RAY_ADDRESS"}
    return {**base, **env}


def cli_token(env: dict[str, str], role: str, sub: str, ttl_s: int | None = None) -> str:
    cmd = [sys.executable, "-m", "api.cli", "token", "--role", role, "--sub", sub]
    if ttl_s is not None:
        cmd += ["--ttl", str(ttl_s)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout(120))
    assert done.returncode == 0, f"`tracking token` failed: {done.stderr[-2000:]}"
    token = done.stdout.strip()
    assert JWT_SHAPE.match(token), f"`tracking token` should print just a JWT, got {done.stdout!r}"
    return token


def start_body(rider: str) -> dict[str, object]:
    return {"order_id": uid("ORD"), "rider_id": rider,
            "dropoff_lat": DROPOFF[0], "dropoff_lng": DROPOFF[1]}


@contextmanager
def bare_server(data_dir: str) -> Iterator[ServerProcess]:
    """`tracking serve` with nothing configured but its data dir: no secret, no Ray address."""
    srv = ServerProcess(data_dir=data_dir, port=free_port(),
                        startup_timeout_s=timeout(SERVER_STARTUP_S))
    srv.log_path = str(Path(data_dir).parent / f"server-{srv.port}.log")
    cmd = [sys.executable, "-m", "api.cli", "serve", "--host", srv.host, "--port", str(srv.port)]
    with open(srv.log_path, "ab") as log:
        srv.proc = subprocess.Popen(
            cmd, env=_clean_env(TRACKING_DATA_DIR=data_dir),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_token_cli_mints_what_the_server_accepts(server: ServerProcess) -> None:
    env = _clean_env(TRACKING_DATA_DIR=server.data_dir, TRACKING_JWT_SECRET=server.secret)
    rider = uid("RIDER")
    before = int(time.time())
    token = cli_token(env, "rider", rider, ttl_s=600)
    after = int(time.time())
    claims = jwt.decode(token, server.secret, algorithms=["HS256"])
    assert claims["sub"] == rider
    assert claims["role"] == "rider"
    assert before + 600 - 1 <= claims["exp"] <= after + 600 + 1, claims
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    with httpx.Client(base_url=server.base_url, timeout=timeout(30)) as http:
        resp = http.post("/tracking/start", json=start_body(rider), headers=bearer(token))
        assert resp.status_code == 201, resp.text
        assert_view(resp.json(), rider_id=rider)
        admin = cli_token(env, "superadmin", "ops")
        assert http.get("/stats/tracking", headers=bearer(admin)).status_code == 200
        merchant = cli_token(env, "merchant", "m-1")
        # A valid identity without the right: 403, not 401.
        assert_error(http.get("/stats/tracking", headers=bearer(merchant)), 403)


def test_without_a_secret_token_and_serve_agree_through_the_data_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = str(tmp_path_factory.mktemp("nosecret") / "data")
    env = _clean_env(TRACKING_DATA_DIR=data_dir)
    rider = uid("RIDER")
    # `token` first: it creates the secret, and the server started later must reuse it.
    minted_before = cli_token(env, "rider", rider)
    assert os.listdir(data_dir), "the secret should be created once in the data dir"
    with tempfile.TemporaryDirectory(prefix="tracking-other-") as other:
        # Another data dir means another random secret: there is no built-in default.
        foreign = cli_token(_clean_env(TRACKING_DATA_DIR=other), "superadmin", "ops")
    # With nothing configured but the data dir, serve starts its own Ray and store, and works.
    with bare_server(data_dir) as srv, httpx.Client(base_url=srv.base_url,
                                                    timeout=timeout(30)) as http:
        resp = http.post("/tracking/start", json=start_body(rider), headers=bearer(minted_before))
        assert resp.status_code == 201, resp.text
        view = assert_view(resp.json(), rider_id=rider, status="ASSIGNED")
        minted_after = cli_token(env, "rider", rider)
        resp = http.post(f"/tracking/update/{view['tracking_id']}",
                         json={"lat": 5.61, "lng": -0.18}, headers=bearer(minted_after))
        assert resp.status_code == 200, resp.text
        assert_error(http.get("/stats/tracking", headers=bearer(foreign)), 401)
