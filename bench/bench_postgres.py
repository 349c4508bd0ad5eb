"""PostgreSQL append path: psycopg 3 (async) against asyncpg, then the store itself, one run.

Run with ``python -m bench.bench_postgres`` (a throwaway server from the machine's PostgreSQL
binaries, fsync and synchronous_commit on: every commit durable). Each driver runs the
transaction the PostgreSQL writer runs for one group commit (advisory lock, head, stream
versions, stored ids, one INSERT of every row, COMMIT) on batches of 256 one-event calls (what
256 concurrent appenders group into) and of 1 (one appender alone). Then 256 concurrent tasks
append one event each through `EventStore.open(url)` (the backend as shipped), beside the same
on SQLite with synchronous=FULL.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

try:  # measured against, not a dependency: `pip install 'psycopg[binary]'` to compare
    import psycopg
except ImportError:  # pragma: no cover — depends on the machine
    psycopg = None

from bench.bench_eventstore import DATA
from eventstore import ANY, GENESIS, EventStore, NewEvent
from eventstore.planner import plan_batch, prepare_event
from eventstore.postgres.schema import WRITE_LOCK, migrate
from eventstore.testing import ThrowawayPostgres, find_server_binaries

_HEAD = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_COLUMNS = "position, stream, version, type, schema, data, metadata, event_id, recorded_at"
_TYPES = ("bigint", "text", "bigint", "text", "bigint", "text", "text", "text", "text")
_INSERT_PG = (
    f"INSERT INTO events ({_COLUMNS}, prev_hash, hash) SELECT * FROM unnest("  # noqa: S608
    + ", ".join(f"$%d::{t}[]" % (i + 1) for i, t in enumerate((*_TYPES, "text", "text")))
    + ")"
)


def _batch(n: int, head: int, head_hash: str, round_: int) -> list[list[Any]]:
    calls = [
        ((prepare_event(NewEvent(f"acc-{round_}-{i % 50}", "Bench", DATA)),), ANY, ())
        for i in range(n)
    ]
    plan = plan_batch(calls, head, head_hash, {}, {}, "2026-01-01T00:00:00.000000Z")
    return [list(col) for col in zip(*plan.rows, strict=True)]


async def _asyncpg(url: str, size: int, rounds: int) -> float:
    conn = await asyncpg.connect(url)
    head, head_hash = 0, GENESIS
    total = 0.0
    try:
        for r in range(rounds):
            cols = _batch(size, head, head_hash, r)
            start = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                await conn.fetch(_HEAD)
                await conn.fetch(
                    "SELECT stream, MAX(version) FROM events WHERE stream = ANY($1::text[])"
                    " GROUP BY stream",
                    list(set(cols[1])),
                )
                await conn.fetch("SELECT position FROM events WHERE event_id = ANY($1)", cols[7])
                await conn.execute(_INSERT_PG, *cols)
            total += time.perf_counter() - start
            head, head_hash = cols[0][-1], cols[10][-1]
    finally:
        await conn.close()
    return total


async def _psycopg(url: str, size: int, rounds: int) -> float:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    head, head_hash = 0, GENESIS
    insert = _INSERT_PG
    for i in range(11, 0, -1):
        insert = insert.replace(f"${i}::", "%s::")
    total = 0.0
    try:
        for r in range(rounds):
            cols = _batch(size, head, head_hash, r)
            start = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                await (await conn.execute(_HEAD)).fetchall()
                await (
                    await conn.execute(
                        "SELECT stream, MAX(version) FROM events WHERE stream = ANY(%s)"
                        " GROUP BY stream",
                        (list(set(cols[1])),),
                    )
                ).fetchall()
                await (
                    await conn.execute(
                        "SELECT position FROM events WHERE event_id = ANY(%s)", (cols[7],)
                    )
                ).fetchall()
                await conn.execute(insert, cols, binary=True)
            total += time.perf_counter() - start
            head, head_hash = cols[0][-1], cols[10][-1]
    finally:
        await conn.close()
    return total


async def _store(
    open_store: Callable[[], Awaitable[EventStore]], appenders: int, per: int
) -> float:
    store = await open_store()
    try:

        async def appender(k: int) -> None:
            for i in range(per):
                await store.append([NewEvent(f"acc-{k}-{i % 50}", "Bench", DATA)])

        start = time.perf_counter()
        await asyncio.gather(*(appender(k) for k in range(appenders)))
        return time.perf_counter() - start
    finally:
        await store.close()


async def _fresh(server: ThrowawayPostgres) -> str:
    url = server.url(server.create_database())
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


def _line(label: str, events: int, commits: int, seconds: float) -> None:
    print(
        f"  {label:<44} {events / seconds:>10,.0f} events/s"
        f" {seconds / commits * 1000:>8.2f} ms/commit"
    )


async def main(rounds: int, appends: int, repeat: int) -> None:
    if find_server_binaries() is None:
        print("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: nothing measured")
        return
    server = ThrowawayPostgres.start(durable=True)
    try:
        print("driver, one group-commit transaction (durable):")
        drivers: tuple[tuple[str, Callable[[str, int, int], Awaitable[float]]], ...]
        drivers = (("asyncpg", _asyncpg),)
        if psycopg is not None:
            drivers = (("psycopg 3 async", _psycopg), *drivers)
        else:
            print("  (psycopg not installed: pip install 'psycopg[binary]' to compare)")
        for size in (256, 1):
            n = rounds if size > 1 else rounds * 4
            best = dict.fromkeys((name for name, _ in drivers), float("inf"))
            for _ in range(repeat):  # interleaved, best of `repeat`: other load shows less
                for name, fn in drivers:
                    url = await _fresh(server)
                    await fn(url, size, 2)  # warm up (connection, plans), then measure afresh
                    url = await _fresh(server)
                    best[name] = min(best[name], await fn(url, size, n))
            for name, seconds in best.items():
                _line(f"{name}, batches of {size}", size * n, n, seconds)
        print(f"store, 256 concurrent tasks appending one event at a time ({appends} in all):")
        url = await _fresh(server)
        seconds = await _store(lambda: EventStore.open(url), 256, appends // 256)
        print(f"  {'PostgreSQL (EventStore.open(url))':<44} {appends / seconds:>10,.0f} events/s")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "log.db"
            seconds = await _store(lambda: EventStore.open(path), 256, appends // 256)
        print(f"  {'SQLite, synchronous=FULL':<44} {appends / seconds:>10,.0f} events/s")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="batches of 256 per driver")
    parser.add_argument("--appends", type=int, default=25_600, help="one-event appends (store)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per driver (best is shown)")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.appends, args.repeat))
