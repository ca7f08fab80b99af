"""The ladder's reading of locust CSVs and its verdict, on sample CSV text."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.ladder import OPS_USERS, locust_command, parse_steps
from loadtests.report import (
    StepResult,
    StepSpec,
    highest_held,
    parse_exceptions,
    parse_failures,
    parse_stats,
    render_table,
    summarize_step,
    to_json,
)

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
)


def stats_csv(update_rps: float, update_p99: int, push_count: int, push_p99: int) -> str:
    return HEADER + (
        "GET,GET /health,9,0,3,4.3,2.2,8.8,15.0,0.15,0.0,3,5,5,7,9,9,9,9,9,9,9\n"
        "POST,POST /tracking/start,123,0,4,5.1,1.7,24.2,248.5,2.15,0.0,"
        "4,6,7,8,10,11,16,17,24,24,24\n"
        f"POST,POST /tracking/update/[id],729,0,4,5.2,1.5,103.3,300.5,{update_rps},0.0,"
        f"4,5,6,7,8,10,17,{update_p99},100,100,100\n"
        "WS,connect /ws/tracking/[id],143,0,7,9.7,2.5,123.3,0.0,2.5,0.0,"
        "7,9,11,12,18,25,36,45,120,120,120\n"
        f"WS,push location_update,{push_count},0,4,5.5,2.1,41.4,0.0,9.29,0.0,"
        f"4,5,6,7,9,11,16,{push_p99},41,41,41\n"
        ",Aggregated,1554,0,4,5.7,1.5,123.3,163.4,27.2,0.0,4,6,7,7,10,12,19,28,100,120,120\n"
    )


FAILURES = (
    "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
    'POST,POST /tracking/start,"CatchResponseError(\'expected 201, got 500: boom\')",30,'
    "2026-11-25T22:48:05Z,2026-11-25T22:48:11Z\n"
    "WS,push gap,RuntimeError('watcher skipped location_update(s): seq gap'),2,,\n"
)

SPEC = StepSpec(riders=10, interval_s=1.0, watchers=10, updates_per_delivery=20)


def test_parse_stats_reads_rows_and_marks_missing_percentiles_as_none() -> None:
    text = stats_csv(12.7, 28, 531, 22) + "WS,push gap,0,0,0,0,0,0,0,0.0,0.0," + ",".join(
        ["N/A"] * 11
    ) + "\n"
    rows = parse_stats(text)
    push = rows[("WS", "push location_update")]
    assert (push.count, push.p50_ms, push.p99_ms, push.max_ms) == (531, 4.0, 22.0, 41.4)
    assert rows[("POST", "POST /tracking/update/[id]")].rps == 12.7
    assert rows[("", "Aggregated")].count == 1554
    assert rows[("WS", "push gap")].p99_ms is None


def test_parse_failures_and_exceptions() -> None:
    failures = parse_failures(FAILURES)
    assert [(f.name, f.occurrences) for f in failures] == [
        ("POST /tracking/start", 30), ("push gap", 2)
    ]
    assert "got 500" in failures[0].error
    assert parse_exceptions("Count,Message,Traceback,Nodes\n") == 0
    assert parse_exceptions('Count,Message,Traceback,Nodes\n3,boom,"tb",local\n') == 3


def test_a_clean_fast_step_holds() -> None:
    result = summarize_step(SPEC, parse_stats(stats_csv(9.5, 28, 531, 22)), [], 0,
                            {"loadgen_cpu_max_percent": 41.5, "peak_watching": 10})
    assert result.held(100)
    assert (result.push_p99_ms, result.http_p99_ms, result.pushes) == (22.0, 28.0, 531)
    assert result.loadgen_cpu_max_percent == 41.5
    assert result.peak_watching == 10


@pytest.mark.parametrize(
    ("update_rps", "push_count", "push_p99", "failures", "exceptions", "reason"),
    [
        (9.5, 531, 100, "", 0, "push p99 100 ms"),  # the threshold is strict
        (9.5, 0, 0, "", 0, "no push measured"),
        (9.5, 531, 22, FAILURES, 0, "32 failures"),
        (9.5, 531, 22, "", 4, "4 failures"),
        (5.0, 531, 22, "", 0, "riders fell behind"),
    ],
)
def test_a_step_does_not_hold(
    update_rps: float, push_count: int, push_p99: int, failures: str, exceptions: int, reason: str
) -> None:
    stats = parse_stats(stats_csv(update_rps, 28, push_count, push_p99))
    if push_count == 0:
        del stats[("WS", "push location_update")]
    fails = parse_failures(FAILURES) if failures else []
    result = summarize_step(SPEC, stats, fails, exceptions)
    assert not result.held(100)
    assert reason in result.why_not(100)


def test_target_rate_counts_the_start_of_each_delivery() -> None:
    assert SPEC.target_updates_per_s() == pytest.approx(10 * 20 / 21)
    assert StepSpec(50, 0.5, 0, 4).target_updates_per_s() == pytest.approx(100 * 4 / 5)


def step(riders: int, push_p99: int) -> StepResult:
    spec = StepSpec(riders=riders, interval_s=1.0, watchers=riders, updates_per_delivery=20)
    return summarize_step(spec, parse_stats(stats_csv(riders, 30, 100, push_p99)), [])


def test_highest_held_is_the_top_of_the_unbroken_run_from_the_bottom() -> None:
    results = [step(10, 20), step(20, 40), step(40, 150), step(80, 30)]
    best = highest_held(results, 100)
    assert best is not None
    assert best.spec.riders == 20
    assert highest_held(results[2:], 100) is None


def test_table_and_json_name_the_highest_step() -> None:
    results = [replace(step(10, 20), host_load_1m=1.5), step(20, 150)]
    table = render_table(results, 100)
    assert "| 1.5 | yes |" in table
    assert "| 1 | 10 | 1 | 10 |" in table
    assert "no (push p99 150 ms)" in table
    assert table.endswith("10 riders @ 1s, 10 watchers (10.0 updates/s)")
    payload = json.loads(json.dumps(to_json(results, 100)))
    assert [s["held"] for s in payload["steps"]] == [True, False]
    assert payload["highest_held"]["spec"]["riders"] == 10
    assert "none" in render_table([step(10, 150)], 100)


def test_parse_steps_by_ratio_or_by_list() -> None:
    steps = parse_steps("10,20", "", 1.5, 0.5, 12)
    assert [(s.riders, s.watchers, s.interval_s) for s in steps] == [(10, 15, 0.5), (20, 30, 0.5)]
    assert [s.watchers for s in parse_steps("10,20", "0,5", 1.0, 1.0, 20)] == [0, 5]
    with pytest.raises(ValueError, match="one count per"):
        parse_steps("10,20", "5", 1.0, 1.0, 20)
    with pytest.raises(ValueError, match="at least one rider"):
        parse_steps("0", "", 1.0, 1.0, 20)


def test_locust_command_fixes_every_user_count_and_writes_all_reports(tmp_path: Path) -> None:
    spec = StepSpec(riders=40, interval_s=0.5, watchers=80, updates_per_delivery=12)
    cmd = locust_command(spec, "http://127.0.0.1:8500", tmp_path / "step01", 30, 5)

    def arg(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert int(arg("-u")) == 40 + 80 + OPS_USERS
    assert (arg("--riders"), arg("--watchers"), arg("--ops")) == ("40", "80", str(OPS_USERS))
    assert arg("-t") == "35s"
    assert float(arg("-r")) == pytest.approx(121 / 5)
    assert arg("--csv") == str(tmp_path / "step01")
    assert arg("--html").endswith(".html")
    assert {"--headless", "--reset-stats"} <= set(cmd)
