"""Locust users for capacity planning: riders reporting, watchers on WebSockets, ops.

    TRACKING_JWT_SECRET=... locust -f loadtests/locustfile.py --host http://127.0.0.1:8500

Riders (HTTP) start a delivery, report every `--rider-interval-s` through ASSIGNED ->
PICKED_UP -> IN_TRANSIT -> DELIVERED, then start the next. Watchers open
`/ws/tracking/{id}` on a live delivery of a rider of this same process and record the push
latency of every `location_update` as a locust entry (type WS, "push location_update"):
from the moment the rider starts the HTTP request to the moment the watcher has the
frame, matched by the view's `seq` (loadtests/pool.py explains why this is exact). Ops
users read statistics, health and single deliveries.

Measurement caveat: latencies include this process's own scheduling delay, so keep
locust below ~90% CPU (it warns; `--run-summary` records the peak).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import sys
import time
from itertools import count
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

from harness import mint
from loadtests import shapes
from loadtests.options import add_options
from loadtests.plan import DeliveryPlan, plan_delivery
from loadtests.pool import SHARED, LiveDelivery
from loadtests.push import ACKS, view_seq
from loadtests.watcher import WatcherUser

log = logging.getLogger("loadtests")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
UPDATE_NAME = "POST /tracking/update/[id]"

# Ids must not collide with an earlier run against the same server (409 on a live order);
# the routes themselves come from seeded generators.
RUN_TAG = secrets.token_hex(4)
_user_numbers = count()
_usage = {"cpu_max": 0.0}


def _options(environment: Environment):
    return environment.parsed_options


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    add_options(parser.add_argument_group("tracking load test"))


@events.init.add_listener
def _configure(environment: Environment, **_kwargs) -> None:
    opts = _options(environment)
    if opts is None:
        return
    RiderUser.weight = opts.rider_weight
    WatcherUser.weight = opts.watcher_weight
    OpsUser.weight = opts.ops_weight
    for cls, fixed in ((RiderUser, opts.riders), (WatcherUser, opts.watchers), (OpsUser, opts.ops)):
        if fixed is not None:
            cls.fixed_count = fixed
    SHARED.seed(opts.seed)
    if not os.environ.get("TRACKING_JWT_SECRET"):
        sys.exit("loadtests: set TRACKING_JWT_SECRET to the server's signing secret")
    if environment.host and not _target_allowed(environment):
        sys.exit(f"loadtests: refusing to load {environment.host}: not loopback "
                 "(pass --allow-remote-host for your own deployment)")


def _target_allowed(environment: Environment) -> bool:
    opts = _options(environment)
    host = urlsplit(environment.host or "").hostname or ""
    return host in LOOPBACK or bool(opts is not None and opts.allow_remote_host)


@events.test_start.add_listener
def _check_target(environment: Environment, **_kwargs) -> None:
    # The web UI can change the host after start-up.
    if not _target_allowed(environment) and environment.runner is not None:
        log.error("refusing to load %r: not loopback (pass --allow-remote-host)", environment.host)
        environment.process_exit_code = 2
        gevent.spawn(environment.runner.quit)


@events.usage_monitor.add_listener
def _track_cpu(environment: Environment, cpu_usage: float, **_kwargs) -> None:
    _usage["cpu_max"] = max(_usage["cpu_max"], cpu_usage)


@events.quitting.add_listener
def _write_summary(environment: Environment, **_kwargs) -> None:
    opts = _options(environment)
    if opts is None or not opts.run_summary:
        return
    runner = environment.runner
    summary = {
        "loadgen_cpu_max_percent": _usage["cpu_max"],
        "loadgen_cpu_warning": bool(runner is not None and runner.cpu_warning_emitted),
        "deliveries_started": SHARED.started,
        "deliveries_finished": SHARED.finished,
        "watch_sessions": SHARED.watch_sessions,
        "peak_watching": SHARED.peak_watching,
    }
    with open(opts.run_summary, "w") as f:
        json.dump(summary, f, indent=2)


def bearer(role: str, sub: str) -> dict[str, str]:
    token = mint(os.environ["TRACKING_JWT_SECRET"], role, sub, ttl_s=24 * 3600)
    return {"Authorization": "Bearer " + token}


class SelectedShape(LoadTestShape):
    """The shape picked by --load-shape; `none` keeps locust's own -u/-r/-t."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._stages: tuple[shapes.Stage, ...] | None = None

    def _build(self, opts) -> tuple[shapes.Stage, ...]:
        if opts.load_shape == "ladder":
            return shapes.step_ladder(
                opts.ladder_step_users, opts.ladder_steps, opts.ladder_step_s,
                opts.ladder_spawn_rate,
            )
        return shapes.launch_spike(
            opts.spike_base_users, opts.spike_users, opts.spike_at_s, opts.spike_hold_s,
            opts.spike_after_s, opts.ladder_spawn_rate, opts.spike_spawn_rate,
        )

    def tick(self):
        opts = _options(self.runner.environment)
        # Locust waits for a shape to finish before it arms -t, so the shape honours -t itself.
        if opts is not None and opts.run_time and self.get_run_time() >= opts.run_time:
            return None
        if opts is None or opts.load_shape == "none":
            users = opts.num_users if opts is not None and opts.num_users is not None else 1
            rate = opts.spawn_rate if opts is not None and opts.spawn_rate is not None else 1
            return users, rate
        if self._stages is None:
            self._stages = self._build(opts)
        return shapes.tick_at(self._stages, self.get_run_time())


