"""The error hierarchy, its trip across process boundaries, and the one HTTP/WebSocket table."""

from __future__ import annotations

import inspect
import pickle

import pytest

from api import errors as api_errors
from engine.domain import errors as e
from engine.store.sqlite import StoreError

DEFINED = sorted(
    (
        cls
        for _, cls in inspect.getmembers(e, inspect.isclass)
        if issubclass(cls, e.TrackingError) and cls.__module__ == e.__name__
    ),
    key=lambda c: c.__name__,
)
SUBCLASSES = [c for c in DEFINED if c is not e.TrackingError]

# From API.md: HTTP status, and the WebSocket close code (None: an error message, socket open).
EXPECTED = {
    e.InvalidInput: (422, None),
    e.Unauthenticated: (401, 1008),
    e.Forbidden: (403, None),
    e.NotFound: (404, 1008),
    e.Expired: (410, 1008),
    e.Conflict: (409, None),
    e.TooLarge: (413, 1009),  # beyond API.md: what the service takes is bounded
    e.Unavailable: (503, 1013),
    e.RateLimited: (429, 1013),  # beyond API.md: limits, with Retry-After (README "Limits")
}


def test_the_hierarchy_is_what_the_table_expects() -> None:
    assert set(SUBCLASSES) == set(EXPECTED)


def test_codes_are_distinct() -> None:
    codes = [c.code for c in DEFINED]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("cls", DEFINED, ids=lambda c: c.__name__)
def test_wire_round_trip(cls: type[e.TrackingError]) -> None:
    err = cls("something a person can act on: ünïcødé")
    code, detail = err.to_wire()
    assert (code, detail) == (cls.code, "something a person can act on: ünïcødé")
    back = e.from_wire(code, detail)
    assert type(back) is cls
    assert back.detail == detail
    assert str(back) == detail
    assert back.to_wire() == (code, detail)


@pytest.mark.parametrize("cls", DEFINED, ids=lambda c: c.__name__)
def test_errors_are_plain_data_across_pickle(cls: type[e.TrackingError]) -> None:
    # Ray pickles exceptions that escape an actor; the wire tuple is what we rely on, but a
    # pickled error must not fail to rebuild either.
    back = pickle.loads(pickle.dumps(cls("detail")))
    assert type(back) is cls
    assert back.detail == "detail"


def test_expired_has_the_contract_message_by_default() -> None:
    assert e.Expired().detail == "Tracking session expired"
    assert e.from_wire("expired", "Tracking session expired").detail == "Tracking session expired"


def test_unknown_codes_come_back_as_the_root_error_keeping_the_detail() -> None:
    back = e.from_wire("no-such-code", "what happened")
    assert type(back) is e.TrackingError
    assert back.detail == "what happened"


def test_a_store_error_survives_as_a_tracking_error() -> None:
    err = StoreError("data directory /x cannot be used")
    back = e.from_wire(*err.to_wire())
    assert isinstance(back, e.TrackingError)
    assert back.detail == err.detail


# -- api/errors.py --------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "codes"), list(EXPECTED.items()), ids=lambda x: str(x))
def test_the_api_table(cls: type[e.TrackingError], codes: tuple[int, int | None]) -> None:
    err = cls("x") if cls is not e.Expired else cls()
    assert (api_errors.http_status(err), api_errors.close_code(err)) == codes
    assert api_errors.TABLE[cls] == codes


def test_errors_outside_the_table_are_500_and_keep_the_socket_open() -> None:
    for err in (e.TrackingError("bug"), StoreError("disk")):
        assert api_errors.http_status(err) == 500
        assert api_errors.close_code(err) is None


def test_subclasses_inherit_their_parents_row() -> None:
    class DuplicateOrder(e.Conflict):
        pass

    class GoneForGood(e.Expired):
        pass

    assert api_errors.http_status(DuplicateOrder("x")) == 409
    assert api_errors.close_code(GoneForGood()) == 1008
    assert api_errors.http_status(GoneForGood()) == 410


def test_close_codes_are_the_websocket_ones() -> None:
    assert api_errors.POLICY_VIOLATION == 1008
    assert api_errors.TRY_AGAIN_LATER == 1013


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([], "invalid request"),
        ([{"type": "missing", "loc": ("body", "lat"), "msg": "Field required"}], "lat is required"),
        ([{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error"}],
         "request body is not valid JSON"),
        ([{"type": "less_than_equal", "loc": ("body", "lng"),
           "msg": "Input should be less than or equal to 180"}],
         "lng: Input should be less than or equal to 180"),
        ([{"type": "missing", "loc": ("body",), "msg": "Field required"}], "body is required"),
        ([{"type": "float_type", "loc": ("body", "location", "lat"), "msg": "bad"},
          {"type": "missing", "loc": ("query", "token"), "msg": "Field required"}],
         "location.lat: bad; token is required"),
    ],
)  # fmt: skip
def test_describe_validation(errors: list[dict[str, object]], expected: str) -> None:
    assert api_errors.describe_validation(errors) == expected


def test_describe_validation_keeps_it_short() -> None:
    errs = [{"type": "missing", "loc": ("body", f"f{i}"), "msg": "x"} for i in range(50)]
    assert api_errors.describe_validation(errs).count("is required") == 5
