"""The wire, defined once: what API processes and shards say to each other, and the public
WebSocket messages of API.md.

Commands, replies and events are frozen msgspec structs, dispatched with `match`. A batch crosses
a process boundary (a Ray call) as one msgpack payload. `python -m loadtests.wire_bench` on this
2-core box, 2,000 updates a batch, encode plus decode per command: 0.33 us as shipped, 0.61 us for
the untyped tuples they replaced (pickled, as Ray ships arguments), 1.9 us for the same structs
pickled and 2.5 us for NamedTuples; events cost 0.32 us shipped against 0.28 us as tuples.

The public messages are typed structs too: they generate `/asyncapi.json`, and the builders
below produce exactly their JSON (tests decode every built frame strictly as its struct). The
builders splice the view's JSON, which the shard encoded once, instead of encoding it again.
"""

from __future__ import annotations

import enum
from typing import Annotated, Generic, TypeVar

import msgspec

from engine.domain.stats import SessionCounts
from engine.domain.status import Status
from engine.domain.view import HistoryItem, View

R = TypeVar("R")

ID_MAX = 128
"""The longest id (tracking, order, rider) the service accepts, anywhere."""

# -- replies --------------------------------------------------------------------------------------


class Watched(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A session's current view for a new watcher, and the seq it shows."""

    seq: int
    view: bytes


class RiderHit(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A rider's newest live session on one shard: `started_at` is precise (the view's is whole
    seconds, too coarse to compare sessions across shards)."""

    started_at: float
    tracking_id: str
    view: bytes


class OpsDot(msgspec.Struct, frozen=True, array_like=True):
    """One live session on the ops map: [tracking_id, status, lat, lng, eta_seconds]."""

    tracking_id: str
    status: Status
    lat: float | None
    lng: float | None
    eta_seconds: int | None


class ShardStats(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """One shard's statistics, and up to the asked number of its live sessions' positions."""

    counts: SessionCounts
    connections_by_gateway: dict[str, int]
    watched_sessions: int
    dots: list[OpsDot]


class HistoryPage(msgspec.Struct, frozen=True, array_like=True, tag=True):
    items: list[HistoryItem]


class Resumed(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A start repeated by the rider of the order's live session: that session's view (a new
    start answers the new session's view as bytes)."""

    view: bytes


Reply = bytes | int | None | Watched | RiderHit | ShardStats | HistoryPage | Resumed


class Ok(msgspec.Struct, frozen=True, array_like=True, tag=True):
    value: Reply


class Err(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A refused command: `code` names the error class (`engine.domain.errors`)."""

    code: str
    detail: str


Result = Ok | Err

# -- commands -------------------------------------------------------------------------------------


class Command(msgspec.Struct, Generic[R], frozen=True, array_like=True, tag=True):
    """A command for a shard; `R` is the type of the value its `Ok` carries."""


class Start(Command[bytes | Resumed], frozen=True, array_like=True, tag=True):
    order_id: str
    rider_id: str
    dropoff_lat: float
    dropoff_lng: float
    phone: str | None


class Update(Command[bytes], frozen=True, array_like=True, tag=True):
    """A location, maybe with the next status; `rider_id` acts (None: a superadmin)."""

    tracking_id: str
    lat: float
    lng: float
    status: Status | None
    rider_id: str | None


class Get(Command[bytes], frozen=True, array_like=True, tag=True):
    tracking_id: str


class Watch(Command[Watched], frozen=True, array_like=True, tag=True):
    tracking_id: str
    gateway: str


class Unwatch(Command[None], frozen=True, array_like=True, tag=True):
    tracking_id: str
    gateway: str


class RiderLookup(Command[RiderHit | None], frozen=True, array_like=True, tag=True):
    rider_id: str


class StatsQuery(Command[ShardStats], frozen=True, array_like=True, tag=True):
    """Statistics, with up to `dots` live sessions' positions (the ops map; 0 for none)."""

    dots: int


class HistoryQuery(Command[HistoryPage], frozen=True, array_like=True, tag=True):
    """Accepted changes after `since_seq`; 404 / 410 as for the view."""

    tracking_id: str
    since_seq: int
    limit: int


class Ping(Command[int], frozen=True, array_like=True, tag=True):
    """Answers the number of sessions the shard holds; with `writable`, Unavailable (with the
    reason) while its store refuses writes."""

    writable: bool


AnyCommand = (
    Start | Update | Get | Watch | Unwatch | RiderLookup | StatsQuery | HistoryQuery | Ping
)

# -- events and the gateways' channel -------------------------------------------------------------


class EventKind(enum.IntEnum):
    LOCATION = 1  # a location_update message
    STATUS = 2  # a status_change message (after its location_update)
    EXPIRED = 3  # the session expired: watchers get the error, then a 1008 close


class Event(msgspec.Struct, frozen=True, array_like=True):
    """A message for the watchers of one session, encoded once by the shard; `at` (Unix
    seconds) is when the shard accepted it, for acceptance-to-fan-out latency."""

    tracking_id: str
    kind: EventKind
    seq: int
    frame: bytes
    at: float


class Feed(msgspec.Struct, frozen=True, array_like=True):
    """What a shard owes a gateway: its incarnation, the cursor of the first event, events."""

    epoch: str
    base: int
    events: list[Event]


class Channel(msgspec.Struct, frozen=True, array_like=True):
    """A gateway's position on a shard, sent with its calls and polls."""

    gateway: str
    ack: int
    connections: int


class CallRequest(msgspec.Struct, frozen=True, array_like=True, tag=True):
    commands: list[AnyCommand]
    channel: Channel | None


class CallReply(msgspec.Struct, frozen=True, array_like=True):
    results: list[Result]
    feed: Feed | None


class PollRequest(msgspec.Struct, frozen=True, array_like=True, tag=True):
    channel: Channel
    timeout_s: float


class Hello(msgspec.Struct, frozen=True, array_like=True):
    """The first frame on a connection to a shard: the shard's own token, proving the caller
    learnt its address from the cluster (`engine.runtime.channel`)."""

    token: str


class Welcome(msgspec.Struct, frozen=True, array_like=True):
    """The shard's answer to a good Hello: which shard and incarnation this is."""

    index: int
    epoch: str


Request = CallRequest | PollRequest

_msgpack = msgspec.msgpack.Encoder()
_request = msgspec.msgpack.Decoder(Request)
_call_reply = msgspec.msgpack.Decoder(CallReply)
_feed = msgspec.msgpack.Decoder(Feed)
_hello = msgspec.msgpack.Decoder(Hello)
_welcome = msgspec.msgpack.Decoder(Welcome)


def pack(value: CallRequest | CallReply | PollRequest | Feed | Hello | Welcome) -> bytes:
    """One wire message as msgpack (what crosses a process boundary)."""
    return _msgpack.encode(value)


def unpack_request(data: bytes) -> Request:
    return _request.decode(data)


def unpack_call_reply(data: bytes) -> CallReply:
    return _call_reply.decode(data)


def unpack_feed(data: bytes) -> Feed:
    return _feed.decode(data)


def unpack_hello(data: bytes) -> Hello:
    return _hello.decode(data)


def unpack_welcome(data: bytes) -> Welcome:
    return _welcome.decode(data)


# -- public WebSocket messages (API.md) -----------------------------------------------------------

Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90, description="degrees, [-90, 90]")]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180, description="degrees, [-180, 180]")]


class ServerMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """A message the server sends: a JSON object told apart by its `type`."""


class StatusChangeView(View, frozen=True):
    previous_status: Status


class InitialState(ServerMessage, frozen=True, tag="initial_state"):
    """Sent first on every watch socket."""

    data: View


class LocationUpdate(ServerMessage, frozen=True, tag="location_update"):
    """After every accepted update of the session, from HTTP or WebSocket."""

    data: View


class StatusChange(ServerMessage, frozen=True, tag="status_change"):
    """After an update that changed the status, right after its location_update."""

    data: StatusChangeView


class ErrorMessage(ServerMessage, frozen=True, tag="error"):
    """A refused message (the socket stays open), or the reason before a close."""

    message: str


class Pong(ServerMessage, frozen=True, tag="pong"):
    """The reply to a ping."""


class PlatformStats(msgspec.Struct, forbid_unknown_fields=True):
    """`GET /stats/tracking`: API.md's statistics plus `api_processes` and `outbox`."""

    total_active_sessions: int
    total_websocket_connections: int
    status_distribution: dict[str, int]
    sessions_by_recency: dict[str, int]
    api_processes: int
    outbox: dict[str, int] = msgspec.field(default_factory=dict)


class OpsSnapshotData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sessions: list[OpsDot]
    stats: PlatformStats


