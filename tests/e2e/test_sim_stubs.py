"""The stub order/notification services: real loopback HTTP, recording and failing on demand."""

from __future__ import annotations

import httpx
import pytest

from sim.stubs import IntegrationStubs, StubService
from tests.support import timeout


def _post(url: str, body: object, key: str = "k1") -> httpx.Response:
    return httpx.post(url, json=body, headers={"Idempotency-Key": key}, timeout=timeout(5))


def test_records_method_path_headers_and_json_body() -> None:
    with IntegrationStubs() as stubs:
        r = _post(stubs.orders.url + "/orders/ORD-1/status", {"status": "DELIVERED"}, "T:DELIVERED")
        assert r.status_code == 200
        assert stubs.env() == {
            "TRACKING_ORDER_SERVICE_URL": stubs.orders.url,
            "TRACKING_NOTIFICATION_SERVICE_URL": stubs.notifications.url,
        }
        [req] = stubs.orders.requests
        assert (req.method, req.path, req.body) == (
            "POST",
            "/orders/ORD-1/status",
            {"status": "DELIVERED"},
        )
        assert req.idempotency_key == "T:DELIVERED"
        assert req.ok
        assert stubs.notifications.requests == []


def test_fails_for_n_calls_then_recovers() -> None:
    with StubService() as stub:
        stub.set_failing(503, calls=2)
        codes = [_post(stub.url + "/notifications", {"n": i}).status_code for i in range(3)]
        assert codes == [503, 503, 200]
        assert [r.answered for r in stub.requests] == [503, 503, 200]


def test_fails_with_4xx_until_cleared() -> None:
    with StubService() as stub:
        stub.set_failing(422)
        assert _post(stub.url + "/x", {}).status_code == 422
        assert _post(stub.url + "/x", {}).status_code == 422
        stub.clear_failing()
        assert _post(stub.url + "/x", {}).status_code == 200


def test_fails_for_a_time_window() -> None:
    now = [1000.0]
    with StubService(clock=lambda: now[0]) as stub:
        stub.set_failing(503, seconds=10)
        assert _post(stub.url + "/x", {}).status_code == 503
        now[0] += 11
        assert _post(stub.url + "/x", {}).status_code == 200


def test_dropped_connection_gets_no_answer() -> None:
    with StubService() as stub:
        stub.set_failing(0, calls=1)
        with pytest.raises(httpx.TransportError):
            _post(stub.url + "/x", {})
        assert _post(stub.url + "/x", {}).status_code == 200
        assert [r.answered for r in stub.requests] == [0, 200]


def test_down_refuses_connections_then_comes_back_on_the_same_port() -> None:
    with StubService() as stub:
        url = stub.url
        stub.go_down(0.5)
        assert not stub.is_up
        with pytest.raises(httpx.ConnectError):
            _post(url + "/x", {})
        assert stub.wait_for(lambda _: stub.is_up, timeout(10))
        assert _post(url + "/x", {}).status_code == 200
        assert len(stub.requests) == 1
