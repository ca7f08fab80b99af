"""Load shapes as plain data: how many users at which second of a run.

The locustfile wraps these in one `LoadTestShape` chosen by `--load-shape`; kept apart so
the arithmetic is tested without importing locust (which monkey-patches the process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SHAPES = ("none", "ladder", "spike")


@dataclass(frozen=True)
class Stage:
    """Until `end_s` seconds into the run, hold `users` users, spawning `spawn_rate` per second."""

    end_s: float
    users: int
    spawn_rate: float


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def step_ladder(
    step_users: int, steps: int, step_s: float, spawn_rate: float
) -> tuple[Stage, ...]:
    """`steps` steps of `step_s` seconds, adding `step_users` users at each.

    Users are split between the user classes by their weights, so a step of 20 with
    rider and watcher weights 10 and 10 adds 10 riders and 10 watchers.
    """
    _positive(step_users=step_users, steps=steps, step_s=step_s, spawn_rate=spawn_rate)
    return tuple(
        Stage(end_s=step_s * (i + 1), users=step_users * (i + 1), spawn_rate=spawn_rate)
        for i in range(steps)
    )


def launch_spike(
    base_users: int,
    spike_users: int,
    spike_at_s: float,
    spike_hold_s: float,
    after_s: float,
    base_spawn_rate: float,
    spike_spawn_rate: float,
) -> tuple[Stage, ...]:
    """A steady fleet, then `spike_users` more arriving at once (a city launch), then back.

    The spike spawns at `spike_spawn_rate`, meant to be high: the question is how the
    service takes a crowd connecting together, not a gentle ramp.
    """
    _positive(
        base_users=base_users,
        spike_users=spike_users,
        spike_at_s=spike_at_s,
        spike_hold_s=spike_hold_s,
        base_spawn_rate=base_spawn_rate,
        spike_spawn_rate=spike_spawn_rate,
    )
    if after_s < 0:
        raise ValueError(f"after_s must not be negative, got {after_s}")
    stages = [
        Stage(spike_at_s, base_users, base_spawn_rate),
        Stage(spike_at_s + spike_hold_s, base_users + spike_users, spike_spawn_rate),
    ]
    if after_s > 0:
        # Users leave as fast as they came: locust stops them at the spawn rate too.
        stages.append(Stage(spike_at_s + spike_hold_s + after_s, base_users, spike_spawn_rate))
    return tuple(stages)


def tick_at(stages: Sequence[Stage], run_time_s: float) -> tuple[int, float] | None:
    """What a LoadTestShape's tick() returns at `run_time_s`: (users, spawn rate), or None
    once the last stage is over (locust then stops the run)."""
    for stage in stages:
        if run_time_s < stage.end_s:
            return stage.users, stage.spawn_rate
    return None
