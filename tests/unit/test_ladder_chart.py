"""The ladder's capacity picture, drawn from summary.json data and read back as XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtests import chart
from loadtests.chart import render_svg
from loadtests.report import StepResult, StepSpec, steps_from_json, to_json

PARAMS = {"step_s": 30.0, "spawn_s": 5.0, "workers": 1, "host": "",
          "started_at": "2026-12-02 06:30"}
COMMAND = "python -m loadtests.ladder --riders 10,20,40,80 --step-s 30 --out 'out/a&b<c'"


def step(riders: int, push_p99: float | None, pace: float = 1.0) -> StepResult:
    spec = StepSpec(riders=riders, interval_s=1.0, watchers=riders, updates_per_delivery=20)
    target = spec.target_updates_per_s()
    return StepResult(
        spec=spec, updates_per_s=target * pace, target_updates_per_s=target,
        pushes_per_s=0.0 if push_p99 is None else target, pushes=0 if push_p99 is None else 300,
        http_p50_ms=5.0, http_p99_ms=20.0, push_p50_ms=None if push_p99 is None else 6.0,
        push_p99_ms=push_p99, failures=0, host_load_1m=1.1,
    )


def summary(results: list[StepResult], max_p99_ms: float = 100) -> dict[str, Any]:
    # Through JSON text, as the ladder writes it and as `python -m loadtests.chart` reads it.
    payload = {"command": COMMAND, "cpus": 2, "params": PARAMS, **to_json(results, max_p99_ms)}
    loaded: dict[str, Any] = json.loads(json.dumps(payload))
    return loaded


def draw(results: list[StepResult], max_p99_ms: float = 100) -> ET.Element:
    return ET.fromstring(render_svg(summary(results, max_p99_ms)))


def by_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if name in (e.get("class") or "").split()]


def texts(root: ET.Element) -> str:
    return "\n".join("".join(e.itertext()) for e in root.iter("{http://www.w3.org/2000/svg}text"))


def test_one_point_per_step_in_each_series() -> None:
    root = draw([step(10, 20), step(20, 40), step(40, 150), step(80, None)])
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for name in ("updates", "target", "p99"):
        assert [e.get("data-step") for e in by_class(root, name)] == ["1", "2", "3", "4"]
    assert [e.get("data-step") for e in by_class(root, "no-push")] == ["4"]
    assert "no push" in texts(root)


def test_the_knee_marks_the_top_of_the_unbroken_run_and_the_first_miss() -> None:
    # Step 4 holds again after step 3 missed: it does not move the knee.
    root = draw([step(10, 20), step(20, 40), step(40, 150), step(80, 30)])
    assert [e.get("data-step") for e in by_class(root, "knee-held")] == ["2"]
    assert [e.get("data-step") for e in by_class(root, "knee-missed")] == ["3"]
    [verdict] = by_class(root, "verdict")
    assert verdict.text == ("Held at push p99 < 100 ms up to 20 riders (19.0 updates/s); "
                            "40 riders missed (push p99 150 ms).")
    # The markers stand at the x of their step's points.
    x = {e.get("data-step"): e.get("cx") for e in by_class(root, "p99")}
    assert by_class(root, "knee-held")[0].get("x1") == x["2"]
    assert by_class(root, "knee-missed")[0].get("x1") == x["3"]


def test_a_step_that_falls_behind_is_the_first_miss_even_with_a_fast_push() -> None:
    root = draw([step(10, 20), step(20, 30, pace=0.5)])
    assert [e.get("data-step") for e in by_class(root, "knee-missed")] == ["2"]
    assert "riders fell behind" in (by_class(root, "verdict")[0].text or "")
    updates = {e.get("data-step"): float(e.get("cy", "")) for e in by_class(root, "updates")}
    target = {e.get("data-step"): float(e.get("cy", "")) for e in by_class(root, "target")}
    assert updates["1"] == target["1"]
    assert updates["2"] > target["2"]  # lower on the page: fewer updates than meant


def test_a_run_where_nothing_held_says_so() -> None:
    root = draw([step(10, 150), step(20, 30)])
    assert by_class(root, "knee-held") == []
    assert [e.get("data-step") for e in by_class(root, "knee-missed")] == ["1"]
    verdict = by_class(root, "verdict")[0].text or ""
    assert verdict.startswith("No step held at push p99 < 100 ms")
    assert "nothing held; first miss: 10 riders" in texts(root)


def test_a_run_where_every_step_held_says_the_knee_is_higher() -> None:
    root = draw([step(10, 20), step(20, 40)])
    assert [e.get("data-step") for e in by_class(root, "knee-held")] == ["2"]
    assert by_class(root, "knee-missed") == []
    assert "Every step held" in (by_class(root, "verdict")[0].text or "")


def test_the_limit_line_is_on_the_latency_scale() -> None:
    # The threshold is strict: a p99 equal to it misses, and its point sits on the line.
    root = draw([step(10, 5), step(20, 100), step(40, 2000)])
    [limit] = by_class(root, "limit")
    y = {e.get("data-step"): float(e.get("cy", "")) for e in by_class(root, "p99")}
    assert y["2"] == float(limit.get("y1", ""))
    assert y["1"] > y["2"] > y["3"]
    assert "limit 100 ms" in texts(root)


def test_title_axes_legend_and_command_make_it_readable_alone() -> None:
    root = draw([step(10, 20), step(20, 150)], max_p99_ms=80)
    words = texts(root)
    for expected in (
        "Capacity ladder", "each rider reports every 1 s", "1 watcher(s) per rider",
        "30 s measured per step after a 5 s ramp", "push p99 limit 80 ms", "1 API process",
        "2 CPUs", "2026-12-02 06:30", "updates/s", "push p99, ms", "riders", "watchers",
        "updates/s achieved", "updates/s target", "push p99 latency", "p99 limit",
        "highest held step", "first step missed", "'out/a&b<c'",
    ):
        assert expected in words, expected


def test_an_empty_ladder_still_draws() -> None:
    root = draw([])
    assert by_class(root, "updates") == []
    assert by_class(root, "verdict")[0].text == "No step ran: nothing to judge."


def test_steps_read_back_from_summary_json_equal_the_results() -> None:
    results = [replace(step(10, 20), failure_kinds={"x": 1}, failures=1), step(20, None)]
    assert steps_from_json(summary(results)) == results
    # A summary written before host_load_1m existed still reads.
    old = summary(results)
    for s in old["steps"]:
        del s["host_load_1m"]
    assert [r.host_load_1m for r in steps_from_json(old)] == [None, None]


def test_the_chart_command_redraws_a_summary(tmp_path: Path) -> None:
    source = tmp_path / "summary.json"
    source.write_text(json.dumps(summary([step(10, 20), step(20, 150)])))
    assert chart.main([str(source)]) == 0
    root = ET.fromstring((tmp_path / "capacity.svg").read_text())
    assert [e.get("data-step") for e in by_class(root, "knee-missed")] == ["2"]
    assert chart.main([]) == 2


def test_a_summary_without_run_parameters_still_draws() -> None:
    old = summary([step(10, 20)])
    del old["params"], old["cpus"]
    words = texts(ET.fromstring(render_svg(old)))
    assert "each rider reports every 1 s; 1 watcher(s) per rider; push p99 limit 100 ms" in words
    assert "CPUs" not in words
