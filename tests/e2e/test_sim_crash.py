"""The simulator's crash faults against a server it starts (its own Ray instance): a shard
actor SIGKILLed, then the whole server SIGKILLed and started again; nothing accepted is lost
and every owed call arrives (issue 14, `tracking sim run qa-crash`)."""

from __future__ import annotations

import dataclasses
import io

from sim.cli import SCENARIOS
from sim.runner import Target, run
from sim.scenario import load_scenario
from tests.support import timeout


def test_qa_crash_loses_nothing_accepted_and_delivers_every_owed_call() -> None:
    cfg = load_scenario(SCENARIOS / "qa-crash.toml")
    cfg = dataclasses.replace(cfg, riders=4, timeout_s=timeout(300),
                              integration_wait_s=timeout(120))
    log = io.StringIO()
    report = run(cfg, Target(log=log))
    assert report["failed_expectations"] == [], (report["violations"], log.getvalue())
    faults = report["server_faults"]["done"]
    assert [f["kind"] for f in faults] == ["kill_shard", "restart_server"], faults
    assert all(f["ok"] for f in faults), faults
    assert report["accepted"]["lost"] == 0
    assert report["accepted"]["checked"] == report["updates"]["acknowledged"] > 100
    # The crash really happened under the deliveries: sockets dropped and came back.
    assert report["server_faults"]["watcher_disconnects"] >= 4
    assert report["integrations"]["complete"]
