"""Scenario files, expectations and the CLI's configuration: pure, no server."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sim.cli import SCENARIOS, build_parser, config_from_args
from sim.expect import evaluate
from sim.scenario import ScenarioError, load_scenario, parse_scenario

FULL = """
name = "qa"
description = "everything"
seed = 11
[fleet]
riders = 6
watchers_per_delivery = 2
roles = ["customer", "ops"]
http_ratio = 0.25
speedup = 120
interval_s = 5
vehicle_mix = { bike = 1.0 }
[city]
center_lat = -1.2921
center_lng = 36.8219
radius_km = 3
[server]
workers = 2
env = { TRACKING_AVG_SPEED_KMH = 25 }
[[faults]]
kind = "watcher_reconnect"
deliveries = 2
after_messages = 3
[[faults]]
kind = "receiver_down"
service = "notifications"
at_s = 1
seconds = 5
[[faults]]
kind = "invalid_transition"
[expect]
messages_lost = 0
order_calls = "all"
latency_p99_ms = 800
"""


def test_a_full_scenario_parses() -> None:
    cfg = parse_scenario(tomllib.loads(FULL))
    assert (cfg.name, cfg.seed, cfg.riders, cfg.watchers_per_delivery) == ("qa", 11, 6, 2)
    assert cfg.roles == ("customer", "ops")
    assert cfg.plan.interval_s == 5
    assert dict(cfg.plan.vehicle_mix) == {"bike": 1.0}
    assert cfg.plan.city.center_lat == -1.2921
    assert cfg.server_workers == 2
    assert cfg.server_env == {"TRACKING_AVG_SPEED_KMH": "25"}
    assert cfg.deliveries_with("watcher_reconnect") == {0, 1}
    assert cfg.deliveries_with("invalid_transition") == {0}
    fault = cfg.fault("receiver_down")
    assert fault is not None
    assert (fault.service, fault.at_s, fault.seconds) == ("notifications", 1, 5)
    assert cfg.expect == {"messages_lost": 0, "order_calls": "all", "latency_p99_ms": 800}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fleet]\nridrs = 3", "unknown keys ['ridrs']"),
        ("[expect]\nmessages_lots = 0", "unknown 'messages_lots'"),
        ("[expect]\nmessages_lost = 'all'", "want a number"),
        ("[[faults]]\nkind = 'meteor'", "fault kind 'meteor'"),
        ("[[faults]]\nkind = 'receiver_down'", "needs seconds"),
        ("[fleet]\nroles = ['courier']", "roles ['courier']"),
        ("[fleet]\nhttp_ratio = 2", "http_ratio"),
        ("[city]\nradius_km = -1", "radius_km"),
        ("[fleet]\nvehicle_mix = { tram = 1 }", "unknown vehicles"),
    ],
)
def test_mistakes_are_refused_with_a_message_that_says_where(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(tomllib.loads(text))


def test_every_shipped_scenario_is_valid_and_has_expectations() -> None:
    paths = sorted(SCENARIOS.glob("*.toml"))
    assert paths
    for path in paths:
        cfg = load_scenario(path)
        assert cfg.description, path
        assert cfg.expect, path


def test_a_broken_toml_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("riders = [")
    with pytest.raises(ScenarioError, match=r"bad\.toml"):
        load_scenario(bad)


def test_expectations_pass_and_fail_with_sentences() -> None:
    figures = {
        "deliveries_planned": 10, "deliveries_completed": 9, "messages_lost": 0,
        "latency_p99_ms": 120.0, "invalid_sent": 0, "invalid_rejected": 0,
    }  # fmt: skip
    assert evaluate({"messages_lost": 0, "latency_p99_ms": 200}, figures) == []
    assert evaluate({"deliveries_completed": "all"}, figures) == [
        "deliveries_completed: deliveries_completed = 9, at least 10 expected"
    ]
    assert evaluate({"latency_p99_ms": 100}, figures) == [
        "latency_p99_ms: latency_p99_ms = 120, at most 100 expected"
    ]
    # 'all' of nothing would pass without checking anything: it fails instead.
    [vacuous] = evaluate({"invalid_rejected": "all"}, figures)
    assert "nothing was checked" in vacuous
    [unmeasured] = evaluate({"notifications": "all"}, {**figures, "notifications_expected": 5})
    assert "not measured" in unmeasured


def test_fleet_flags_build_a_config_with_the_default_expectations() -> None:
    a = build_parser().parse_args(
        ["fleet", "--riders", "100", "--watchers", "10", "--seed", "3", "--speedup", "60",
         "--http-ratio", "0.2", "--procs", "2", "--expect", "latency_p99_ms=500"]
    )  # fmt: skip
    cfg = config_from_args(a)
    assert (cfg.riders, cfg.watchers_per_delivery, cfg.seed, cfg.speedup) == (100, 10, 3, 60)
    assert (cfg.http_ratio, cfg.procs) == (0.2, 2)
    assert cfg.expect["messages_lost"] == 0
    assert cfg.expect["latency_p99_ms"] == 500


def test_run_resolves_a_shipped_scenario_by_name_and_applies_overrides() -> None:
    cfg = config_from_args(build_parser().parse_args(["run", "smoke", "--seed", "99"]))
    assert cfg.name == "smoke"
    assert cfg.seed == 99


def test_the_crash_faults_parse_and_qa_crash_ships_with_both() -> None:
    cfg = load_scenario(SCENARIOS / "qa-crash.toml")
    kinds = [f.kind for f in cfg.server_faults]
    assert kinds == ["kill_shard", "restart_server"]
    assert cfg.expect["accepted_lost"] == 0
    assert cfg.expect["order_calls"] == "all"
    assert cfg.expect["notifications"] == "all"
    assert cfg.expect["faults_done"] == "all"


def test_crash_faults_are_refused_against_a_server_the_run_did_not_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sim.cli import main

    assert main(["run", "qa-crash", "--url", "http://127.0.0.1:9"]) == 2
    assert "need a server this run starts" in capsys.readouterr().err


def test_nothing_accepted_lost_fails_when_an_acknowledged_update_is_missing() -> None:
    figures = {"accepted_lost": 1, "accepted_checked": 10, "updates_acknowledged": 10}
    assert evaluate({"accepted_lost": 0}, figures) == [
        "accepted_lost: accepted_lost = 1, at most 0 expected"]
    assert evaluate({"accepted_checked": "all"}, {**figures, "accepted_checked": 9}) != []
