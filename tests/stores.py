"""The stores under test: the same tests run on the embedded SQLite store and on PostgreSQL.

`backend` (a fixture in tests/conftest.py, parametrized) gives a `StoreBackend`: a fresh place
for one test's stores (a data dir, or a new database on the session's throwaway server), and
the few things a test needs to do behind a store's back, each written for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from engine.settings import Settings
from engine.store import StoreSpec, open_outboxes
from engine.store.base import OutboxStore, Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore, checkpoint_path, connect, shard_db_path


class StoreBackend:
    """One test's stores, SQLite files in `data_dir` or the database at `url`."""

    def __init__(self, name: str, data_dir: Path, url: str | None) -> None:
        self.name = name
        self.data_dir = data_dir
        self.url = url

    def __repr__(self) -> str:
        return self.name

    def spec(self, shards: int) -> StoreSpec:
        return StoreSpec(self.data_dir, shards, url=self.url)

    def settings(self, **values: Any) -> dict[str, Any]:
        """Settings values that point at this store (with `values`)."""
        return {"data_dir": self.data_dir, "store_url": self.url, **values}

    def make_settings(self, **values: Any) -> Settings:
        return Settings(**self.settings(**values))

    def open(self, shard: int = 0, shards: int = 1) -> Store:
        """Shard `shard`'s store (a Postgres one claims the shard: close the last one first)."""
        if self.url is not None:
            return PostgresStore(self.url, shard, shards, claim_wait_s=5.0)
        return SqliteStore(shard_db_path(self.data_dir, shard))

    def outbox(self, shard: int = 0, shards: int = 1) -> OutboxStore:
        """The dispatcher's view of shard `shard`'s outbox, on a connection of its own."""
        outboxes = open_outboxes(self.spec(shards))
        for i, other in enumerate(outboxes):
            if i != shard:
                other.close()
        return outboxes[shard]

    def sql(self, query: str, shard: int = 0) -> list[tuple[Any, ...]]:
        """Run SQL on the store behind the stores' back (rows, if any)."""
        if self.url is not None:
            with psycopg.connect(self.url, autocommit=True,
                                 options="-c search_path=tracking") as conn:  # fmt: skip
                cur = conn.execute(query.replace("?", "%s"))
                return cur.fetchall() if cur.description else []
        conn2 = connect(shard_db_path(self.data_dir, shard))
        try:
            return conn2.execute(query).fetchall()
        finally:
            conn2.close()

    def journal_counts(self, shard: int = 0) -> list[tuple[str, int]]:
        """(tracking id, journal rows) of each session with rows, in id order."""
        rows = self.sql("SELECT tracking_id, COUNT(*) FROM journal GROUP BY 1 ORDER BY 1", shard)
        return [(t, int(n)) for t, n in rows]

    def drop_checkpoint(self, shard: int = 0) -> None:
        if self.url is not None:
            self.sql(f"DELETE FROM checkpoints WHERE shard = {shard}")
        else:
            checkpoint_path(shard_db_path(self.data_dir, shard)).unlink()

    def refuse_done(self, row_id: int) -> type[Exception]:
        """From now on, marking outbox row `row_id` delivered fails (the error it raises)."""
        if self.url is not None:
            self.sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
                f" CREATE TRIGGER refuse BEFORE UPDATE ON outbox FOR EACH ROW WHEN"
                f" (NEW.id = {row_id} AND NEW.state = 'done') EXECUTE FUNCTION refuse()"
            )
            return psycopg.errors.RaiseException
        import sqlite3

        self.sql(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON outbox WHEN NEW.id = {row_id}"
            " AND NEW.state = 'done' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        return sqlite3.IntegrityError
