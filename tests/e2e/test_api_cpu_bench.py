"""A tiny run of loadtests/api_cpu.py against a real server: the report it writes adds up."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from harness import ServerProcess
from loadtests.api_cpu import main
from tests.support import timeout


def test_a_tiny_configuration_loses_nothing_and_measures_cpu(
    server_factory: Callable[..., AbstractContextManager[ServerProcess]], tmp_path: Path,
) -> None:
    out = tmp_path / "api-cpu.json"
    with server_factory() as srv:
        assert srv.proc is not None
        code = main([
            "--url", srv.base_url, "--secret", srv.secret, "--pid", str(srv.proc.pid),
            "--sessions", "5", "--watchers-per-session", "4", "--rate", "20",
            "--seconds", "2", "--warmup", "1", "--idle", "0.5", "--http-conns", "4",
            "--timeout", f"{timeout(10):g}", "--drain", f"{timeout(5):g}",
            "--out", str(out),
        ])
    report = json.loads(out.read_text())
    assert code == 0, report["failures"]
    assert "loadtests.api_cpu" in report["command"]
    (result,) = report["results"]
    assert result["errors"] == {}
    assert (result["sessions"], result["watchers"]) == (5, 20)
    assert result["updates_planned_in_window"] == 40  # 2 s at 20/s
    accepted = result["measured_updates_accepted"]
    assert accepted > 0
    assert accepted + result["measured_updates_unsent"] == 40
    assert result["updates_failed"] == 0
    assert result["updates_accepted"] >= accepted
    assert result["expected_frames"] == result["updates_accepted"] * 4
    assert result["received_frames"] == result["expected_frames"]
    assert result["frames_unmatched"] == 0
    assert result["loss"] == 0
    assert result["out_of_order"] == 0
    assert result["watchers_closed"] == 0
    assert result["updates_accepted_in_window"] > 0
    assert result["frames_received_in_window"] > 0
    assert result["api_cpu_s"] > 0
    assert result["api_cpu_ms_per_update"] > 0
    assert result["api_cpu_us_per_frame"] > 0
    assert result["tree_cpu_s"] >= result["api_cpu_s"]
    assert result["gen_cpu_s"] > 0
    assert result["fanout_from_schedule_ms"]["n"] == accepted * 4
    assert result["fanout_from_schedule_ms"]["p50"] > 0
    assert result["server"]["pid"] == srv.proc.pid
    assert result["server"]["commit"]
