"""The one assembly point: which runtime hosts the shards, and how a process reaches them.

`connect(settings)` gives an API process (or the engine benchmark, or a test) an `Engine`: the
batched client and the outbox, whichever runtime `TRACKING_ENGINE` names. `Deployment` is what
`tracking serve` holds for its life: it starts or joins the Ray instance, creates the shard
actors once before any API process starts, and removes what it created when told to stop.

The runtimes' modules are imported only when chosen: an API process on Ray loads no database
driver, and one on the local runtime loads no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engine.client import BatchObserver, EngineClient
from engine.clock import Clock, system_clock
from engine.dispatcher import Outbox
from engine.settings import Settings

log = logging.getLogger(__name__)


class ClusterUnreachable(RuntimeError):
    """`TRACKING_RAY_ADDRESS` names a cluster that did not answer."""


@dataclass
class Engine:
    """A connected engine: the client every request goes through, and the outbox's figures."""

    client: EngineClient
    outbox: Outbox
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Stop this process's side (event channel, local shards and dispatcher); under Ray the
        actors stay up for the other API processes (`Deployment.stop` ends them)."""
        await self.client.close_events()
        for close in self._closers:
            try:
                await close()
            except Exception:
                log.exception("closing the engine")


async def connect(
    settings: Settings, observe: BatchObserver | None = None, clock: Clock = system_clock
) -> Engine:
    """The engine for `settings`, ready to serve (shards answering)."""
    if settings.engine == "local":
        return _connect_local(settings, observe, clock)
    from engine.runtime import ray_cluster

    ray_cluster.join(settings)
    handles = ray_cluster.ensure_shards(settings)
    dispatcher = ray_cluster.ensure_dispatcher(settings)
    transport = ray_cluster.transport(settings, handles)
    return Engine(
        EngineClient(transport, observe), ray_cluster.RayOutbox(dispatcher), [transport.close]
    )


def _connect_local(settings: Settings, observe: BatchObserver | None, clock: Clock) -> Engine:
    from engine.dispatcher import Dispatcher
    from engine.runtime.local import LocalTransport

    transport = LocalTransport(settings, clock)
    dispatcher = Dispatcher(settings, clock)
    delivering = asyncio.get_running_loop().create_task(dispatcher.run())

    async def stop_delivering() -> None:
        delivering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivering

    closers: list[Callable[[], Awaitable[None]]] = [
        stop_delivering, dispatcher.close, transport.close
    ]
    return Engine(EngineClient(transport, observe), dispatcher, closers)


class Deployment:
    """The engine's processes for the life of `tracking serve` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = False

    def start(self) -> dict[str, str]:
        """Start (or join) the engine; the environment API worker processes need to join it.

        Raises StoreError when a shard cannot open its store, and
        `ray_cluster.ClusterUnreachable` when the configured cluster does not answer."""
        from engine.store import StoreSpec, check_data_dir, check_store

        check_data_dir(self.settings.data_dir)
        if self.settings.engine == "local":
            spec = StoreSpec.from_settings(self.settings)
            for i in range(self.settings.shards):
                check_store(spec, i)
            return {}
        from engine.runtime import ray_cluster

        ray_cluster.join(self.settings)
        self.owner = not ray_cluster.shards_exist(self.settings)
        ray_cluster.ensure_shards(self.settings)
        # Workers join the same instance.
        return {"TRACKING_RAY_ADDRESS": ray_cluster.address()}

    def stop(self) -> None:
        """Remove the actors this deployment created, and leave Ray; bounded in time."""
        if self.settings.engine == "local":
            return
        from engine.runtime import ray_cluster

        # A private instance ends with its actors; in a shared cluster, remove ours.
        if self.owner and not ray_cluster.owns_instance():
            ray_cluster.kill_all(self.settings)
        ray_cluster.shutdown()


def engine_pids(settings: Settings) -> list[int]:
    """The processes that host the shards: this one on the local runtime, the shard actors'
    on Ray (for measuring their memory and CPU)."""
    if settings.engine == "local":
        return [os.getpid()]
    from engine.runtime import ray_cluster

    ids = ray_cluster.process_ids(settings)
    return [pid for name, pid in ids.items() if name.startswith("shard-")]
