"""Session-wide fixtures: one local Ray instance; real `tracking serve` processes joined to it;
one throwaway PostgreSQL server (started when a test first needs it), a database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from harness import ServerProcess
from harness.postgres import PostgresMissing, PostgresServer
from tests.stores import StoreBackend
from tests.support import FACTOR, SERVER_STARTUP_S, timeout

# Hypothesis' per-example deadline is a wall-clock check; tests check behaviour, not time.
hypothesis_settings.register_profile("tracking", deadline=None)
hypothesis_settings.load_profile("tracking")


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Start one local Ray instance for the whole test session and shut it down at the end."""
    from engine.runtime import ray_cluster as ray_runtime

    address = ray_runtime.start_local_for_tests()
    try:
        yield address
    finally:
        ray_runtime.shutdown()


@pytest.fixture(scope="session")
def server_factory(
    ray_address: str,
) -> Callable[..., AbstractContextManager[ServerProcess]]:
    """Start extra servers joined to the session's Ray instance, each in its own namespace."""

    @contextmanager
    def start(workers: int = 1, **env: str) -> Iterator[ServerProcess]:
        full_env = {
            "TRACKING_RAY_ADDRESS": ray_address,
            "TRACKING_RAY_NAMESPACE": "test-" + uuid.uuid4().hex[:8],
            **env,
        }
        with ServerProcess(env=full_env, workers=workers,
                           startup_timeout_s=timeout(SERVER_STARTUP_S)) as srv:
            yield srv

    return start


@pytest.fixture(scope="session")
def server(
    server_factory: Callable[..., AbstractContextManager[ServerProcess]],
) -> Iterator[ServerProcess]:
    """One real `tracking serve` on a free loopback port, shared by the e2e tests."""
    with server_factory() as srv:
        yield srv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the test session (Debian's `postgresql` package,
    which scripts/test installs). Its own durability is not under test: fsync is off."""
    try:
        server = PostgresServer(fsync=False)
    except PostgresMissing as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))  # CI installs it: a missing server must not pass as a skip
        pytest.skip(str(e))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """A fresh store of each kind (see tests/stores.py)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return StoreBackend(request.param, tmp_path / "data", url)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale the configured per-test limit (pyproject's `timeout`, pytest-timeout) by the same
    factor as every wait inside the tests, so a slow box meets the tests' own deadlines first
    and their messages. An explicit --timeout, PYTEST_TIMEOUT or timeout marker is kept.
    Tests on the PostgreSQL server are marked `postgres` (`-m "not postgres"` leaves them out)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and any(
            "postgres" in str(v) for v in callspec.params.values()
        )
        if on_postgres or {"pg_server", "pg_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
    if FACTOR == 1 or not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) is not None:
        return
    if os.environ.get("PYTEST_TIMEOUT"):
        return
    configured = config.getini("timeout")
    if not configured:
        return
    scaled = pytest.mark.timeout(timeout(float(configured)))
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(scaled)
