"""A tiny storm of loadtests/storm.py against a real server: every watcher connects, nothing is
lost, every socket closes cleanly, and the report adds up."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from harness import ServerProcess
from loadtests.storm import main
from tests.support import timeout


def test_a_tiny_storm_connects_everyone_and_loses_nothing(
    server_factory: Callable[..., AbstractContextManager[ServerProcess]], tmp_path: Path,
) -> None:
    out = tmp_path / "storm.json"
    with server_factory() as srv:
        assert srv.proc is not None
        code = main([
            "--url", srv.base_url, "--secret", srv.secret, "--pid", str(srv.proc.pid),
            "--sessions", "10", "--watchers", "300", "--connect-rate", "200",
            "--update-rate", "20", "--lead", "1", "--hold", "3", "--window", "1",
            "--http-conns", "4", "--connect-timeout", f"{timeout(10):g}",
            "--timeout", f"{timeout(10):g}", "--drain", f"{timeout(5):g}",
            "--close-timeout", f"{timeout(5):g}", "--out", str(out),
        ])
    report = json.loads(out.read_text())
    assert "loadtests.storm" in report["command"]
    assert report["server"]["pid"] == srv.proc.pid
    assert report["server"]["commit"]
    r = report["result"]
    assert code == 0, r
    assert r["errors"] == {}
    storm = r["storm"]
    assert (storm["planned"], storm["made"], storm["failed"], storm["not_started"]) == (
        300, 300, 0, 0)
    assert storm["failures"] == {}
    assert storm["connect_ms"]["n"] == 300
    assert storm["achieved_per_s"] > 0
    # every accepted update owed a frame to each watcher that joined before it
    loss = r["loss"]
    assert loss["owed"] > 0
    assert loss["received"] == loss["owed"]
    assert loss["lost"] == 0
    assert (loss["duplicates"], loss["unmatched"], loss["stale"], loss["out_of_order"]) == (
        0, 0, 0, 0)
    updates = r["updates"]
    assert updates["accepted"] == updates["sent"] > 0
    assert updates["failed"] == 0
    # the stream ran before, during and after the storm
    assert r["fanout"]["storm"]["n"] > 0
    assert r["fanout"]["steady"]["n"] > 0
    assert r["fanout"]["overall"]["n"] == loss["received"]
    rows = r["windows"]
    assert rows[0]["phase"] == "lead"
    assert rows[-1]["phase"] == "hold"
    assert sum(w["made"] for w in rows) == 300
    assert rows[-1]["sockets"] == 300
    assert sum(w["fanout_ms"]["n"] for w in rows) == loss["received"]
    assert sum(w["updates"] for w in rows) == updates["accepted"]
    assert r["dropped"]["count"] == 0
    assert r["close"] == {"closed": 300, "cleanly": 300}
    cpu = r["cpu"]
    assert cpu["storm"]["api_cpu_s"] > 0
    assert cpu["api_ms_per_connection_storm"] > 0
    assert cpu["whole"]["seconds"] >= cpu["storm"]["seconds"] + cpu["hold"]["seconds"]
    assert report["target_unmet"]  # 300 watchers are not issue 12's 10,000