class RiderUser(FastHttpUser):
    """A courier: one delivery after another, a report every --rider-interval-s."""

    weight = 10
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        opts = _options(self.environment)
        self._n = next(_user_numbers)
        self._rng = random.Random(f"{opts.seed}:rider:{self._n}")
        self._interval_s = opts.rider_interval_s
        self._updates = opts.updates_per_delivery
        self._center = tuple(float(x) for x in opts.center.split(","))
        self._rider_id = f"RIDER-LT-{RUN_TAG}-{self._n}"
        self._auth = bearer("rider", self._rider_id)
        self._deliveries = 0
        self._delivery: LiveDelivery | None = None
        self._plan: DeliveryPlan | None = None
        self._step = 0
        self._seq = 0
        self._task_started = time.perf_counter()
        # Spread riders over the interval so they do not report in lockstep.
        gevent.sleep(self._rng.uniform(0, self._interval_s))

    def on_stop(self) -> None:
        self._abandon()

    def wait_time(self) -> float:
        return max(0.0, self._interval_s - (time.perf_counter() - self._task_started))

    @task
    def report(self) -> None:
        self._task_started = time.perf_counter()
        if self._delivery is None:
            self._start_delivery()
        else:
            self._send_update()

    def _abandon(self) -> None:
        if self._delivery is not None:
            SHARED.finish(self._delivery)
        self._delivery = None

    def _start_delivery(self) -> None:
        plan = plan_delivery(self._rng, self._center[0], self._center[1], self._updates)
        self._deliveries += 1
        body = {
            "order_id": f"ORD-LT-{RUN_TAG}-{self._n}-{self._deliveries}",
            "rider_id": self._rider_id,
            "dropoff_lat": plan.dropoff_lat,
            "dropoff_lng": plan.dropoff_lng,
        }
        with self.client.post("/tracking/start", json=body, headers=self._auth,
                              name="POST /tracking/start", catch_response=True) as resp:
            if resp.status_code != 201:
                resp.failure(f"expected 201, got {resp.status_code}: {(resp.text or '')[:200]}")
                return
            view = resp.json()
            seq = view_seq(view)
            tracking_id = view.get("tracking_id")
            if seq is None or not isinstance(tracking_id, str):
                resp.failure("view lacks tracking_id or an integer seq: push latency unmeasurable")
                return
            resp.success()
        self._delivery = SHARED.open(tracking_id)
        self._plan, self._step, self._seq = plan, 0, seq

    def _send_update(self) -> None:
        assert self._delivery is not None
        assert self._plan is not None
        delivery, step = self._delivery, self._plan.steps[self._step]
        body: dict[str, object] = {"lat": step.lat, "lng": step.lng}
        if step.status is not None:
            body["status"] = step.status
        expected = self._seq + 1
        delivery.record_send(expected, time.perf_counter())
        with self.client.post(f"/tracking/update/{delivery.tracking_id}", json=body,
                              headers=self._auth, name=UPDATE_NAME, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}: {(resp.text or '')[:200]}")
                # The session's state is now uncertain: leave it and start afresh.
                self._abandon()
                return
            seq = view_seq(resp.json())
            if seq is not None:
                # Accepted: every watcher of the delivery must now see this seq (push.py).
                ACKS.record(delivery, seq)
            if seq != expected:
                resp.failure("seq of the answer is not the previous seq + 1")
                self._abandon()
                return
            resp.success()
        self._seq = seq
        self._step += 1
        if step.status == "DELIVERED":
            self._abandon()


class OpsUser(FastHttpUser):
    """Operations: platform statistics, health, and public reads of live deliveries."""

    weight = 1
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self._interval_s = _options(self.environment).ops_interval_s
        self._auth = bearer("superadmin", f"ops-lt-{RUN_TAG}")
        self._task_started = time.perf_counter()

    def wait_time(self) -> float:
        return max(0.0, self._interval_s - (time.perf_counter() - self._task_started))

    @task(2)
    def stats(self) -> None:
        self._task_started = time.perf_counter()
        with self.client.get("/stats/tracking", headers=self._auth, name="GET /stats/tracking",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}: {(resp.text or '')[:200]}")
            elif "total_active_sessions" not in resp.json():
                resp.failure("statistics without total_active_sessions")

    @task(1)
    def health(self) -> None:
        self._task_started = time.perf_counter()
        self.client.get("/health", name="GET /health")

    @task(3)
    def read_delivery(self) -> None:
        self._task_started = time.perf_counter()
        delivery = SHARED.any_live()
        if delivery is None:
            return
        self.client.get(f"/tracking/{delivery.tracking_id}", name="GET /tracking/[id]")

