"""Finding 9 on a real full disk: the data dir on a small tmpfs the test mounts, filled up.

While the disk is full an update answers 503 and `/health` says why; once space is back the
service takes updates again by itself, and nothing it acknowledged is lost (checked after a
restart on the same files). Mounting needs root (CI runs as root); elsewhere the test is
skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ServerProcess
from tests.e2e.clients import DROPOFF, bearer, eventually, uid
from tests.support import timeout

Factory = Callable[..., AbstractContextManager[ServerProcess]]
DISK = "8m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file (ENOSPC ends it)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_503_with_the_reason_then_recovers_losing_nothing(
    server_factory: Factory, small_disk: Path
) -> None:
    namespace = "disk-" + uuid.uuid4().hex[:8]
    env = {"TRACKING_DATA_DIR": str(small_disk), "TRACKING_SHARDS": "2",
           "TRACKING_RAY_NAMESPACE": namespace}
    acked: dict[str, int] = {}  # tracking id -> last acknowledged seq
    riders: dict[str, str] = {}
    with server_factory(**env) as srv, httpx.Client(
        base_url=srv.base_url, timeout=timeout(30)
    ) as http:

        def update(tid: str, k: int) -> httpx.Response:
            resp = http.post(f"/tracking/update/{tid}", json={"lat": 5.6 + k / 1e4, "lng": -0.18},
                             headers=bearer(srv.token("rider", riders[tid])))
            if resp.status_code == 200:
                acked[tid] = resp.json()["seq"]
            return resp

        for _ in range(4):
            rider = uid("RIDER")
            body = {"order_id": uid("ORD"), "rider_id": rider,
                    "dropoff_lat": DROPOFF[0], "dropoff_lng": DROPOFF[1]}
            view = http.post("/tracking/start", json=body,
                             headers=bearer(srv.token("rider", rider))).json()
            riders[view["tracking_id"]] = rider
            acked[view["tracking_id"]] = view["seq"]
        tids = list(riders)
        for k in range(5):
            for tid in tids:
                assert update(tid, k).status_code == 200

        filler = fill(small_disk)
        refused: httpx.Response | None = None
        for k in range(5, 2000):
            resp = update(tids[k % len(tids)], k)
            if resp.status_code != 200:
                refused = resp
                break
        assert refused is not None, "the disk never filled up"
        assert refused.status_code == 503, refused.text
        assert "retry" in refused.json()["detail"]
        health = eventually(lambda: http.get("/health"), lambda r: r.status_code == 503,
                            "health while the disk is full")
        assert "full" in health.json()["detail"], health.json()
        # Reads are refused or answered, never hung and never a 404 for a live delivery.
        for tid in tids:
            assert http.get(f"/tracking/{tid}").status_code in (200, 503)

        filler.unlink()

        def writes_again() -> bool:
            return all(update(tid, 9000).status_code == 200 for tid in tids)

        eventually(writes_again, bool, "updates after space came back", seconds=90)
        eventually(lambda: http.get("/health").status_code, lambda c: c == 200,
                   "health after space came back")
        before: dict[str, Any] = {tid: http.get(f"/tracking/{tid}").json() for tid in tids}

    # Nothing acknowledged is lost: the same files, a new server.
    env["TRACKING_RAY_NAMESPACE"] = namespace + "-2"
    with server_factory(**env) as again, httpx.Client(
        base_url=again.base_url, timeout=timeout(30)
    ) as http:
        for tid in tids:
            view = http.get(f"/tracking/{tid}").json()
            assert view == before[tid]
            assert view["seq"] == acked[tid]
            history = http.get(f"/tracking/{tid}/history").json()["items"]
            assert [i["seq"] for i in history] == list(range(1, acked[tid] + 1))
