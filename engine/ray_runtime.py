"""Every call into Ray lives in this module.

Shards run as named, detached Ray actors (`tracking-shard-NNN` in the configured namespace),
found by any API process that joins the same cluster and restarted by Ray when they die (the
restarted shard reloads its sessions from the store). Ray is started lean (no dashboard) when no
cluster address is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayError

from engine.errors import Unavailable
from engine.host import tune_gc
from engine.settings import Settings
from engine.shard import Channel, Command, Event, Feed, Result

log = logging.getLogger(__name__)

SHARD_NAME = "tracking-shard-{:03d}"
DISPATCHER_NAME = "tracking-outbox"
# Ray 2.60 turns token auth on by default; the head and every driver must agree. An embedded
# instance on loopback needs none, so default it off unless the operator set it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray starts workers at niceness 15; shards are the service's hot path, not background work,
# and at 15 they starve behind the API processes whenever the cores are busy. (Read by the
# raylet this process starts; a cluster joined by address keeps its own setting.)
os.environ.setdefault("RAY_worker_niceness", "0")


# Long-polls wait in a thread group of their own, one thread per waiting API process: more API
# processes than this against one shard would queue their polls.
POLL_THREADS = 64


class _ShardActor:
    """Ray actor body: a ShardHost built inside the actor process.

    A threaded actor: calls (and pings) run one at a time on the default group's thread, polls
    block in the "poll" group's threads; the host's lock orders them (see engine.host)."""

    def __init__(self, settings_json: str, index: int) -> None:
        from engine.local_runtime import make_host

        logging.basicConfig(level=logging.INFO)
        settings = Settings.model_validate_json(settings_json)
        self.host = make_host(settings, index)
        tune_gc()

    def call(
        self, commands: Sequence[Command], channel: Channel | None
    ) -> tuple[list[Result], Feed | None]:
        return self.host.call(commands, channel)

    @ray.method(concurrency_group="poll")
    def poll(
        self, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        return self.host.poll(gateway, ack, connections, timeout_s)

    @ray.method(concurrency_group="poll")
    def ping(self) -> dict[str, Any]:
        return self.host.ping()

    @ray.method(concurrency_group="poll")
    def pid(self) -> int:
        return os.getpid()


ShardActor = ray.remote(concurrency_groups={"poll": POLL_THREADS})(  # type: ignore[call-overload]
    _ShardActor
)


class _DispatcherActor:
    """Ray actor body: the outbox dispatcher, one per namespace, delivering every shard's outbox."""

    def __init__(self, settings_json: str) -> None:
        from engine.dispatcher import Dispatcher

        logging.basicConfig(level=logging.INFO)
        self.dispatcher = Dispatcher(Settings.model_validate_json(settings_json))
        self.task: asyncio.Task[None] | None = None
        # An async actor's __init__ runs on its event loop (Ray 2.60), so delivery resumes by
        # itself when Ray restarts this actor; `start()` covers runtimes where it does not.
        with contextlib.suppress(RuntimeError):
            self._launch()

    def _launch(self) -> None:
        if self.task is not None and self.task.done():
            if not self.task.cancelled() and self.task.exception() is not None:
                log.error("outbox dispatcher stopped: %r; restarting it", self.task.exception())
            self.task = None
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.dispatcher.run())

    async def start(self) -> bool:
        self._launch()
        return True

    async def counts(self) -> dict[str, int]:
        return await self.dispatcher.counts()

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return await self.dispatcher.dead_letters(limit)

    def pid(self) -> int:
        return os.getpid()


DispatcherActor = ray.remote(_DispatcherActor)


def init(settings: Settings) -> None:
    """Join the configured cluster, or start a lean local instance."""
    if ray.is_initialized():
        return
    common: dict[str, Any] = {
        "namespace": settings.ray_namespace,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if settings.ray_address:
        ray.init(address=settings.ray_address, **common)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **common)


def start_local_for_tests() -> str:
    """A local Ray instance for a test session; returns the address other drivers join."""
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    address: str = ray.get_runtime_context().gcs_address
    return address


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _shard_options(settings: Settings, index: int) -> dict[str, Any]:
    return {
        "name": SHARD_NAME.format(index),
        "namespace": settings.ray_namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }


def ensure_shards(settings: Settings) -> list[Any]:
    """Create the shard actors, or find them if another process already did; wait until ready."""
    cfg = settings.model_dump_json()
    actor: Any = ShardActor
    handles = [
        actor.options(**_shard_options(settings, i)).remote(cfg, i) for i in range(settings.shards)
    ]
    ray.get([h.ping.remote() for h in handles])
    return handles


def ensure_dispatcher(settings: Settings) -> Any:
    """Create the namespace's outbox dispatcher actor, or find it; make sure it is delivering."""
    actor: Any = DispatcherActor
    handle = actor.options(
        name=DISPATCHER_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        num_cpus=0,
    ).remote(settings.model_dump_json())
    ray.get(handle.start.remote())
    return handle


def find_dispatcher(settings: Settings) -> Any:
    return ray.get_actor(DISPATCHER_NAME, namespace=settings.ray_namespace)


def find_shards(settings: Settings) -> list[Any]:
    ns = settings.ray_namespace
    return [ray.get_actor(SHARD_NAME.format(i), namespace=ns) for i in range(settings.shards)]


def shards_exist(settings: Settings) -> bool:
    try:
        ray.get_actor(SHARD_NAME.format(0), namespace=settings.ray_namespace)
    except ValueError:
        return False
    return True


def kill_shards(settings: Settings) -> None:
    """Kill the named shard actors and the outbox dispatcher of this namespace (shutdown)."""
    names = [SHARD_NAME.format(i) for i in range(settings.shards)] + [DISPATCHER_NAME]
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=settings.ray_namespace)
            ray.kill(handle, no_restart=True)
        except (ValueError, RayError):
            pass


def shard_pid(handle: Any) -> int:
    pid: int = ray.get(handle.pid.remote())
    return pid


class RayTransport:
    """Commands and polls as Ray actor calls (awaited on the asyncio loop)."""

    def __init__(self, settings: Settings) -> None:
        self.n_shards = settings.shards
        self.handles = find_shards(settings)

    async def call(
        self, shard: int, commands: Sequence[Command], channel: Channel | None
    ) -> tuple[list[Result], Feed | None]:
        try:
            out: tuple[list[Result], Feed | None] = await self.handles[shard].call.remote(
                list(commands), channel
            )
        except RayError as e:
            msg = f"shard {shard} is restarting; retry shortly ({type(e).__name__})"
            raise Unavailable(msg) from e
        return out

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        try:
            out: tuple[str, int, list[Event]] = await self.handles[shard].poll.remote(
                gateway, ack, connections, timeout_s
            )
        except RayError as e:
            await asyncio.sleep(0.2)
            raise Unavailable(f"shard {shard} is restarting ({type(e).__name__})") from e
        return out


class RayOutbox:
    """The API's view of the dispatcher actor (counts and dead letters)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def counts(self) -> dict[str, int]:
        try:
            out: dict[str, int] = await self.handle.counts.remote()
        except RayError as e:
            raise Unavailable("the outbox dispatcher is restarting; retry shortly") from e
        return out

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        try:
            out: list[dict[str, Any]] = await self.handle.dead_letters.remote(limit)
        except RayError as e:
            raise Unavailable("the outbox dispatcher is restarting; retry shortly") from e
        return out

    async def close(self) -> None:
        return None  # the actor outlives this API process; `kill_shards` ends it


def address() -> str:
    """The GCS address of the Ray instance this process joined."""
    gcs: str = ray.get_runtime_context().gcs_address
    return gcs
