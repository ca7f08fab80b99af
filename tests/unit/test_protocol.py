"""The wire module: what crosses a process boundary comes back equal, and every public message
the builders produce is exactly its typed envelope (which `/asyncapi.json` is generated from)."""

from __future__ import annotations

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import asyncapi
from engine import protocol as p
from engine.domain.stats import SessionCounts
from engine.domain.status import Status
from engine.domain.view import Location, Point, View

VIEW = View(
    "TRK-abc", "ORD-1", "RIDER-1", Status.IN_TRANSIT, Location(5.6, -0.18, 1_700_000_000),
    Point(5.61, -0.19), 180, 1_700_000_000, 4, 1_699_999_000,
)
VIEW_JSON = p.encode_view(VIEW)
DOC = asyncapi.build("test")


def validates(message: bytes, channel: str = "watch") -> None:
    """The message is one of the channel's messages in the AsyncAPI document."""
    obj = msgspec.json.decode(message)
    names = DOC["channels"][channel]["messages"]
    refs = [DOC["components"]["messages"][r["$ref"].rsplit("/", 1)[1]]["payload"]
            for r in names.values()]  # fmt: skip
    schema = {"oneOf": refs, "components": DOC["components"]}
    jsonschema.validate(obj, schema, cls=jsonschema.Draft202012Validator)


def test_location_update_is_its_envelope() -> None:
    frame = p.location_update(VIEW_JSON)
    assert msgspec.json.decode(frame, type=p.LocationUpdate) == p.LocationUpdate(VIEW)
    validates(frame)


@pytest.mark.parametrize("previous", [Status.ASSIGNED, Status.PICKED_UP, Status.IN_TRANSIT])
def test_status_change_adds_previous_status(previous: Status) -> None:
    frame = p.status_change(VIEW_JSON, previous)
    msg = msgspec.json.decode(frame, type=p.StatusChange)
    assert msg.data.previous_status is previous
    assert msgspec.structs.asdict(msg.data) == {
        **msgspec.structs.asdict(VIEW), "previous_status": previous
    }
    validates(frame)


def test_initial_state_error_pong() -> None:
    assert msgspec.json.decode(p.initial_state(VIEW_JSON), type=p.InitialState).data == VIEW
    assert msgspec.json.decode(p.error("nope"), type=p.ErrorMessage).message == "nope"
    assert msgspec.json.decode(p.PONG, type=p.Pong) == p.Pong()
    assert msgspec.json.decode(p.EXPIRED_MESSAGE, type=p.ErrorMessage).message == (
        "Tracking session expired"
    )
    for frame in (p.initial_state(VIEW_JSON), p.error("x"), p.PONG, p.EXPIRED_MESSAGE):
        validates(frame)


def test_ops_snapshot_validates_on_the_ops_channel() -> None:
    stats = p.PlatformStats(1, 2, {"ASSIGNED": 1}, {"last_5_min": 1}, 1, {"pending": 0})
    frame = p.ops_snapshot([p.OpsDot("TRK-1", Status.ASSIGNED, None, None, None)], stats)
    validates(frame, "ops")
    with pytest.raises(jsonschema.ValidationError):
        validates(frame, "watch")


def test_an_undocumented_field_fails_validation() -> None:
    frame = p.location_update(VIEW_JSON[:-1] + b',"surprise":1}')
    with pytest.raises(jsonschema.ValidationError):
        validates(frame)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(frame, type=p.LocationUpdate)


def test_a_batch_survives_the_wire() -> None:
    commands: list[p.AnyCommand] = [
        p.Start("ORD-1", "RIDER-1", 5.6, -0.18, "+233 20"),
        p.Update("TRK-1", 5.6, -0.18, Status.PICKED_UP, None),
        p.Get("TRK-1"), p.Watch("TRK-1", "gw"), p.Unwatch("TRK-1", "gw"),
        p.RiderLookup("RIDER-1"), p.StatsQuery(0), p.StatsQuery(3),
        p.HistoryQuery("TRK-1", 0, 10), p.Ping(False), p.Ping(True),
    ]
    request = p.CallRequest(commands, p.Channel("gw", 7, 3))
    assert p.unpack_request(p.pack(request)) == request
    event = p.Event("TRK-1", p.EventKind.STATUS, 3, b"{}", 1.5)
    reply = p.CallReply(
        [p.Ok(b"{}"), p.Ok(None), p.Ok(3), p.Ok(p.Watched(2, b"{}")), p.Err("conflict", "no"),
         p.Ok(p.ShardStats(SessionCounts(1), {"gw": 3}, 1,
                           [p.OpsDot("TRK-1", Status.ASSIGNED, 5.6, -0.18, 120)]))],
        p.Feed("epoch", 4, [event]),
    )
    assert p.unpack_call_reply(p.pack(reply)) == reply


@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=False,
       allow_infinity=False))  # fmt: skip
def test_client_reports_are_range_checked(lat: float, lng: float) -> None:
    raw = msgspec.json.encode({"type": "location_update", "location": {"lat": lat, "lng": lng}})
    if -90 <= lat <= 90 and -180 <= lng <= 180:
        msg = p.read_client_message(raw)
        assert isinstance(msg, p.ReportLocation)
        assert (msg.location.lat, msg.location.lng) == (lat, lng)
    else:
        with pytest.raises(p.BadMessage) as e:
            p.read_client_message(raw)
        assert e.value.report
        assert str(e.value).startswith("invalid update: location.l")


@pytest.mark.parametrize(("raw", "says"), [
    (b"{nope", "not valid JSON"),
    (b"[1, 2]", "JSON object with a 'type'"),
    (b'{"type": "dance"}', "unknown message type 'dance'"),
    (b'{"type": "location_update", "location": {"lat": true, "lng": 0}}', "location.lat"),
    (b'{"type": "location_update", "location": {"lat": 1, "lng": 0, "status": "LOST"}}',
     "location.status"),
    (b'{"type": "location_update"}', "location"),
])
def test_bad_client_messages_say_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(p.BadMessage, match=says):
        p.read_client_message(raw)
