"""What shards and the outbox dispatcher need from durable storage, and the rows they exchange.

Two sides of one store: a shard's journal (accepted changes, which are also the history), its
checkpoint and the outbox rows written with each batch; and the dispatcher's view of the outbox
(due calls, delivery marks, dead letters). `engine.store.open_*` picks the implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.domain.errors import TrackingError
from engine.domain.integrations import OutboxItem
from engine.domain.outbox_policy import Outcome
from engine.domain.session import (
    APPROACHING,
    ARRIVED,
    LATE,
    Change,
    Lifetimes,
    Session,
    milestones_of,
)
from engine.domain.status import Status
from engine.domain.view import HistoryItem


class StoreError(TrackingError):
    """The data directory or a store cannot be used."""

    code = "store"


# A journaled change: (journal id, journal id of the session's previous change or 0, change).
Entry = tuple[int, int, Change]
# A session's state in a checkpoint: (tracking id, seq, status, lat, lng, at, journal id,
# time of the location, milestone flags). Version 3 wrote only the first seven.
CheckpointRow = tuple[str, int, str, float | None, float | None, float, int, float | None, int]


class Store(Protocol):
    """A shard's side: journal, history, checkpoint, and the outbox rows of each batch."""

    def load_sessions(self, lt: Lifetimes) -> list[Session]:
        """Every session not yet purged, its `head` set to the journal id of its last change."""

    def journal_high(self) -> int:
        """The highest journal id used so far (ids of new entries must be greater)."""

    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        """Durably record new sessions, accepted changes and owed calls, all or nothing."""

    def history(self, head: int, since_seq: int, limit: int) -> list[HistoryItem]:
        """Changes of the session whose last change is journal id `head`, after `since_seq`."""

    def purge(self, sessions: Sequence[tuple[str, int]]) -> None:
        """Forget sessions, given as (tracking id, journal id of the last change)."""

    def write_checkpoint(self, upto: int, count: int, chunks: Sequence[bytes]) -> None:
        """Durably replace the checkpoint: sessions' states as of journal id `upto` (at least).

        `chunks` are JSON arrays of `count` CheckpointRows in all. Runs on a worker thread."""

    def close(self) -> None: ...


class NullStore:
    """No journal (benchmarks of the journal's cost; never the default)."""

    def load_sessions(self, lt: Lifetimes) -> list[Session]:
        return []

    def journal_high(self) -> int:
        return 0

    def commit(
        self, created: Iterable[Session], entries: Sequence[Entry], outbox: Sequence[OutboxItem]
    ) -> None:
        return None

    def history(self, head: int, since_seq: int, limit: int) -> list[HistoryItem]:
        return []

    def purge(self, sessions: Sequence[tuple[str, int]]) -> None:
        return None

    def write_checkpoint(self, upto: int, count: int, chunks: Sequence[bytes]) -> None:
        return None

    def close(self) -> None:
        return None


# -- the dispatcher's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A pending call as the dispatcher reads it."""

    id: int
    tracking_id: str
    target: str
    path: str
    body: bytes
    idempotency_key: str
    attempts: int
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class OutboxMark:
    """The outcome of one delivery attempt, to record."""

    row_id: int
    outcome: Outcome
    at: float
    next_at: float = 0.0
    error: str | None = None


class OutboxStore(Protocol):
    """One store's outbox, as the dispatcher delivers it."""

    def due_heads(self, now: float, limit: int) -> list[OutboxRow]:
        """The oldest pending call of each session to each receiver, when it is due.

        Order holds per session and receiver: an outage of the notification service does not
        hold back the order service's DELIVERED call (neither receiver sees the other's calls).
        """

    def mark(self, marks: Sequence[OutboxMark]) -> None:
        """Record attempts' outcomes, all in one transaction."""

    def counts(self) -> dict[str, int]:
        """pending / done / dead calls, and `retries` (attempts beyond the first)."""

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """The newest dead calls, newest first."""

    def prune_done(self, older_than: float) -> None:
        """Forget delivered calls finished before `older_than`."""

    def close(self) -> None: ...


HistoryRow = tuple[int, str, str | None, float | None, float | None, float, float | None, int]


def history_items(rows: Iterable[HistoryRow]) -> list[HistoryItem]:
    """History rows as both stores select them: (seq, status, previous_status, lat, lng, at,
    fix_at, flags)."""
    return [
        HistoryItem(
            seq, Status(st), Status(prev) if prev else None, lat, lng, int(at),
            None if fix_at is None else int(fix_at), bool(flags & LATE),
            milestones_of(flags) if flags & (APPROACHING | ARRIVED) else (),
        )
        for seq, st, prev, lat, lng, at, fix_at, flags in rows
    ]
