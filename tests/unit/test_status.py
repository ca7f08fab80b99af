"""The status machine: keep the status or move exactly one step forward; DELIVERED is terminal."""

from __future__ import annotations

import itertools

import pytest

from engine.domain.errors import Conflict, InvalidInput, TrackingError
from engine.domain.status import ORDER, Status, check_transition, next_status, parse_status

A, P, T, D = Status.ASSIGNED, Status.PICKED_UP, Status.IN_TRANSIT, Status.DELIVERED

# Written out by hand from API.md, not derived from the code under test: every
# (current, requested) pair that is accepted, and the status it leads to.
ACCEPTED: dict[tuple[Status, Status | None], Status] = {
    (A, None): A,
    (A, A): A,
    (A, P): P,
    (P, None): P,
    (P, P): P,
    (P, T): T,
    (T, None): T,
    (T, T): T,
    (T, D): D,
}
NEXT = {A: "PICKED_UP", P: "IN_TRANSIT", T: "DELIVERED"}
ALL_PAIRS = list(itertools.product(list(Status), [None, *Status]))


def test_the_four_statuses_in_order() -> None:
    assert [s.value for s in ORDER] == ["ASSIGNED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"]
    assert set(ORDER) == set(Status)


def test_next_status() -> None:
    assert [next_status(s) for s in ORDER] == [P, T, D, None]


def test_the_table_covers_twenty_pairs() -> None:
    assert len(ALL_PAIRS) == 20
    assert len(ACCEPTED) == 9


@pytest.mark.parametrize(("current", "requested"), ALL_PAIRS)
def test_full_transition_table(current: Status, requested: Status | None) -> None:
    expected = ACCEPTED.get((current, requested))
    if expected is not None:
        assert check_transition(current, requested) is expected
        return
    with pytest.raises(Conflict) as info:
        check_transition(current, requested)
    detail = info.value.detail
    assert isinstance(info.value, TrackingError)
    assert info.value.code == "conflict"
    if current is D:
        assert "DELIVERED" in detail
    else:
        # The message names the allowed next status and what was asked for.
        assert NEXT[current] in detail
        assert requested is not None
        assert requested.value in detail


@pytest.mark.parametrize("requested", [None, *Status])
def test_delivered_is_terminal(requested: Status | None) -> None:
    with pytest.raises(Conflict):
        check_transition(D, requested)


@pytest.mark.parametrize(
    ("current", "requested"),
    [(P, A), (T, A), (T, P), (A, T), (A, D), (P, D)],
)
def test_backwards_and_skips_are_conflicts(current: Status, requested: Status) -> None:
    with pytest.raises(Conflict, match=f"allowed next status is {NEXT[current]}"):
        check_transition(current, requested)


def test_walking_the_whole_chain() -> None:
    s = A
    for requested in (None, A, P, P, None, T, T, D):
        s = check_transition(s, requested)
    assert s is D


# -- parsing a client's status field ---------------------------------------------------------


def test_parse_absent_status_is_none() -> None:
    assert parse_status(None) is None


@pytest.mark.parametrize("status", list(Status))
def test_parse_each_status(status: Status) -> None:
    assert parse_status(status.value) is status
    assert parse_status(status) is status


@pytest.mark.parametrize(
    "value",
    ["", "delivered", "Picked_Up", "SHIPPED", " ASSIGNED", 1, 0, True, 3.5, ["ASSIGNED"], {}],
)
def test_parse_refuses_anything_else_listing_the_valid_values(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_status(value)
    for s in ORDER:
        assert s.value in info.value.detail


def test_parse_error_quotes_long_values_briefly() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_status("X" * 10_000)
    assert len(info.value.detail) < 200
