"""Every call into Ray lives in this module.

Shards run as named, detached Ray actors (`tracking-shard-NNN` in the configured namespace),
found by any API process that joins the same cluster and restarted by Ray when they die (the
restarted shard reloads its sessions from the store). Ray is started lean (no dashboard) when no
cluster address is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayError

from engine.errors import Unavailable
from engine.settings import Settings
from engine.shard import Command, Event, Result

log = logging.getLogger(__name__)

SHARD_NAME = "tracking-shard-{:03d}"
DISPATCHER_NAME = "tracking-outbox"
# Ray 2.60 turns token auth on by default; the head and every driver must agree. An embedded
# instance on loopback needs none, so default it off unless the operator set it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


class _ShardActor:
    """Ray actor body: a ShardHost built inside the actor process."""

    def __init__(self, settings_json: str, index: int) -> None:
        from engine.local_runtime import make_host

        logging.basicConfig(level=logging.INFO)
        settings = Settings.model_validate_json(settings_json)
        self.host = make_host(settings, index)

    async def call(self, commands: Sequence[Command]) -> list[Result]:
        return await self.host.call(commands)

    async def poll(
        self, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        return await self.host.poll(gateway, ack, connections, timeout_s)

    async def ping(self) -> dict[str, Any]:
        return await self.host.ping()

    def pid(self) -> int:
        return os.getpid()


ShardActor = ray.remote(_ShardActor)


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
        "max_concurrency": 10_000,
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
    """Kill the named shard actors of this namespace (service shutdown)."""
    for i in range(settings.shards):
        try:
            handle = ray.get_actor(SHARD_NAME.format(i), namespace=settings.ray_namespace)
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

    async def call(self, shard: int, commands: Sequence[Command]) -> list[Result]:
        try:
            results: list[Result] = await self.handles[shard].call.remote(list(commands))
        except RayError as e:
            msg = f"shard {shard} is restarting; retry shortly ({type(e).__name__})"
            raise Unavailable(msg) from e
        return results

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


def address() -> str:
    """The GCS address of the Ray instance this process joined."""
    gcs: str = ray.get_runtime_context().gcs_address
    return gcs
