"""Property-based fuzzing of the running server from its own OpenAPI schema (schemathesis 4).

No response may be a 5xx, and every error carries the contract's JSON `detail` string.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from harness import ServerProcess
from tests.e2e.clients import bearer
from tests.support import timeout

EXAMPLES = 25  # per operation: bounded, so the suite stays quick


@pytest.fixture(scope="module")
def openapi(server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(server.base_url + "/openapi.json",
                                         timeout=timeout(30))


def error_has_detail(ctx: Any, response: Any, case: Any) -> bool | None:
    """API.md: every error body is JSON with a `detail` string a person can act on."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), f"{response.status_code} body is not a JSON object: {body!r}"
    detail = body.get("detail")
    assert isinstance(detail, str), f"{response.status_code} `detail` is not a string: {body!r}"
    assert detail.strip(), f"{response.status_code} has an empty `detail`"
    return None


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
CHECKS = [not_a_server_error, error_has_detail]


def fuzz_every_operation(openapi: Any, headers: dict[str, str], mode: GenerationMode) -> None:
    """Run each operation's generated cases; report every failing operation together.

    (schemathesis.pytest.from_fixture would give one test per operation, but 4.32 relies on a
    pytest internal that pytest 9 removed, so the operations are looped over here.)
    """
    failures: dict[str, str] = {}
    labels = []
    for result in openapi.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy(mode))
        @FUZZ
        def check(case: Any) -> None:
            if not headers and case.headers:
                case.headers = {k: v for k, v in case.headers.items()
                                if k.lower() != "authorization"}
            case.call_and_validate(headers=headers or None, checks=CHECKS, timeout=timeout(30))

        try:
            check()
        except Unsatisfiable:
            # Negative mode on an operation with no inputs to break (GET /health).
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collected, so one run shows every failing operation
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert {"POST /tracking/start", "GET /tracking/{tracking_id}"} <= set(labels), labels
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_as_superadmin(openapi: Any, server: ServerProcess,
                                        mode: GenerationMode) -> None:
    fuzz_every_operation(openapi, bearer(server.token("superadmin", "fuzz")), mode)


def test_no_server_errors_anonymous(openapi: Any) -> None:
    fuzz_every_operation(openapi, {}, GenerationMode.POSITIVE)
