"""Scenario expectations: named bounds on a run's figures, each failing with a clear message."""

from __future__ import annotations

from collections.abc import Mapping

# name -> (figure, "max" | "min", the figure "all" stands for)
EXPECTATIONS: dict[str, tuple[str, str, str | None]] = {
    "deliveries_completed": ("deliveries_completed", "min", "deliveries_planned"),
    "watchers_saw_delivered": ("watchers_saw_delivered", "min", "watchers_planned"),
    "messages_lost": ("messages_lost", "max", None),
    "out_of_order": ("out_of_order", "max", None),
    "duplicates": ("duplicates", "max", None),
    "status_errors": ("status_errors", "max", None),
    "eta_errors": ("eta_errors", "max", None),
    "protocol_errors": ("protocol_errors", "max", None),
    "phone_leaks": ("phone_leaks", "max", None),
    "connection_failures": ("connection_failures", "max", None),
    "errors": ("errors", "max", None),
    "invalid_rejected": ("invalid_rejected", "min", "invalid_sent"),
    "reconnects": ("reconnects", "min", None),
    "history_caught_up": ("history_caught_up", "min", "reconnects"),
    "resumed": ("resumed", "min", "reconnects"),
    "noise_filtered": ("fixes_filtered", "min", "noise_sent"),
    "noise_kept": ("noise_kept", "max", None),
    "approached_once": ("approached_once", "min", "milestone_streams"),
    "arrived_once": ("arrived_once", "min", "milestone_streams"),
    "flaps": ("flaps", "max", None),
    "order_calls": ("orders_ok", "min", "orders_expected"),
    "notifications": ("notifications_ok", "min", "notifications_expected"),
    "integration_problems": ("integration_problems", "max", None),
    "latency_p99_ms": ("latency_p99_ms", "max", None),
    "accepted_lost": ("accepted_lost", "max", None),
    "accepted_checked": ("accepted_checked", "min", "updates_acknowledged"),
    "faults_done": ("faults_done", "min", "faults_planned"),
}


def check_known(expect: Mapping[str, object]) -> None:
    from sim.scenario import ScenarioError

    for name, bound in expect.items():
        if name not in EXPECTATIONS:
            raise ScenarioError(f"[expect]: unknown {name!r}; known: {sorted(EXPECTATIONS)}")
        _, _, all_ref = EXPECTATIONS[name]
        ok = isinstance(bound, int | float) and not isinstance(bound, bool)
        if not ok and not (bound == "all" and all_ref is not None):
            allowed = "a number or 'all'" if all_ref else "a number"
            raise ScenarioError(f"[expect]: {name} = {bound!r}, want {allowed}")


def evaluate(expect: Mapping[str, object], figures: Mapping[str, float | None]) -> list[str]:
    """The expectations that failed, each as a sentence naming the figure and the bound."""
    failed: list[str] = []
    for name, bound in expect.items():
        figure, direction, all_ref = EXPECTATIONS[name]
        value = figures.get(figure)
        if bound == "all":
            assert all_ref is not None
            ref = figures.get(all_ref)
            if not ref:
                failed.append(f"{name} = 'all', but {all_ref} is {ref}: nothing was checked")
                continue
            limit = float(ref)
        else:
            assert isinstance(bound, int | float)
            limit = float(bound)
        if value is None:
            failed.append(f"{name}: {figure} was not measured (bound {bound})")
        elif direction == "max" and value > limit:
            failed.append(f"{name}: {figure} = {value:g}, at most {limit:g} expected")
        elif direction == "min" and value < limit:
            failed.append(f"{name}: {figure} = {value:g}, at least {limit:g} expected")
    return failed
