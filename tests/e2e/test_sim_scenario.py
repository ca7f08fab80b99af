"""The simulator end to end: a small fleet with faults against the real server and stubs."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from harness import ServerProcess
from sim.cli import SCENARIOS, main
from sim.runner import Target, run
from sim.scenario import load_scenario
from sim.stubs import IntegrationStubs
from tests.support import timeout

Factory = Callable[..., AbstractContextManager[ServerProcess]]


def test_qa_faults_scenario_meets_its_expectations(server_factory: Factory) -> None:
    cfg = load_scenario(SCENARIOS / "qa-faults.toml")
    # Fewer deliveries than the shipped scenario, same faults: keeps the suite quick.
    cfg = dataclasses.replace(
        cfg, riders=3, speedup=400, timeout_s=timeout(120), integration_wait_s=timeout(90)
    )
    log = io.StringIO()
    with IntegrationStubs() as stubs, server_factory(**stubs.env()) as srv:
        report = run(cfg, Target(url=srv.base_url, secret=srv.secret, stubs=stubs, log=log,
                                 service_secret=srv.service_secret))
    assert report["failed_expectations"] == [], report["violations"]
    assert report["deliveries"]["completed"] == 3
    assert report["messages"]["received"] > 100
    assert report["watchers"]["reconnects"] == 2
    assert report["invalid_transitions"] == {"sent": 4, "rejected": 4}
    assert report["integrations"]["failed_answers"] >= 5  # the stubs really failed calls
    assert report["latency_ms"]["count"] == report["messages"]["received"]


def test_cli_exits_non_zero_and_names_the_failed_expectation(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main([
        "--riders", "2", "--watchers", "2", "--speedup", "600", "--seed", "5",
        "--url", server.base_url, "--secret", server.secret, "--out", str(out),
        "--expect", "latency_p99_ms=0",  # no real server meets this
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED latency_p99_ms: latency_p99_ms = " in captured.err
    assert captured.err.count("FAILED") == 1  # everything else held
    assert "0 lost" in captured.out
    assert out.with_suffix(".json").exists()
    assert out.with_suffix(".html").exists()


def test_qa_quality_scenario_meets_its_expectations(server_factory: Factory) -> None:
    # The shipped scenario as it is: noisy phones (jumps, duplicates, late and offline-buffered
    # fixes), watchers resuming with since_seq, milestones; only the bounds scale with the box.
    cfg = load_scenario(SCENARIOS / "qa-quality.toml")
    cfg = dataclasses.replace(
        cfg, timeout_s=timeout(cfg.timeout_s), integration_wait_s=timeout(cfg.integration_wait_s)
    )
    log = io.StringIO()
    with IntegrationStubs() as stubs, server_factory(**stubs.env()) as srv:
        report = run(cfg, Target(url=srv.base_url, secret=srv.secret, stubs=stubs, log=log))
    assert report["failed_expectations"] == [], report["violations"]
    q = report["quality"]
    assert q["phone"]["jump"] > 0
    assert q["phone"]["duplicate"] > 0
    assert q["phone"]["late"] > 0
    assert q["phone"]["batch"] == 4
    assert q["filtered_by_reason"] == {"duplicate": q["phone"]["duplicate"],
                                       "too_fast": q["phone"]["jump"]}  # fmt: skip
    assert q["messages_replayed"] > 0
    assert q["milestones"]["streams"] == cfg.riders * cfg.watchers_per_delivery
    stats = report["target"]["server_stats"]
    assert stats["fixes"]["late"] >= q["phone"]["late"]
    assert stats["fixes"]["milestones"] == {"approaching": cfg.riders, "arrived": cfg.riders}
