"""Metrics merging, percentiles and the rendered reports (JSON, table, self-contained HTML)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sim.report import build_report, figures, render_table, write_reports
from sim.scenario import RunConfig
from sim.stats import Metrics, percentile, summary_ms


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert math.isnan(percentile([], 50))
    assert summary_ms([0.001, 0.002, 0.004]) == {
        "count": 3, "p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0,
    }  # fmt: skip


def metrics(offset: float) -> Metrics:
    m = Metrics()
    m.counts["messages_received"] += 10
    m.errors["closed_1011"] += 1
    for k in range(10):
        m.latency(offset + k * 0.5, 0.01 * (k + 1))
    m.sent_per_s[1] += 3
    m.open_per_s[1] = 5
    m.open_per_s[2] = 7
    return m


def test_metrics_from_processes_merge_and_sum_sockets_per_second() -> None:
    a, b = metrics(0), metrics(1)
    a.merge(b)
    assert a.counts["messages_received"] == 20
    assert a.errors["closed_1011"] == 2
    assert len(a.latency_s) == 20
    assert a.peak_open_sockets() == 14
    tl = a.timeline()
    assert tl["open_sockets"][:3] == [0, 10, 14]
    assert tl["updates_per_s"][1] == 6
    assert tl["latency_p99_ms"][0] is not None


def test_reports_render_and_figures_feed_the_expectations(tmp_path: Path) -> None:
    m = metrics(0)
    m.counts["deliveries_completed"] = 2
    m.violation("TRK-x: gap: seq 3 then 5")
    cfg = RunConfig(name="t", riders=2)
    r = build_report(cfg, m, duration_s=3.2, integrations=None, target={"url": "http://x"})
    f = figures(r)
    assert f["deliveries_completed"] == 2
    assert f["latency_p99_ms"] == 100.0
    assert f["orders_ok"] is None
    table = render_table(r)
    assert "TRK-x: gap" in table
    assert "closed_1011 1" in table
    json_path, html_path = write_reports(r, tmp_path / "sub" / "run")
    assert json.loads(json_path.read_text())["scenario"] == "t"
    page = html_path.read_text()
    assert page.count("<svg") == 3
    assert "<polyline" in page
    assert "http://" not in page.replace("http://x", "").replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
