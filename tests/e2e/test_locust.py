"""Short headless locust runs of loadtests/locustfile.py against the real server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from harness import ServerProcess
from loadtests.ladder import LOCUSTFILE, REPO_ROOT
from loadtests.push import PUSH
from loadtests.report import UPDATE, parse_exceptions, parse_failures, parse_stats
from tests.support import timeout


def run_locust(
    host: str, secret: str, prefix: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", host, "--csv", str(prefix), "--run-summary", f"{prefix}_summary.json",
        "--stop-timeout", "2", *args,
    ]
    env = {**os.environ, "TRACKING_JWT_SECRET": secret, "PYTHONPATH": str(REPO_ROOT)}
    # Locust stops itself (-t or the shape's end); the timeout only bounds a hang.
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout(120), check=False)


def assert_clean(proc: subprocess.CompletedProcess[str], prefix: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = parse_failures(Path(f"{prefix}_failures.csv").read_text())
    assert failures == [], failures
    assert parse_exceptions(Path(f"{prefix}_exceptions.csv").read_text()) == 0


def test_riders_watchers_and_ops_run_clean_and_record_push_latency(
    server: ServerProcess, tmp_path: Path
) -> None:
    prefix = tmp_path / "run"
    proc = run_locust(
        server.base_url, server.secret, prefix,
        "-u", "7", "-r", "7", "-t", f"{timeout(5):g}s",
        "--riders", "3", "--watchers", "3", "--ops", "1",
        "--rider-interval-s", "0.25", "--updates-per-delivery", "6",
    )
    assert_clean(proc, prefix)
    stats = parse_stats(Path(f"{prefix}_stats.csv").read_text())
    push = stats[("WS", PUSH)]
    assert push.count > 0
    assert push.p99_ms is not None
    assert stats[("POST", UPDATE)].count > 0
    assert stats[("POST", "POST /tracking/start")].count >= 3
    assert stats[("WS", "connect /ws/tracking/[id]")].count >= 3
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["peak_watching"] == 3


def test_the_ladder_shape_steps_users_up_and_ends_the_run(
    server: ServerProcess, tmp_path: Path
) -> None:
    prefix = tmp_path / "shape"
    proc = run_locust(
        server.base_url, server.secret, prefix,
        "--load-shape", "ladder", "--ladder-step-users", "2", "--ladder-steps", "2",
        "--ladder-step-s", f"{timeout(2):g}", "--ladder-spawn-rate", "10",
        "--rider-weight", "1", "--watcher-weight", "1", "RiderUser", "WatcherUser",
    )
    assert_clean(proc, prefix)
    with open(f"{prefix}_stats_history.csv") as f:
        user_counts = {int(row["User Count"]) for row in csv.DictReader(f)}
    # No -t: the run ended because the shape did, after its second step.
    assert max(user_counts) == 4


def test_a_non_loopback_host_is_refused_without_sending_anything(tmp_path: Path) -> None:
    proc = run_locust("http://192.0.2.1:8500", "s" * 32, tmp_path / "remote", "-t", "1s")
    assert proc.returncode != 0
    assert "not loopback" in proc.stderr


def test_a_missing_secret_is_refused(tmp_path: Path) -> None:
    proc = run_locust("http://127.0.0.1:9", "", tmp_path / "nosecret", "-t", "1s")
    assert proc.returncode != 0
    assert "TRACKING_JWT_SECRET" in proc.stderr
