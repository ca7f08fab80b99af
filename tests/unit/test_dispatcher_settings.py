"""What the outbox dispatcher in another process is sent: only the settings it uses (finding 6)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from engine.dispatcher import DISPATCHER_SETTINGS, Dispatcher, dispatcher_settings
from engine.settings import Settings
from engine.store import StoreSpec

# Every other setting, each one that the dispatcher does not read. A new setting fails the
# test below until it is put on one side or the other.
NOT_FOR_THE_DISPATCHER = frozenset({
    "jwt_secret", "ray_address", "ray_namespace", "ray_node_ip", "engine", "avg_speed_kmh",
    "session_ttl_s",
    "delivered_ttl_s", "purge_after_s", "sweep_interval_s", "ws_queue_max",
    "ws_max_message_bytes", "tile_url", "tile_attribution", "max_body_bytes", "max_sockets",
    "limit_start_per_principal", "limit_start_per_ip", "limit_update_per_principal",
    "limit_update_per_ip", "limit_connect_per_principal", "limit_connect_per_ip",
    "start_check_order", "order_check_timeout_s", "metrics_port", "metrics_host",
    "fix_max_age_s", "fix_max_future_s", "fix_max_accuracy_m", "fix_max_speed_kmh",
    "approach_eta_s", "approach_radius_m", "arrival_radius_m", "batch_max_fixes",
    "resume_max_changes",
})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRACKING_"):
            monkeypatch.delenv(name)


def test_every_setting_is_either_sent_to_the_dispatcher_or_not() -> None:
    fields = set(Settings.model_fields)
    assert fields >= DISPATCHER_SETTINGS
    assert fields - DISPATCHER_SETTINGS == NOT_FOR_THE_DISPATCHER


def test_the_dispatcher_is_sent_what_it_uses_and_no_user_secret(tmp_path: Path) -> None:
    s = Settings(jwt_secret="users-secret-" + "u" * 30, data_dir=tmp_path, shards=3,
                 order_service_url="http://127.0.0.1:9001", outbox_max_attempts=4,
                 tile_url="https://tiles.example/{z}/{x}/{y}.png")
    sent = dispatcher_settings(s)
    assert b"users-secret" not in sent.encode()
    assert set(orjson.loads(sent)) == DISPATCHER_SETTINGS
    there = Settings.model_validate_json(sent)
    assert there.jwt_secret is None
    assert there.tile_url is None
    # The service secret was created once, here, and travels: every node signs with it.
    assert there.service_secret == s.resolved_service_secret()
    d = Dispatcher(there)
    assert d.secret == s.resolved_service_secret()
    assert StoreSpec.from_settings(there) == StoreSpec.from_settings(s)
    assert (there.order_service_url, there.outbox_max_attempts) == ("http://127.0.0.1:9001", 4)
