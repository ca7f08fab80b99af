"""The outbox dispatcher's pure policy: what an HTTP outcome means, and how long to wait."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.outbox_policy import BASE_S, CAP_S, Backoff, Outcome, classify, decide, describe


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_done(status: int) -> None:
    assert classify(status) is Outcome.DONE


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_retried(status: int) -> None:
    assert classify(status) is Outcome.RETRY


def test_no_answer_is_retried() -> None:
    # Connection refused or dropped, or a timeout: nothing came back.
    assert classify(None) is Outcome.RETRY


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 499])
def test_4xx_is_a_dead_letter(status: int) -> None:
    assert classify(status) is Outcome.DEAD


@pytest.mark.parametrize("status", [408, 429])
def test_4xx_that_ask_to_come_back_later_are_retried(status: int) -> None:
    assert classify(status) is Outcome.RETRY


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_park_the_call(status: int) -> None:
    assert classify(status) is Outcome.DEAD


def test_no_attempt_cap_retries_forever() -> None:
    assert decide(503, 10_000, 0) is Outcome.RETRY
    assert decide(None, 10_000, 0) is Outcome.RETRY


def test_the_attempt_cap_turns_the_last_retry_into_a_dead_letter() -> None:
    assert decide(503, 1, 3) is Outcome.RETRY
    assert decide(503, 2, 3) is Outcome.RETRY
    assert decide(503, 3, 3) is Outcome.DEAD
    assert decide(None, 3, 3) is Outcome.DEAD


def test_the_attempt_cap_does_not_touch_success_or_4xx() -> None:
    assert decide(200, 3, 3) is Outcome.DONE
    assert decide(200, 99, 3) is Outcome.DONE
    assert decide(422, 1, 3) is Outcome.DEAD


def test_backoff_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    b = Backoff()
    assert [b.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 32, 60]
    assert b.ceiling(9) == CAP_S
    assert b.ceiling(0) == BASE_S  # defensive: a first attempt is attempt 1


def test_backoff_ceiling_survives_very_long_outages() -> None:
    assert Backoff().ceiling(100_000) == CAP_S


@given(failures=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_zero_and_the_ceiling(failures: int, seed: int) -> None:
    b = Backoff()
    d = b.delay(failures, random.Random(seed))
    assert 0.0 <= d <= b.ceiling(failures)


def test_full_jitter_is_spread_over_the_whole_window() -> None:
    # Full jitter, not "ceiling plus a little": delays cover [0, ceiling] (here ceiling 8 s).
    rng = random.Random(7)
    delays = [Backoff().delay(5, rng) for _ in range(2000)]
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_a_seeded_generator_gives_the_same_delays() -> None:
    a = [Backoff().delay(n, random.Random(42)) for n in range(1, 6)]
    b = [Backoff().delay(n, random.Random(42)) for n in range(1, 6)]
    assert a == b


def test_custom_base_and_cap() -> None:
    b = Backoff(base_s=0.01, cap_s=0.05)
    assert [b.ceiling(n) for n in range(1, 5)] == [0.01, 0.02, 0.04, 0.05]


def test_describe_names_the_status_or_the_transport_error() -> None:
    assert describe(503) == "HTTP 503"
    assert describe(422, "order unknown") == "HTTP 422: order unknown"
    assert describe(None, "ConnectError: refused") == "ConnectError: refused"
    assert describe(None) == "no answer"
