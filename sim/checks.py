"""What a watcher verifies about the stream of one session, fed message by message (no I/O).

The contract (API.md) promises: `initial_state` first; a `location_update` after every
accepted change, in the order the session accepted them (`seq` grows by one per change);
a `status_change` after the `location_update` of an update that changed the status, whose
`previous_status` -> `status` is one forward step; DELIVERED last; the ETA computed from
the location and the dropoff by the fixed model; never the customer's phone in a view.
A `seq` gap means lost messages unless the server marked the message as conflated.

Beyond API.md (README): `rider_approaching` then `rider_arrived`, each once per delivery, right
after the `location_update` of the change that fired it, and a view's `proximity` never going
back (anything else is a flap); a watcher that comes back with `?since_seq=N` gets
`initial_state` with `recovered: true`, then everything after N in order, then live messages.
"""

from __future__ import annotations

from typing import Any

from sim.geo import contract_eta_s, haversine_km

STATUS_ORDER = {"ASSIGNED": 0, "PICKED_UP": 1, "IN_TRANSIT": 2, "DELIVERED": 3}
PROXIMITY_RANK = {None: 0, "approaching": 1, "arrived": 2}
MILESTONES = {"rider_approaching": "approaching", "rider_arrived": "arrived"}
_MAX_VIOLATIONS = 5  # examples kept per watcher; counters keep the totals


