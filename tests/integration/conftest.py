"""Engine fixtures: the same tests run on the Ray runtime and on the local runtime, and on Ray
with the PostgreSQL store (a database of its own on the session's throwaway server).

Engines are built the way every process builds them, through `engine.runtime.connect`; under
Ray they run on the session's Ray instance, each test in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from engine.runtime import Engine, connect
from engine.settings import Settings

T = TypeVar("T")
Runtime = Literal["ray", "local"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class EngineUnderTest:
    """Connects engines of one runtime, on a fresh data dir and namespace."""

    def __init__(
        self, runtime: Runtime, data_dir: Path, ray_address: str | None,
        store_url: str | None = None,
    ) -> None:
        self.runtime: Runtime = runtime
        self.ray_address = ray_address
        self.settings = Settings(
            data_dir=data_dir,
            store_url=store_url,
            engine=runtime,
            shards=3,
            ray_address=ray_address,
            ray_namespace="it-" + uuid.uuid4().hex[:8],
            sweep_interval_s=0.1,
        )
        self._started: list[Settings] = []

    def with_settings(self, **changes: Any) -> Settings:
        self.settings = self.settings.model_copy(update=changes)
        return self.settings

    @contextlib.asynccontextmanager
    async def engine(self) -> AsyncIterator[Engine]:
        """A connected engine for the current settings, closed on the way out (under Ray the
        actors outlive it, as they outlive an API process, until `close`)."""
        if self.runtime == "ray":
            self._started.append(self.settings)  # before connecting: it may create some actors
        engine = await connect(self.settings)
        try:
            yield engine
        finally:
            await engine.close()

    def close(self) -> None:
        if self.runtime == "ray":
            from engine.runtime import ray_cluster

            for s in self._started:
                ray_cluster.kill_all(s)


@pytest.fixture(params=["ray", "local", "ray-postgres"])
def eut(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineUnderTest]:
    runtime: Runtime = "local" if request.param == "local" else "ray"
    address: str | None = None
    if runtime == "ray":
        address = request.getfixturevalue("ray_address")
    url = request.getfixturevalue("pg_url") if request.param == "ray-postgres" else None
    e = EngineUnderTest(runtime, tmp_path / "data", address, url)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(params=["sqlite", "postgres"])
def ray_eut(
    request: pytest.FixtureRequest, ray_address: str, tmp_path: Path
) -> Iterator[EngineUnderTest]:
    """The Ray runtime only (process-level behaviour), on each store."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    e = EngineUnderTest("ray", tmp_path / "data", ray_address, url)
    try:
        yield e
    finally:
        e.close()


Runner = Callable[[Coroutine[Any, Any, T]], T]
