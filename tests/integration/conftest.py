"""Engine fixtures: the same tests run on the Ray runtime and on the local runtime."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine.client import EngineClient, Transport
from engine.settings import Settings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class EngineUnderTest:
    """Builds an EngineClient for one runtime, on a fresh data dir and namespace."""

    def __init__(self, runtime: str, data_dir: Path, ray_address: str | None) -> None:
        self.runtime = runtime
        self.ray_address = ray_address
        self.settings = Settings(
            data_dir=data_dir,
            engine=runtime,
            shards=3,
            ray_namespace="it-" + uuid.uuid4().hex[:8],
            sweep_interval_s=0.1,
        )
        self._started: list[Settings] = []

    def with_settings(self, **changes: Any) -> Settings:
        self.settings = self.settings.model_copy(update=changes)
        return self.settings

    def transport(self) -> Transport:
        if self.runtime == "local":
            from engine.local_runtime import LocalTransport

            return LocalTransport(self.settings)
        from engine import ray_runtime

        ray_runtime.ensure_shards(self.settings)
        self._started.append(self.settings)
        return ray_runtime.RayTransport(self.settings)

    def client(self) -> EngineClient:
        return EngineClient(self.transport())

    def close(self) -> None:
        if self.runtime == "ray":
            from engine import ray_runtime

            for s in self._started:
                ray_runtime.kill_shards(s)


@pytest.fixture(params=["ray", "local"])
def eut(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineUnderTest]:
    address: str | None = None
    if request.param == "ray":
        address = request.getfixturevalue("ray_address")
    e = EngineUnderTest(request.param, tmp_path / "data", address)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def ray_eut(ray_address: str, tmp_path: Path) -> Iterator[EngineUnderTest]:
    """The Ray runtime only (process-level behaviour)."""
    e = EngineUnderTest("ray", tmp_path / "data", ray_address)
    try:
        yield e
    finally:
        e.close()


Runner = Callable[[Coroutine[Any, Any, T]], T]
