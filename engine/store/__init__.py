"""Durable storage, chosen by settings: the embedded SQLite store, one file per shard in the data
dir (`engine.store.sqlite`), or with `TRACKING_STORE_URL` a PostgreSQL database every node of a
cluster reaches (`engine.store.postgres`). The interfaces are in `engine.store.base`.

Implementations are imported when a store is opened, so a process that only talks to shards
(an API process on the Ray engine) never loads a database driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.settings import Settings
from engine.store.base import NullStore, OutboxStore, Store, StoreError


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where the stores are: all a shard or the dispatcher needs of the settings for them."""

    data_dir: Path
    shards: int
    journal: bool = True
    # A PostgreSQL URL (the store of every shard), or None: SQLite files in `data_dir`. Kept out
    # of the repr, as it may hold a password (better kept in ~/.pgpass or PGPASSFILE).
    url: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreSpec:
        return cls(settings.data_dir, settings.shards, settings.journal, settings.store_url)

    @property
    def shared(self) -> bool:
        """Whether every node reaches the store (Postgres), so a shard may run anywhere."""
        return self.url is not None


def open_store(spec: StoreSpec, index: int) -> Store:
    """The store of shard `index` (no journal at all when `spec.journal` is off)."""
    if not spec.journal:
        return NullStore()
    if spec.url is not None:
        from engine.store.postgres import PostgresStore

        return PostgresStore(spec.url, index, spec.shards)
    from engine.store.sqlite import SqliteStore, shard_db_path

    return SqliteStore(shard_db_path(spec.data_dir, index))


def open_outboxes(spec: StoreSpec) -> list[OutboxStore]:
    """Every shard's outbox, in shard order, for the dispatcher."""
    if not spec.journal:
        return []  # no journal: shards write no outbox rows
    if spec.url is not None:
        from engine.store.postgres import open_outboxes as open_pg_outboxes

        return open_pg_outboxes(spec.url, spec.shards)
    from engine.store.sqlite import SqliteOutbox, shard_db_path

    return [SqliteOutbox(shard_db_path(spec.data_dir, i)) for i in range(spec.shards)]


def check_data_dir(data_dir: Path) -> None:
    """Fail early, with a clear StoreError, when the data dir cannot hold the store."""
    if data_dir.exists() and not data_dir.is_dir():
        raise StoreError(f"data directory {data_dir} is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"data directory {data_dir} cannot be created: {e}") from e
    if not os.access(data_dir, os.W_OK):
        raise StoreError(f"data directory {data_dir} is not writable")


def check_store(spec: StoreSpec, index: int) -> None:
    """Open shard `index`'s store once with an integrity check: StoreError if unusable."""
    if not spec.journal:
        return
    if spec.url is not None:
        from engine.store.postgres import check_database

        check_database(spec.url, spec.shards)
        return
    from engine.store.sqlite import check_file, shard_db_path

    check_file(shard_db_path(spec.data_dir, index))
