"""`/asyncapi.json`: the WebSocket counterpart of `/openapi.json`, generated from the typed
envelopes of `engine.protocol` (the same structs the server's messages are built and tested
against), so app teams can read and generate the message types.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine import protocol as p

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{name}"

# (message name, struct, summary) per channel; names are what `type` carries on the wire.
_Message = tuple[str, type[msgspec.Struct], str]
_WATCH_SENDS: list[_Message] = [
    ("initial_state", p.InitialState, "The session's view, sent first on every watch socket."),
    ("location_update", p.LocationUpdate, "After every accepted update, from HTTP or WebSocket."),
    ("status_change", p.StatusChange,
     "After an update that changed the status, right after its location_update."),
    ("rider_approaching", p.RiderApproaching,
     "Once per delivery: the rider is about to arrive, after the location_update showing it."),
    ("rider_arrived", p.RiderArrived,
     "Once per delivery: the rider is within the arrival radius of the dropoff."),
    ("fix_filtered", p.FixFiltered,
     "To the reporting socket only: its fix was dropped (never broadcast), and why."),
    ("location_batch_result", p.LocationBatchResult,
     "To the reporting socket only: what became of each fix of its location_batch."),
    ("error", p.ErrorMessage,
     "A refused message (the socket stays open), or why the socket is closed next (1008)."),
    ("pong", p.Pong, "The reply to a ping."),
]
_WATCH_RECEIVES: list[_Message] = [
    ("report_location", p.ReportLocation,
     "A rider's report: the session's rider or a superadmin (token in the URL)."),
    ("location_batch", p.ReportBatch,
     "Fixes a rider's phone buffered while offline, oldest first; the same rules as HTTP."),
    ("ping", p.ClientPing, "Keep-alive."),
]
_OPS_SENDS: list[_Message] = [
    ("ops_snapshot", p.OpsSnapshot,
     "About once a second: every live session's position and the platform statistics."),
    ("error", p.ErrorMessage, "Why the socket is closed next."),
    ("pong", p.Pong, "The reply to a ping."),
]
_OPS_RECEIVES: list[_Message] = [("ping", p.ClientPing, "Keep-alive.")]

_TOKEN_QUERY = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "description": "A bearer JWT (API.md \"Identity\")."},
    },
}
_WATCH_QUERY = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "description": (
            "A bearer JWT (API.md \"Identity\"), or this session's share link token."
        )},
        "since_seq": {"type": "integer", "minimum": 0, "description": (
            "Resume: after initial_state (with `recovered`), what the socket missed after this "
            "seq, in order, then live messages."
        )},
        "milestones": {"type": "boolean", "description": (
            "true: also send rider_approaching and rider_arrived (off by default, so clients of "
            "API.md's message list see only the messages it lists)."
        )},
    },
}


def _key(channel: str, name: str) -> str:
    return f"{channel}.{name}"


def build(version: str) -> dict[str, Any]:
    """The AsyncAPI document for this server's WebSocket channels."""
    structs: list[type[msgspec.Struct]] = []
    for table in (_WATCH_SENDS, _WATCH_RECEIVES, _OPS_SENDS, _OPS_RECEIVES):
        structs.extend(t for _, t, _ in table if t not in structs)
    refs, schemas = msgspec.json.schema_components(structs, ref_template=_REF)
    ref_of = dict(zip(structs, refs, strict=True))
    messages: dict[str, Any] = {}
    channel_messages: dict[str, dict[str, Any]] = {"watch": {}, "ops": {}}
    for channel, tables in (("watch", (_WATCH_SENDS, _WATCH_RECEIVES)),
                            ("ops", (_OPS_SENDS, _OPS_RECEIVES))):  # fmt: skip
        for table in tables:
            for name, struct, summary in table:
                key = _key(channel, name)
                messages[key] = {
                    "name": name, "title": struct.__name__, "summary": summary,
                    "contentType": "application/json", "payload": ref_of[struct],
                }
                channel_messages[channel][name] = {"$ref": f"#/components/messages/{key}"}

    def op(action: str, channel: str, table: list[Any], summary: str) -> dict[str, Any]:
        return {
            "action": action, "summary": summary,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}
                         for name, _, _ in table],
        }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Delivery tracking: WebSockets",
            "version": version,
            "description": (
                "Live delivery tracking over WebSocket (API.md). Text frames carry one JSON "
                "object each, told apart by `type`. Close codes: 1008 for an invalid token, an "
                "unknown or expired session (after an `error` message saying which), 1013 for "
                "a watcher whose queue stayed full of status changes (try again later). "
                "The REST side is at /openapi.json."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "watch": {
                "address": "/ws/tracking/{tracking_id}",
                "title": "Watch (and report to) one delivery",
                "description": "Token optional for watching (public); needed to report.",
                "parameters": {"tracking_id": {"description": "The tracking id (TRK-...)."}},
                "messages": channel_messages["watch"],
                "bindings": {"ws": {"query": _WATCH_QUERY}},
            },
            "ops": {
                "address": "/ws/ops",
                "title": "The ops feed (superadmin token required)",
                "messages": channel_messages["ops"],
                "bindings": {"ws": {"query": _TOKEN_QUERY}},
            },
        },
        "operations": {
            "sendWatchEvents": op("send", "watch", _WATCH_SENDS,
                                  "What a watcher receives, in the order the session accepted it."),
            "receiveReports": op("receive", "watch", _WATCH_RECEIVES,
                                 "What a client may send on a watch socket."),
            "sendOpsSnapshots": op("send", "ops", _OPS_SENDS, "What an ops socket receives."),
            "receiveOpsPings": op("receive", "ops", _OPS_RECEIVES,
                                  "What a client may send on an ops socket."),
        },
        "components": {"schemas": schemas, "messages": messages},
    }
