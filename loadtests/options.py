"""Command-line options of the locustfile; each also reads LOCUST_<NAME> from the environment."""

from __future__ import annotations

from typing import Any, Protocol

from loadtests.shapes import SHAPES


class ArgumentGroup(Protocol):
    """The part of locust's (configargparse) argument group used here."""

    def add_argument(self, *flags: str, **kwargs: Any) -> Any: ...


# flag, type (None for a switch), default, help
OPTIONS: tuple[tuple[str, type | None, object, str], ...] = (
    ("--rider-interval-s", float, 1.0, "seconds between a rider's reports"),
    ("--updates-per-delivery", int, 20, "location reports per delivery, the last one DELIVERED"),
    ("--riders", int, None, "exact number of riders (fixed_count); default: by weight"),
    ("--watchers", int, None, "exact number of watchers (fixed_count); default: by weight"),
    ("--ops", int, None, "exact number of ops users (fixed_count); default: by weight"),
    ("--rider-weight", int, 10, "share of riders when counts come from -u or a shape"),
    ("--watcher-weight", int, 10, "share of watchers"),
    ("--ops-weight", int, 1, "share of ops users"),
    ("--ops-interval-s", float, 2.0, "seconds between an ops user's requests"),
    ("--watch-timeout-s", float, 15.0, "a push later than this after its send is a failure"),
    ("--center", str, "5.6037,-0.1870", "lat,lng the deliveries are placed around (Accra)"),
    ("--seed", int, 0, "seed of the route generators"),
    ("--load-shape", str, "none", "none: -u/-r/-t as usual; ladder: steps; spike: a launch"),
    ("--ladder-step-users", int, 20, "users added at each ladder step"),
    ("--ladder-steps", int, 5, "number of ladder steps"),
    ("--ladder-step-s", float, 60.0, "seconds per ladder step"),
    ("--ladder-spawn-rate", float, 10.0, "users started per second (ladder; spike's fleet)"),
    ("--spike-base-users", int, 50, "the steady fleet before and after the spike"),
    ("--spike-users", int, 200, "users arriving with the spike"),
    ("--spike-at-s", float, 60.0, "when the spike starts"),
    ("--spike-hold-s", float, 60.0, "how long the spike lasts"),
    ("--spike-after-s", float, 60.0, "how long the fleet runs after the spike"),
    ("--spike-spawn-rate", float, 100.0, "users started per second during the spike"),
    ("--run-summary", str, "", "write JSON with load-generator CPU and delivery counts at exit"),
    ("--allow-remote-host", None, False, "allow a non-loopback --host (your own deployment)"),
)


def env_var(flag: str) -> str:
    return "LOCUST_" + flag.lstrip("-").replace("-", "_").upper()


def add_options(group: ArgumentGroup) -> None:
    """Register every option on locust's parser group, with its LOCUST_* variable."""
    for flag, kind, default, text in OPTIONS:
        help_text = f"{text} (default {default})" if default not in (None, "", False) else text
        if kind is None:
            group.add_argument(flag, action="store_true", env_var=env_var(flag), help=help_text)
        elif flag == "--load-shape":
            group.add_argument(flag, choices=SHAPES, default=default, env_var=env_var(flag),
                               help=help_text)
        else:
            group.add_argument(flag, type=kind, default=default, env_var=env_var(flag),
                               help=help_text)
