"""The in-process runtime: the same shard hosts as under Ray, in this event loop.

For tests and tiny single-process deployments (`TRACKING_ENGINE=local`), as Ray Serve's local
testing mode runs deployments without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from engine.clock import Clock, system_clock
from engine.host import ShardHost
from engine.settings import Settings
from engine.shard import Channel, Command, Event, Feed, Result, Shard, ShardConfig
from engine.store import SqliteStore, Store, shard_db_path


def shard_config(settings: Settings, index: int) -> ShardConfig:
    return ShardConfig(
        index=index,
        n_shards=settings.shards,
        lifetimes=settings.lifetimes,
        order_service=settings.order_service_url is not None,
        notification_service=settings.notification_service_url is not None,
    )


def make_host(settings: Settings, index: int, clock: Clock = system_clock) -> ShardHost:
    """Build shard `index` with its store, as every runtime does."""
    store: Store | None = (
        SqliteStore(shard_db_path(settings.data_dir, index)) if settings.journal else None
    )
    return ShardHost(Shard(shard_config(settings, index), store, clock), settings.sweep_interval_s)


class LocalTransport:
    """Shard hosts living in this process."""

    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        self.n_shards = settings.shards
        self.hosts = [make_host(settings, i, clock) for i in range(settings.shards)]
        # Polls block a thread while they wait; this process's gateway keeps one per shard.
        self._pollers = ThreadPoolExecutor(self.n_shards + 2, thread_name_prefix="shard-poll")

    async def call(
        self, shard: int, commands: Sequence[Command], channel: Channel | None
    ) -> tuple[list[Result], Feed | None]:
        return self.hosts[shard].call(commands, channel)

    async def poll(
        self, shard: int, gateway: str, ack: int, connections: int, timeout_s: float
    ) -> tuple[str, int, list[Event]]:
        host = self.hosts[shard]
        return await asyncio.get_running_loop().run_in_executor(
            self._pollers, host.poll, gateway, ack, connections, timeout_s
        )

    async def close(self) -> None:
        for h in self.hosts:
            await asyncio.to_thread(h.close)
        self._pollers.shutdown(wait=False, cancel_futures=True)
