"""The typed, frozen settings: built from a dict or from TRACKING_* variables, validated."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.domain.session import Lifetimes
from engine.host import HostSpec
from engine.settings import SECRET_FILE, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TRACKING_* variable of the surrounding shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("TRACKING_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.jwt_secret is None
    assert s.ray_address is None
    assert s.avg_speed_kmh == 30
    assert s.session_ttl_s == 86400
    assert s.delivered_ttl_s == 3600
    assert s.order_service_url is None
    assert s.notification_service_url is None
    assert s.engine == "ray"
    assert s.shards >= 1


def test_the_default_data_dir_is_a_per_user_one() -> None:
    d = Settings().data_dir
    assert d.is_absolute()
    assert "tracking" in d.parts


def test_built_from_a_dict(tmp_path: Path) -> None:
    values: dict[str, object] = {
        "jwt_secret": "s" * 40,
        "data_dir": str(tmp_path),
        "avg_speed_kmh": "45.5",
        "session_ttl_s": 600,
        "delivered_ttl_s": 60,
        "purge_after_s": 0,
        "shards": 3,
        "engine": "local",
        "order_service_url": "http://127.0.0.1:9001/",
        "notification_service_url": "   ",
    }
    s = Settings(**values)  # type: ignore[arg-type]
    assert s.data_dir == tmp_path
    assert s.avg_speed_kmh == 45.5
    assert s.shards == 3
    assert s.engine == "local"
    assert s.order_service_url == "http://127.0.0.1:9001"  # trailing slash dropped
    assert s.notification_service_url is None  # blank means unset
    assert s.lifetimes == Lifetimes(
        session_ttl_s=600, delivered_ttl_s=60, purge_after_s=0, speed_kmh=45.5
    )


def test_frozen(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(ValidationError):
        s.avg_speed_kmh = 10


def test_read_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRACKING_AVG_SPEED_KMH", "42")
    monkeypatch.setenv("TRACKING_SESSION_TTL_S", "120")
    monkeypatch.setenv("TRACKING_DELIVERED_TTL_S", "30")
    monkeypatch.setenv("TRACKING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TRACKING_RAY_ADDRESS", "auto")
    monkeypatch.setenv("TRACKING_JWT_SECRET", "from-the-environment")
    monkeypatch.setenv("TRACKING_ORDER_SERVICE_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("TRACKING_NOTIFICATION_SERVICE_URL", "http://127.0.0.1:9002/")
    s = Settings()
    assert s.avg_speed_kmh == 42
    assert s.session_ttl_s == 120
    assert s.delivered_ttl_s == 30
    assert s.data_dir == tmp_path
    assert s.ray_address == "auto"
    assert s.jwt_secret == "from-the-environment"
    assert s.order_service_url == "http://127.0.0.1:9000"
    assert s.notification_service_url == "http://127.0.0.1:9002"


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVG_SPEED_KMH", "99")
    monkeypatch.setenv("JWT_SECRET", "nope")
    s = Settings()
    assert s.avg_speed_kmh == 30
    assert s.jwt_secret is None


def test_a_dict_value_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKING_AVG_SPEED_KMH", "42")
    assert Settings(avg_speed_kmh=20).avg_speed_kmh == 20


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("avg_speed_kmh", 0),
        ("avg_speed_kmh", -5),
        ("avg_speed_kmh", "fast"),
        ("avg_speed_kmh", float("nan")),
        ("session_ttl_s", 0),
        ("session_ttl_s", -1),
        ("delivered_ttl_s", 0),
        ("purge_after_s", -1),
        ("shards", 0),
        ("shards", 1000),
        ("shards", "many"),
        ("engine", "threads"),
        ("sweep_interval_s", 0),
        ("ws_queue_max", 1),
    ],
)
def test_invalid_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TRACKING_AVG_SPEED_KMH", "abc"),
        ("TRACKING_AVG_SPEED_KMH", "0"),
        ("TRACKING_SESSION_TTL_S", "-3"),
        ("TRACKING_DELIVERED_TTL_S", "soon"),
        ("TRACKING_ENGINE", "kubernetes"),
    ],
)
def test_invalid_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_what_a_shard_process_is_sent_has_no_secret(tmp_path: Path) -> None:
    # A runtime sends each shard host its HostSpec (pickled to a Ray actor), never the settings.
    s = Settings(jwt_secret="top-secret-value", data_dir=tmp_path, avg_speed_kmh=45)
    spec = HostSpec.from_settings(s, 0)
    assert "top-secret-value" not in repr(spec)
    assert b"top-secret-value" not in pickle.dumps(spec)
    assert spec.shard.lifetimes.speed_kmh == 45


# -- the JWT secret ---------------------------------------------------------------------------


def test_a_configured_secret_is_used_as_is_and_nothing_is_written(tmp_path: Path) -> None:
    s = Settings(jwt_secret="configured-secret", data_dir=tmp_path / "data")
    assert s.resolved_secret() == "configured-secret"
    assert not (tmp_path / "data").exists()


def test_without_one_a_secret_is_created_once_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "not" / "yet" / "there"
    first = Settings(data_dir=data).resolved_secret()
    path = data / SECRET_FILE
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(data_dir=data).resolved_secret() == first
    assert Settings(data_dir=data).resolved_secret() == first
    assert [p.name for p in data.iterdir()] == [SECRET_FILE]


def test_the_secret_is_random_never_a_built_in_default(tmp_path: Path) -> None:
    secrets = {Settings(data_dir=tmp_path / str(i)).resolved_secret() for i in range(5)}
    assert len(secrets) == 5
    assert all(len(s) >= 32 for s in secrets)


def test_many_starting_together_agree(tmp_path: Path) -> None:
    # `tracking serve` and `tracking token` may create the secret at the same moment; the file
    # operations are the same whether the racers are threads or processes.
    n = 8
    barrier = threading.Barrier(n)

    def resolve() -> str:
        barrier.wait()
        return Settings(data_dir=tmp_path / "data").resolved_secret()

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(lambda _: resolve(), range(n)))
    assert len(set(got)) == 1
    assert len(got[0]) >= 32
    assert [p.name for p in (tmp_path / "data").iterdir()] == [SECRET_FILE]


def test_an_empty_secret_file_is_refused_never_used_as_the_secret(tmp_path: Path) -> None:
    # A file that exists but holds nothing must not become the empty HMAC key (with which
    # anyone could sign a superadmin token); the error says how to recover.
    (tmp_path / SECRET_FILE).write_text("\n")
    with pytest.raises(RuntimeError, match=f"{SECRET_FILE}.*TRACKING_JWT_SECRET"):
        Settings(data_dir=tmp_path).resolved_secret()
    (tmp_path / SECRET_FILE).unlink()
    assert len(Settings(data_dir=tmp_path).resolved_secret()) >= 32
