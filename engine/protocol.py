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

from engine.domain.fixes import Reason
from engine.domain.proximity import Milestone
from engine.domain.stats import SessionCounts
from engine.domain.status import Status
from engine.domain.view import HistoryItem, View

R = TypeVar("R")

ID_MAX = 128
"""The longest id (tracking, order, rider) the service accepts, anywhere."""

# -- replies --------------------------------------------------------------------------------------


class Watched(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A session's current view for a new watcher, and the seq it shows. Resuming (a Watch with
    `since_seq`): `recovered` says whether `missed` holds every event after that seq, in order,
    up to `seq` (False: too old, or unknown; the watcher starts afresh from the view)."""

    seq: int
    view: bytes
    missed: list[Event] = msgspec.field(default_factory=list)
    recovered: bool | None = None


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
    """One shard's statistics, and up to the asked number of its live sessions' positions.
    Fix and milestone counts are since the shard started; presence is what the gateways last
    reported: sessions with a watching socket, those sockets, the most on one session."""

    counts: SessionCounts
    connections_by_gateway: dict[str, int]
    watched_sessions: int
    dots: list[OpsDot]
    filtered: dict[str, int] = msgspec.field(default_factory=dict)
    late_fixes: int = 0
    milestones: dict[str, int] = msgspec.field(default_factory=dict)
    presence: tuple[int, int, int] = (0, 0, 0)


class FixResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What became of one fix of a batch: kept (maybe `late`: history only), or dropped with the
    `filtered` reason; `seq` is the change it made (a dropped fix's status still counts)."""

    kept: bool
    seq: int | None = None
    filtered: Reason | None = None
    late: bool = False