class OpsSnapshot(ServerMessage, frozen=True, tag="ops_snapshot"):
    """On `/ws/ops`, about once a second: every live session's position and the statistics."""

    data: OpsSnapshotData


class LocationReport(msgspec.Struct, frozen=True):
    lat: Latitude
    lng: Longitude
    status: Status | None = None


class ReportLocation(msgspec.Struct, frozen=True, tag_field="type", tag="location_update"):
    """A rider's report (the session's rider or a superadmin); the same rules as HTTP."""

    location: LocationReport


class ClientPing(msgspec.Struct, frozen=True, tag_field="type", tag="ping"):
    """Keep-alive; answered with a pong."""


WatchMessage = InitialState | LocationUpdate | StatusChange | ErrorMessage | Pong
"""What `/ws/tracking/{id}` sends."""
OpsMessage = OpsSnapshot | ErrorMessage | Pong
"""What `/ws/ops` sends."""
ClientMessage = ReportLocation | ClientPing
"""What a client may send on `/ws/tracking/{id}`."""

_json = msgspec.json.Encoder()
_LOCATION_UPDATE = b'{"type":"location_update","data":'
_STATUS_CHANGE = b'{"type":"status_change","data":'
_INITIAL_STATE = b'{"type":"initial_state","data":'


def encode_view(view: View) -> bytes:
    return _json.encode(view)


def location_update(view: bytes) -> bytes:
    """The `location_update` message around a view's JSON."""
    return _LOCATION_UPDATE + view + b"}"


def view_of_location_update(message: bytes) -> bytes:
    """The view's JSON inside a message built by `location_update`."""
    return message[len(_LOCATION_UPDATE) : -1]


def status_change(view: bytes, previous: Status) -> bytes:
    """The `status_change` message: the view's JSON with `previous_status` added."""
    return b'%b%b,"previous_status":"%b"}}' % (_STATUS_CHANGE, view[:-1], previous.value.encode())


def initial_state(view: bytes) -> bytes:
    return _INITIAL_STATE + view + b"}"


def error(message: str) -> bytes:
    return _json.encode(ErrorMessage(message))


def ops_snapshot(sessions: list[OpsDot], stats: PlatformStats) -> bytes:
    return _json.encode(OpsSnapshot(OpsSnapshotData(sessions, stats)))


PONG = _json.encode(Pong())
SESSION_EXPIRED = "Tracking session expired"
EXPIRED_MESSAGE = error(SESSION_EXPIRED)

# -- reading what clients send --------------------------------------------------------------------


class BadMessage(ValueError):
    """A client message that cannot be taken; `str()` is the text of the `error` reply.
    `report` tells a location report that failed validation from a message not understood."""

    def __init__(self, text: str, report: bool = False) -> None:
        super().__init__(text)
        self.report = report


_client = msgspec.json.Decoder(ClientMessage)
_KNOWN = ("location_update", "ping")


def read_client_message(raw: bytes | str) -> ReportLocation | ClientPing:
    """Parse and validate a client message in one pass; BadMessage says what is wrong."""
    try:
        return _client.decode(raw)
    except msgspec.DecodeError as e:
        detail = str(e)
    # The slow path: find the most useful thing to say.
    try:
        loose = msgspec.json.decode(raw, type=object)
    except msgspec.DecodeError:
        raise BadMessage("message is not valid JSON") from None
    if not isinstance(loose, dict) or "type" not in loose:
        raise BadMessage("message must be a JSON object with a 'type'") from None
    kind: object = loose["type"]
    if kind not in _KNOWN:
        raise BadMessage(
            f"unknown message type {str(kind)[:40]!r}; expected location_update or ping"
        ) from None
    raise BadMessage(f"invalid update: {_readable(detail)}", report=True) from None


def _readable(detail: str) -> str:
    """msgspec's 'Expected `float`, got `str` - at `$.location.lat`' as 'location.lat: ...'."""
    text, _, where = detail.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    text = text.replace("`", "")
    return f"{field}: {text}" if field else text


_view = msgspec.json.Decoder(View)


def decode_view(data: bytes) -> View:
    """A view from the JSON the shard encoded."""
    return _view.decode(data)
