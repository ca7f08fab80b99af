"""The in-process runtime: the same shard hosts as under Ray, in this process.

For tests and tiny single-process deployments (`TRACKING_ENGINE=local`), as Ray Serve's local
testing mode runs deployments without Ray. Calls run on the event loop's thread (a batch's
commit, with its fsync, included); polls wait on threads of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from engine.clock import Clock, system_clock
from engine.host import HostSpec, make_host
from engine.protocol import AnyCommand, CallReply, Channel, Feed
from engine.settings import Settings


class LocalTransport:
    """Shard hosts living in this process."""

    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        self.n_shards = settings.shards
        self.hosts = [
            make_host(HostSpec.from_settings(settings, i), clock) for i in range(settings.shards)
        ]
        # Polls block a thread while they wait; this process's gateway keeps one per shard.
        self._pollers = ThreadPoolExecutor(self.n_shards + 2, thread_name_prefix="shard-poll")

    async def call(
        self, shard: int, commands: Sequence[AnyCommand], channel: Channel | None
    ) -> CallReply:
        return self.hosts[shard].call(commands, channel)

    async def poll(self, shard: int, channel: Channel, timeout_s: float) -> Feed:
        host = self.hosts[shard]
        return await asyncio.get_running_loop().run_in_executor(
            self._pollers, host.poll, channel, timeout_s
        )

    async def close(self) -> None:
        for h in self.hosts:
            await asyncio.to_thread(h.close)
        self._pollers.shutdown(wait=False, cancel_futures=True)