class BatchAnswer(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A batch's outcome: the view after it (JSON) and each fix's result, in the batch's order."""

    view: bytes
    fixes: list[FixResult]


class HistoryPage(msgspec.Struct, frozen=True, array_like=True, tag=True):
    items: list[HistoryItem]


class Resumed(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """A start repeated by the rider of the order's live session: that session's view (a new
    start answers the new session's view as bytes)."""

    view: bytes


Reply = (
    bytes | int | None | Watched | RiderHit | ShardStats | HistoryPage | Resumed
    | BatchAnswer
)


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
    """A location, maybe with the next status; `rider_id` acts (None: a superadmin).
    `recorded_at` is the fix's device time (Unix seconds), `accuracy_m` its accuracy."""

    tracking_id: str
    lat: float
    lng: float
    status: Status | None
    rider_id: str | None
    recorded_at: float | None = None
    accuracy_m: float | None = None


class BatchFix(msgspec.Struct, frozen=True, array_like=True):
    lat: float
    lng: float
    status: Status | None
    recorded_at: float | None
    accuracy_m: float | None


class UpdateBatch(Command[BatchAnswer], frozen=True, array_like=True, tag=True):
    """Fixes a phone buffered, oldest first, applied in order as one command: all refused (403,
    404, 409 naming the fix, 410) or each judged; see BatchAnswer."""

    tracking_id: str
    fixes: list[BatchFix]
    rider_id: str | None


class Get(Command[bytes], frozen=True, array_like=True, tag=True):
    """The view; with `presence`, carrying `watchers`."""

    tracking_id: str
    presence: bool = False


class Watch(Command[Watched], frozen=True, array_like=True, tag=True):
    """Watch from `gateway`; with `since_seq`, also the events after that seq (Watched)."""

    tracking_id: str
    gateway: str
    since_seq: int | None = None


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
    | UpdateBatch
)

# -- events and the gateways' channel -------------------------------------------------------------


class EventKind(enum.IntEnum):
    LOCATION = 1  # a location_update message
    STATUS = 2  # a status_change message (after its location_update)
    EXPIRED = 3  # the session expired: watchers get the error, then a 1008 close
    MILESTONE = 4  # rider_approaching / rider_arrived (after the location_update that fired it)


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
    """A gateway's position on a shard, sent with its calls and polls; `presence`: how many of
    its sockets now watch each of the shard's sessions whose count changed since it last said."""

    gateway: str
    ack: int
    connections: int
    presence: dict[str, int] | None = None


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
RecordedAt = Annotated[float, msgspec.Meta(
    gt=0, le=1e11, description="when the phone took the fix: Unix seconds (not milliseconds)"
)]
AccuracyM = Annotated[float, msgspec.Meta(
    ge=0, le=1e6, description="the fix's accuracy radius in metres"
)]


class ServerMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """A message the server sends: a JSON object told apart by its `type`."""


class StatusChangeView(View, frozen=True, kw_only=True):
    previous_status: Status


class InitialState(ServerMessage, frozen=True, tag="initial_state", omit_defaults=True):
    """Sent first on every watch socket. Resuming (`?since_seq=N`): `recovered` true, then what
    the socket missed after N (in order, as it was sent live), then live messages; false when N
    is too old to replay (start afresh from this view)."""

    data: View
    recovered: bool | None = None


class LocationUpdate(ServerMessage, frozen=True, tag="location_update"):
    """After every accepted update of the session, from HTTP or WebSocket."""

    data: View


class StatusChange(ServerMessage, frozen=True, tag="status_change"):
    """After an update that changed the status, right after its location_update."""

    data: StatusChangeView


class RiderApproaching(ServerMessage, frozen=True, tag="rider_approaching"):
    """Once per delivery: the rider is about to arrive (ETA or distance under the thresholds),
    right after the location_update that showed it."""

    data: View


class RiderArrived(ServerMessage, frozen=True, tag="rider_arrived"):
    """Once per delivery: the rider is within the arrival radius of the dropoff."""

    data: View


class FilteredView(View, frozen=True, kw_only=True):
    """An update's answer when its fix was dropped: the view (changed only by a status the
    fix carried) and why."""

    filtered: Reason


class FixFiltered(ServerMessage, frozen=True, tag="fix_filtered"):
    """To the reporting socket only: its fix was dropped (never broadcast), and why. `fix`
    echoes the report, so a client can tell which of its fixes this answers."""

    data: FilteredView
    fix: LocationReport


class LocationBatchResultData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    view: View
    fixes: list[FixResult]


class LocationBatchResult(ServerMessage, frozen=True, tag="location_batch_result"):
    """The reply to a `location_batch`, to its sender only: each fix's result and the view."""

    data: LocationBatchResultData


class ErrorMessage(ServerMessage, frozen=True, tag="error"):
    """A refused message (the socket stays open), or the reason before a close."""

    message: str


class Pong(ServerMessage, frozen=True, tag="pong"):
    """The reply to a ping."""


class Presence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Sockets watching sessions, counted in every API process."""

    watched_sessions: int = 0
    watching_sockets: int = 0
    max_per_session: int = 0


class FixCounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fixes dropped (by reason) and kept late, and milestones fired, since the shards started."""

    filtered: dict[str, int] = msgspec.field(default_factory=dict)
    late: int = 0
    milestones: dict[str, int] = msgspec.field(default_factory=dict)


class PlatformStats(msgspec.Struct, forbid_unknown_fields=True):
    """`GET /stats/tracking`: API.md's statistics plus `api_processes`, `outbox`, `presence`
    and `fixes`."""

    total_active_sessions: int
    total_websocket_connections: int
    status_distribution: dict[str, int]
    sessions_by_recency: dict[str, int]
    api_processes: int
    outbox: dict[str, int] = msgspec.field(default_factory=dict)
    presence: Presence = msgspec.field(default_factory=Presence)
    fixes: FixCounts = msgspec.field(default_factory=FixCounts)


class OpsSnapshotData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sessions: list[OpsDot]
    stats: PlatformStats


class OpsSnapshot(ServerMessage, frozen=True, tag="ops_snapshot"):
    """On `/ws/ops`, about once a second: every live session's position and the statistics."""

    data: OpsSnapshotData


class LocationReport(msgspec.Struct, frozen=True, omit_defaults=True):
    lat: Latitude
    lng: Longitude
    status: Status | None = None
    recorded_at: RecordedAt | None = None
    accuracy_m: AccuracyM | None = None


class BatchedFix(msgspec.Struct, frozen=True):
    """One fix of a batch: as a report, but its device time is required."""

    lat: Latitude
    lng: Longitude
    recorded_at: RecordedAt
    status: Status | None = None
    accuracy_m: AccuracyM | None = None


class LocationBatch(msgspec.Struct, frozen=True):
    """`POST /tracking/update/{id}/batch`: fixes a phone buffered, oldest first."""

    fixes: list[BatchedFix]


class ReportLocation(msgspec.Struct, frozen=True, tag_field="type", tag="location_update"):
    """A rider's report (the session's rider or a superadmin); the same rules as HTTP."""

    location: LocationReport


class ReportBatch(msgspec.Struct, frozen=True, tag_field="type", tag="location_batch"):
    """Buffered fixes, oldest first (the rider or a superadmin); answered with a
    location_batch_result to this socket, and each accepted change reaches every watcher."""

    fixes: list[BatchedFix]


class ClientPing(msgspec.Struct, frozen=True, tag_field="type", tag="ping"):
    """Keep-alive; answered with a pong."""


WatchMessage = (
    InitialState | LocationUpdate | StatusChange | RiderApproaching | RiderArrived
    | FixFiltered | LocationBatchResult | ErrorMessage | Pong
)
"""What `/ws/tracking/{id}` sends."""
OpsMessage = OpsSnapshot | ErrorMessage | Pong
"""What `/ws/ops` sends."""
ClientMessage = ReportLocation | ReportBatch | ClientPing
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


def initial_state(view: bytes, recovered: bool | None = None) -> bytes:
    if recovered is None:
        return _INITIAL_STATE + view + b"}"
    return b"%b%b,\"recovered\":%b}" % (_INITIAL_STATE, view, b"true" if recovered else b"false")


_MILESTONE = {m: b'{"type":"rider_%b","data":' % m.value.encode() for m in Milestone}


def milestone(view: bytes, which: Milestone) -> bytes:
    """The `rider_approaching` / `rider_arrived` message around a view's JSON."""
    return _MILESTONE[which] + view + b"}"


def filtered(view: bytes, reason: Reason) -> bytes:
    """An update's answer when its fix was dropped: the view's JSON with `filtered` added."""
    return b'%b%b%b"}' % (view[:-1], FILTERED_MARK, reason.value.encode())


FILTERED_MARK = b',"filtered":"'
"""In an update's answer: its fix was dropped (see `filtered`)."""


def fix_filtered(answer: bytes, report: LocationReport) -> bytes:
    """The fix_filtered message for a dropped fix's answer (the view with `filtered`)."""
    return b'{"type":"fix_filtered","data":%b,"fix":%b}' % (answer, _json.encode(report))


def batch_answer(answer: BatchAnswer) -> bytes:
    """`{"view": ..., "fixes": [...]}`: the batch endpoint's answer (the view spliced in)."""
    return b'{"view":%b,"fixes":%b}' % (answer.view, _json.encode(answer.fixes))


def batch_result(answer: BatchAnswer) -> bytes:
    """The location_batch_result message for a socket's batch."""
    return b'{"type":"location_batch_result","data":%b}' % batch_answer(answer)


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
_KNOWN = ("location_update", "location_batch", "ping")


def read_client_message(raw: bytes | str) -> ReportLocation | ReportBatch | ClientPing:
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
            f"unknown message type {str(kind)[:40]!r}; expected location_update, "
            "location_batch or ping"
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
