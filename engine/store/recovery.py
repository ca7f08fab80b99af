"""Recovery, the same for every store: the checkpoint, then the journal rows after it.

A checkpoint holds each session's state as of journal id `upto` or later (it is read in slices
while the shard serves calls: fuzzy), so a journal row replaces a session's state only when
its seq is newer. A checkpoint that cannot be trusted (ahead of the journal, or missing
sessions the store still holds) is ignored and the whole journal replayed: the checkpoint only
saves time, the journal has everything.

A session's state is its last change's seq, status and time, its current location (from its
last change that had one and was not late: a status change whose fix was dropped, or a late fix,
leaves it where it was) with that location's time, and the milestones it fired (flags).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from engine.domain.session import APPROACHING, ARRIVED, LATE, Change, Lifetimes, Session, SessionRow
from engine.domain.status import Status
from engine.store.base import CheckpointRow

log = logging.getLogger(__name__)

# A journal row as recovery reads it: (journal id, tracking id, seq, status, lat, lng, at,
# fix_at, flags).
JournalRow = tuple[
    int, str, int, str, float | None, float | None, float, float | None, int
]
# A session's last known state: (seq, status, lat, lng, at, journal id of that change, time of
# the location, milestone flags).
_State = tuple[int, str, float | None, float | None, float, int, float | None, int]
_MILESTONES = APPROACHING | ARRIVED


def recover(
    facts: Mapping[str, SessionRow],
    top: int,
    checkpoint: tuple[int, list[CheckpointRow]] | None,
    rows_after: Callable[[int], Iterable[JournalRow]],
    lt: Lifetimes,
    where: str,
) -> tuple[list[Session], int]:
    """The sessions of `facts` in their last journaled state, and the highest journal id used.

    `top` is the highest journal id in the store, `checkpoint` (upto, rows) the store's
    checkpoint if it has one, `rows_after(upto)` the journal rows with ids above `upto` in id
    order; `where` names the checkpoint in warnings."""
    if checkpoint is not None and checkpoint[0] > top:
        log.warning("ignoring checkpoint %s: it is ahead of the journal", where)
        checkpoint = None
    state, upto = _replay(facts, checkpoint, rows_after)
    if checkpoint is not None and len(state) < len(facts):
        # A session the checkpoint missed (say, a purge that failed): replay it all.
        log.warning("checkpoint %s misses sessions; replaying the whole journal", where)
        state, upto = _replay(facts, None, rows_after)
    out = []
    for tid, (seq, status, lat, lng, at, head, loc_at, flags) in state.items():
        last = Change(tid, seq, Status(status), None, lat, lng, at, loc_at, flags)
        s = Session.restore(facts[tid], last, lt)
        s.head = head
        out.append(s)
    return out, max(top, upto)


def _replay(
    facts: Mapping[str, SessionRow],
    checkpoint: tuple[int, list[CheckpointRow]] | None,
    rows_after: Callable[[int], Iterable[JournalRow]],
) -> tuple[dict[str, _State], int]:
    state: dict[str, _State] = {}
    upto = 0
    if checkpoint is not None:
        upto = checkpoint[0]
        for tid, seq, status, lat, lng, at, head, *more in checkpoint[1]:
            if tid in facts:  # rows written before fix times have no location time nor flags
                loc_at = more[0] if more else at
                marks = int(more[1]) if len(more) >= 2 and more[1] is not None else 0
                state[tid] = (seq, status, lat, lng, at, head, loc_at, marks)
    for jid, tid, seq, status, lat, lng, at, fix_at, flags in rows_after(upto):
        if tid in facts:
            old = state.get(tid)
            if old is None or seq > old[0]:
                marks = (old[7] if old else 0) | (flags & _MILESTONES)
                if lat is not None and not flags & LATE:
                    state[tid] = (seq, status, lat, lng, at, jid,
                                  at if fix_at is None else fix_at, marks)  # fmt: skip
                elif old is not None:
                    state[tid] = (seq, status, old[2], old[3], at, jid, old[6], marks)
                else:
                    state[tid] = (seq, status, None, None, at, jid, None, marks)
    return state, upto
