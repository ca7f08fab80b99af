"""Rate limits (token buckets per principal and per address) and their settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.auth import Principal, Role
from api.limits import Limits, TokenBuckets, retry_after
from engine.clock import ManualClock
from engine.domain.errors import RateLimited
from engine.settings import SECRET_FILE, SERVICE_SECRET_FILE, Rate, Settings, parse_rate


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRACKING_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20/s", Rate(20, 1)), ("30/min", Rate(30, 60)), ("500 / h", Rate(500, 3600)),
     ("2.5/second", Rate(2.5, 1)), ("off", None), ("0", None)],
)
def test_rates_read_as_written(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["20", "fast", "-1/s", "0/s", "20/day", "1e9/s"])
def test_a_rate_that_is_not_one_is_refused_at_start(text: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a rate"):
        Settings(data_dir=tmp_path, limit_update_per_ip=text)


def test_every_limit_has_a_default_that_fits_the_shipped_load(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.max_body_bytes == 65536
    assert s.max_sockets >= 10_000 + 1_000  # watchers-10k: 10,000 sockets on one API process
    for action in ("start", "update", "connect"):
        for scope in ("principal", "ip"):
            assert s.rate(action, scope) is not None, (action, scope)
    update = s.rate("update", "principal")
    assert update is not None
    # The simulator's riders report up to 60 times a second (speedup 600, 10 s interval).
    assert update.count / update.period_s >= 60
    connect = s.rate("connect", "ip")
    assert connect is not None
    # loadtests/storm.py: 10,000 public watchers from one address at 1,000+ a second.
    assert connect.count / connect.period_s >= 2000


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = ManualClock(0.0)
    b = TokenBuckets(Rate(3, 1), clock)
    assert [b.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("a")
    assert wait == pytest.approx(1 / 3)
    assert b.take("b") == 0.0  # keys are independent
    clock.advance(wait)
    assert b.take("a") == 0.0
    assert b.take("a") > 0
    clock.advance(10)  # refills up to the burst, no more
    assert [b.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]


def test_a_bucket_forgets_keys_rather_than_grow_without_bound() -> None:
    clock = ManualClock(0.0)
    b = TokenBuckets(Rate(1, 60), clock, max_keys=100)
    for i in range(1000):
        b.take(f"10.0.{i // 256}.{i % 256}")
    assert len(b._buckets) <= 100
    assert b.take("10.0.3.231") > 0  # the newest ones are still counted


def test_limits_per_principal_spare_superadmins_but_not_their_address(tmp_path: Path) -> None:
    clock = ManualClock(0.0)
    s = Settings(data_dir=tmp_path, limit_start_per_principal="2/min",
                 limit_start_per_ip="5/min")
    limits = Limits(s, clock)
    rider, admin = Principal("R1", Role.RIDER), Principal("ops", Role.SUPERADMIN)
    limits.check("start", rider, "10.0.0.1")
    limits.check("start", rider, "10.0.0.2")
    with pytest.raises(RateLimited) as refused:
        limits.check("start", rider, "10.0.0.3")
    assert refused.value.retry_after_s == 30
    assert retry_after(refused.value) == "30"
    assert "session starts" in refused.value.detail
    for _ in range(5):
        limits.check("start", admin, "10.0.0.9")
    with pytest.raises(RateLimited, match="from this address"):
        limits.check("start", admin, "10.0.0.9")
    limits.check("start", None, "10.0.0.8")  # no principal: only the address counts


def test_a_limit_set_off_is_off(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, limit_connect_per_ip="off",
                 limit_connect_per_principal="off")
    limits = Limits(s, ManualClock(0.0))
    for _ in range(10_000):
        limits.check("connect", Principal("c", Role.CUSTOMER), "10.0.0.1")


def test_the_service_secret_is_its_own_created_once_and_reused(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    users, service = s.resolved_secret(), s.resolved_service_secret()
    assert users != service
    assert len(service) >= 32
    assert Settings(data_dir=tmp_path).resolved_service_secret() == service
    path = tmp_path / SERVICE_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SECRET_FILE, path.name])
    assert Settings(data_dir=tmp_path, service_secret="set").resolved_service_secret() == "set"


def test_the_order_check_needs_the_order_service(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="TRACKING_ORDER_SERVICE_URL"):
        Settings(data_dir=tmp_path, start_check_order=True)
    s = Settings(data_dir=tmp_path, start_check_order=True,
                 order_service_url="http://127.0.0.1:9")
    assert s.start_check_order


@pytest.mark.parametrize("url", ["http://exa mple", "ftp://h", "http://h:99999", "http://h/?q#f"])
def test_a_service_url_that_cannot_be_called_is_refused_at_start(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, order_service_url=url)