class StreamCheck:
    """Checks one watcher connection's messages for one session; counters say what went wrong."""

    __slots__ = (
        "_before_last",
        "_pending_status",
        "_recounted",
        "approach_status",
        "approaching",
        "arrived",
        "conflated",
        "duplicates",
        "eta_errors",
        "eta_first_transit",
        "eta_last_transit",
        "eta_speed_kmh",
        "first_seq",
        "flaps",
        "gaps",
        "initial_seen",
        "last_seq",
        "out_of_order",
        "phone_leaks",
        "protocol_errors",
        "proximity",
        "received",
        "replay_until",
        "replayed",
        "resumed",
        "resuming",
        "status",
        "status_changes",
        "status_errors",
        "tracking_id",
        "violations",
    )

    def __init__(self, tracking_id: str, eta_speed_kmh: float | None = 30.0) -> None:
        self.tracking_id = tracking_id
        self.eta_speed_kmh = eta_speed_kmh  # None: do not check ETA values
        self.initial_seen = False
        self.first_seq: int | None = None  # seq of the initial_state
        self.last_seq: int | None = None
        self.status: str | None = None
        self._pending_status: tuple[int, str, str] | None = None  # (seq, previous, new)
        self.received = 0  # location_update messages with a new seq
        self.status_changes = 0
        self.gaps = 0  # seqs skipped without a conflation mark
        self.conflated = 0  # seqs skipped that the server said it conflated
        self.out_of_order = 0
        self.duplicates = 0
        self.status_errors = 0
        self.eta_errors = 0
        self.protocol_errors = 0
        self.phone_leaks = 0
        self.eta_first_transit: int | None = None
        self.eta_last_transit: int | None = None
        self.violations: list[str] = []
        self.approaching = 0  # rider_approaching messages
        self.arrived = 0
        self.approach_status: str | None = None  # the status rider_approaching carried
        self.flaps = 0  # milestones more than once, out of order, or proximity going back
        self.proximity = 0  # the highest PROXIMITY_RANK seen in a view
        self.resuming = False  # reconnected with since_seq: the next initial_state resumes
        self.resumed = 0  # reconnects whose initial_state said recovered
        self.replay_until = 0  # seqs up to this came in a replay (not counted as received)
        self.replayed = 0
        self._before_last: tuple[str | None, int, int | None] | None = None
        self._recounted = 0

    @property
    def delivered(self) -> bool:
        """DELIVERED was seen, with its status_change."""
        return self.status == "DELIVERED" and self._pending_status is None

    @property
    def awaiting_status_change(self) -> bool:
        """A location_update changed the status; its status_change has not come yet."""
        return self._pending_status is not None

    @property
    def problems(self) -> int:
        return (
            self.gaps + self.out_of_order + self.duplicates + self.status_errors
            + self.eta_errors + self.protocol_errors + self.phone_leaks
        )  # fmt: skip

    def reconnected(self, resume: bool = False) -> None:
        """The watcher opened a new connection: the next message must be a fresh initial_state
        (with `resume`, one that says whether what follows is the replay after `last_seq`)."""
        self.initial_seen = False
        self.resuming = resume

    def rewind_last(self) -> int:
        """Forget the last location_update, as if it had not arrived (right after it, before
        the rest of its change): a resume from the returned seq then gets its change whole."""
        if self._before_last is None or self.last_seq is None or self.first_seq is None \
                or self.last_seq <= self.first_seq:
            return self.last_seq or 0
        self.status, self.proximity, self.eta_last_transit = self._before_last
        self._before_last = None
        self._pending_status = None
        self._recounted = self.last_seq  # received once already: its replay is not counted
        self.last_seq -= 1
        return self.last_seq

    def bridge(self, upto_seq: int, status: str) -> int:
        """The watcher read the seqs after `last_seq` up to `upto_seq` from the session's history
        (the server sent a newer state after losing events, e.g. when a shard restarted): they
        count as seen, not lost. Returns how many were bridged."""
        if self.last_seq is None or upto_seq <= self.last_seq:
            return 0
        n = upto_seq - self.last_seq
        self.last_seq = upto_seq
        self.status = status
        self._pending_status = None
        return n

    def feed(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        data = msg.get("data")
        if kind == "error":
            self._violate("protocol", f"error message: {msg.get('message')!r}")
            return
        if kind not in ("initial_state", "location_update", "status_change", *MILESTONES):
            self._violate("protocol", f"unexpected message type {kind!r}")
            return
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
            self._violate("protocol", f"{kind} without a view carrying an int seq")
            return
        if "phone" in data:
            self._violate("phone", f"{kind} seq {data['seq']} carries the customer's phone")
        if kind == "initial_state":
            self._initial(data, msg.get("recovered"))
        elif not self.initial_seen:
            self._violate("protocol", f"{kind} before initial_state")
        elif kind == "location_update":
            self._location(msg, data)
        elif kind in MILESTONES:
            self._milestone(MILESTONES[kind], data)
        else:
            self._status_change(data)

    def finish(self, final_seq: int | None = None) -> int:
        """End of the stream; `final_seq` is the last seq the rider got acknowledged.
        Returns the number of seqs missing at the tail (lost), and counts them as gaps."""
        missing = 0
        if self._pending_status is not None:
            seq, prev, new = self._pending_status
            self._violate("status", f"no status_change {prev}->{new} after seq {seq}")
        if final_seq is not None and self.last_seq is not None and final_seq > self.last_seq:
            missing = final_seq - self.last_seq
            self.gaps += missing
            self._note(f"stream ended at seq {self.last_seq}, rider reached {final_seq}")
        first, last = self.eta_first_transit, self.eta_last_transit
        if first is not None and last is not None and last > first:
            self._violate("eta", f"eta grew in transit from {first} to {last}")
        return missing

    def _initial(self, data: dict[str, Any], recovered: object = None) -> None:
        seq: int = data["seq"]
        if self.initial_seen:
            self._violate("protocol", "second initial_state on one connection")
        if self.resuming:
            self.resuming = False
            if recovered is True and self.last_seq is not None and seq >= self.last_seq:
                # What follows is the replay after last_seq, then live: the stream goes on.
                self.initial_seen = True
                self.resumed += 1
                self.replay_until = seq
                return
            if recovered is not False:
                self._violate("protocol", f"a resumed initial_state says recovered={recovered!r}")
            self.proximity = PROXIMITY_RANK.get(data.get("proximity"), 0)
        if self.last_seq is not None and seq < self.last_seq:
            self._violate("order", f"initial_state seq {seq} behind seen seq {self.last_seq}")
        self.initial_seen = True
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
        self._pending_status = None
        self._check_view(data)
        self.status = data.get("status")

    def _location(self, msg: dict[str, Any], data: dict[str, Any]) -> None:
        seq: int = data["seq"]
        assert self.last_seq is not None
        if seq <= self.last_seq:
            if seq == self.last_seq:
                self._violate("dup", f"location_update seq {seq} twice")
            else:
                self._violate("order", f"location_update seq {seq} after seq {self.last_seq}")
            return
        if self._pending_status is not None:
            pseq, prev, nxt = self._pending_status
            self._violate("status", f"no status_change {prev}->{nxt} after seq {pseq}")
            self._pending_status = None
        self._before_last = (self.status, self.proximity, self.eta_last_transit)
        skipped = seq - self.last_seq - 1
        if skipped:
            if msg.get("conflated") or data.get("conflated"):
                self.conflated += skipped
            else:
                self.gaps += skipped
                self._note(f"gap: seq {self.last_seq} then {seq}")
        self.last_seq = seq
        if seq == self._recounted:
            self._recounted = 0
        elif seq <= self.replay_until:
            self.replayed += 1
        else:
            self.received += 1
        new = data.get("status")
        old = self.status
        if new not in STATUS_ORDER:
            self._violate("status", f"unknown status {new!r} at seq {seq}")
        elif old in STATUS_ORDER and new != old:
            if STATUS_ORDER[new] != STATUS_ORDER[old] + 1:
                self._violate("status", f"status {old}->{new} at seq {seq}")
            self._pending_status = (seq, old, new)
        self.status = new
        self._check_view(data)

    def _status_change(self, data: dict[str, Any]) -> None:
        seq: int = data["seq"]
        pending = self._pending_status
        prev, new = data.get("previous_status"), data.get("status")
        if pending is None or pending[0] != seq:
            self._violate("status", f"status_change {prev}->{new} seq {seq} not after its update")
            return
        self._pending_status = None
        self.status_changes += 1
        if (prev, new) != pending[1:]:
            self._violate("status", f"status_change says {prev}->{new}, update said {pending[1:]}")
        self._check_view(data)

    def _milestone(self, name: str, data: dict[str, Any]) -> None:
        seq = data["seq"]
        if seq != self.last_seq:
            self._violate("order", f"rider_{name} seq {seq} not after its location_update")
        if name == "approaching":
            self.approaching += 1
            if self.approach_status is None:
                self.approach_status = data.get("status")
        else:
            self.arrived += 1
            if not self.approaching:
                self._flap(f"rider_arrived before rider_approaching at seq {seq}")
        if self.approaching > 1 or self.arrived > 1:
            self._flap(f"rider_{name} again at seq {seq}")
        if data.get("proximity") != name:
            self._flap(f"rider_{name} whose view says proximity {data.get('proximity')!r}")

    def _flap(self, text: str) -> None:
        self.flaps += 1
        self._note(text)

    def _check_view(self, data: dict[str, Any]) -> None:
        rank = PROXIMITY_RANK.get(data.get("proximity"), 0)
        if rank < self.proximity:
            self._flap(f"proximity went back to {data.get('proximity')!r} at seq {data['seq']}")
        self.proximity = max(self.proximity, rank)
        eta = data.get("eta_seconds")
        loc, drop, status = data.get("current_location"), data.get("dropoff"), data.get("status")
        if status == "DELIVERED":
            expected: int | None = 0
        elif not loc:
            expected = None
        elif self.eta_speed_kmh is None or not drop:
            return
        else:
            km = haversine_km(loc["lat"], loc["lng"], drop["lat"], drop["lng"])
            expected = contract_eta_s(km, self.eta_speed_kmh)
            if status == "IN_TRANSIT" and isinstance(eta, int):
                if self.eta_first_transit is None:
                    self.eta_first_transit = eta
                self.eta_last_transit = eta
        ok = eta == expected or (
            isinstance(eta, int) and expected is not None and abs(eta - expected) <= 1
        )  # float rounding at .5 may differ by one second between implementations
        if not ok:
            self._violate("eta", f"eta {eta} at seq {data['seq']}, contract says {expected}")

    def _violate(self, kind: str, text: str) -> None:
        if kind == "order":
            self.out_of_order += 1
        elif kind == "dup":
            self.duplicates += 1
        elif kind == "status":
            self.status_errors += 1
        elif kind == "eta":
            self.eta_errors += 1
        elif kind == "phone":
            self.phone_leaks += 1
        else:
            self.protocol_errors += 1
        self._note(text)

    def _note(self, text: str) -> None:
        if len(self.violations) < _MAX_VIOLATIONS:
            self.violations.append(f"{self.tracking_id}: {text}")


def check_history(items: list[dict[str, Any]], after_seq: int, upto_seq: int) -> list[str]:
    """Problems with a history page set that should hold every seq in (after_seq, upto_seq]:
    each exactly once, in order, with status steps the contract allows."""
    problems: list[str] = []
    seqs = [it.get("seq") for it in items if isinstance(it.get("seq"), int)]
    wanted = list(range(after_seq + 1, upto_seq + 1))
    got = [s for s in seqs if s is not None and after_seq < s <= upto_seq]
    if got != wanted:
        missing = sorted(set(wanted) - set(got))
        if missing:
            problems.append(f"history misses seqs {missing[:10]}")
        if got != sorted(set(got)):
            problems.append("history seqs are not strictly increasing")
    for it in items:
        status, prev = it.get("status"), it.get("previous_status")
        if status not in STATUS_ORDER:
            problems.append(f"history seq {it.get('seq')}: unknown status {status!r}")
        elif (prev is not None and prev != status) and (
            prev not in STATUS_ORDER or STATUS_ORDER[status] != STATUS_ORDER[prev] + 1
        ):
            problems.append(f"history seq {it.get('seq')}: status {prev}->{status}")
    return problems
