"""Which PostgreSQL driver and statement shape for a shard's commit path (engine.store.postgres).

A shard commits each batch in one transaction: a fencing read, then its journal rows. This
times that transaction against a throwaway local server (fsync on, as in production) for
psycopg 3 (COPY, executemany in a pipeline, one INSERT from unnest(arrays)) and, when it is
installed (`pip install asyncpg`), asyncpg (copy_records_to_table, executemany, unnest), and
reports rows/s and this process's CPU per row (the shard's own cost, on a box whose cores it
shares with the API processes).

    python -m loadtests.pg_driver_bench --batch 50 500 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import psycopg

from harness.postgres import PostgresServer

DDL = """
CREATE TABLE shards (shard integer PRIMARY KEY, generation bigint NOT NULL);
INSERT INTO shards VALUES (0, 1);
CREATE TABLE journal (
    shard integer NOT NULL, id bigint NOT NULL, tracking_id text NOT NULL, seq integer NOT NULL,
    status text NOT NULL, previous_status text, lat double precision, lng double precision,
    at double precision NOT NULL, PRIMARY KEY (shard, id)
);
CREATE INDEX journal_history ON journal (tracking_id, seq);
"""
COLUMNS = ("shard", "id", "tracking_id", "seq", "status", "previous_status", "lat", "lng", "at")
FENCE = "SELECT generation FROM shards WHERE shard = 0 FOR SHARE"
INSERT = f"INSERT INTO journal ({', '.join(COLUMNS)}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
UNNEST = (
    f"INSERT INTO journal ({', '.join(COLUMNS)}) SELECT * FROM unnest($1::int[], $2::bigint[],"
    " $3::text[], $4::int[], $5::text[], $6::text[], $7::float8[], $8::float8[], $9::float8[])"
)

TYPES = ["int4", "int8", "text", "int4", "text", "text", "float8", "float8", "float8"]
Row = tuple[int, int, str, int, str, str | None, float, float, float]


class Rows:
    """Journal-like rows: 20,000 sessions, each row the next change of one of them."""

    def __init__(self) -> None:
        self.next_id = 1
        self.seqs = [0] * 20_000

    def batch(self, n: int) -> list[Row]:
        out: list[Row] = []
        for _ in range(n):
            i = self.next_id
            s = i * 7919 % len(self.seqs)
            self.seqs[s] += 1
            out.append((0, i, f"TRK-{s:020d}", self.seqs[s], "IN_TRANSIT", None,
                        5.6 + s * 1e-6, -0.18, 1.7e9 + i * 1e-3))  # fmt: skip
            self.next_id += 1
        return out


def _psycopg_methods(url: str) -> dict[str, Callable[[list[Row]], None]]:
    conn = psycopg.connect(url, autocommit=True)
    pg_insert = INSERT.replace("$1,$2,$3,$4,$5,$6,$7,$8,$9", ", ".join(["%s"] * 9))
    pg_unnest = UNNEST
    for k in range(9, 0, -1):
        pg_unnest = pg_unnest.replace(f"${k}::", "%s::")

    def copy(rows: list[Row]) -> None:
        with conn.transaction():
            conn.execute(FENCE).fetchone()
            with conn.cursor().copy(f"COPY journal ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)

    def copy_binary(rows: list[Row]) -> None:
        with conn.transaction():
            conn.execute(FENCE).fetchone()
            with conn.cursor().copy(
                f"COPY journal ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(TYPES)
                for r in rows:
                    cp.write_row(r)

    def executemany(rows: list[Row]) -> None:
        with conn.transaction():
            conn.execute(FENCE).fetchone()
            conn.cursor().executemany(pg_insert, rows)

    def unnest(rows: list[Row]) -> None:
        with conn.transaction():
            conn.execute(FENCE).fetchone()
            conn.execute(pg_unnest, [list(c) for c in zip(*rows, strict=True)])

    return {"psycopg COPY": copy, "psycopg COPY binary": copy_binary,
            "psycopg executemany": executemany,
            "psycopg unnest": unnest}  # fmt: skip


def _asyncpg_methods(url: str) -> dict[str, Callable[[list[Row]], None]]:
    import asyncpg  # type: ignore[import-not-found,import-untyped,unused-ignore]

    loop = asyncio.new_event_loop()
    conn: Any = loop.run_until_complete(asyncpg.connect(url))

    def run(coro: Any) -> None:
        loop.run_until_complete(coro)

    async def copy_(rows: list[Row]) -> None:
        async with conn.transaction():
            await conn.fetchrow(FENCE)
            await conn.copy_records_to_table("journal", records=rows, columns=list(COLUMNS))

    async def many(rows: list[Row]) -> None:
        async with conn.transaction():
            await conn.fetchrow(FENCE)
            await conn.executemany(INSERT, rows)

    async def unnest_(rows: list[Row]) -> None:
        async with conn.transaction():
            await conn.fetchrow(FENCE)
            await conn.execute(UNNEST, *[list(c) for c in zip(*rows, strict=True)])

    return {
        "asyncpg copy_records": lambda rows: run(copy_(rows)),
        "asyncpg executemany": lambda rows: run(many(rows)),
        "asyncpg unnest": lambda rows: run(unnest_(rows)),
    }


def measure(fn: Callable[[list[Row]], None], rows: Rows, batch: int, seconds: float
            ) -> tuple[float, float]:  # fmt: skip
    """(rows/s, client CPU µs per row) over `seconds` of back-to-back batches."""
    batches = [rows.batch(batch) for _ in range(3)]
    for b in batches:  # warm up (prepared statements, caches)
        fn(b)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn(rows.batch(batch))
        n += batch
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--batch", type=int, nargs="+", default=[50, 500])
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    with PostgresServer() as pg:
        print(f"{'driver and statement':26} {'batch':>6} {'rows/s':>9} {'client CPU us/row':>18}")
        for batch in a.batch:
            for name in ("psycopg", "asyncpg"):
                if name == "asyncpg" and importlib.util.find_spec("asyncpg") is None:
                    print("asyncpg: not installed (pip install asyncpg), skipped")
                    continue
                make = _psycopg_methods if name == "psycopg" else _asyncpg_methods
                url = pg.create_database(f"bench_{name}_{batch}")
                with psycopg.connect(url, autocommit=True) as c:
                    c.execute(DDL)
                rows = Rows()
                for label, fn in make(url).items():
                    rate, cpu = measure(fn, rows, batch, a.seconds)
                    print(f"{label:26} {batch:>6} {rate:>9,.0f} {cpu:>18.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
