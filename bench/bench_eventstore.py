"""Event store benchmark: durable append rates, replay and verify rates, and JSON codec costs.

Run with ``python -m bench.bench_eventstore`` (small defaults; ``--help`` for sizes). Each figure
is printed next to a plain-sqlite3 ceiling measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from eventstore import EventStore, NewEvent
from eventstore.schema import MIGRATIONS

TYPICAL = {
    "account_id": "acc_6f1c2b9e4d",
    "grant_id": "0b9e1c7a-3d2f-4c1b-9a8e-5f6d7c8b9a0e",
    "provider": "google",
    "email": "someone@example.com",
    "state": "stopped_waiting",
    "due_at": "2026-11-25T11:42:00.000000Z",
    "webhook": {"id": "wh_123", "type": "account.stopped", "attempt": 1},
}
DATA = json.dumps(TYPICAL).encode()


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} /s"


async def appends(path: Path, appenders: int, total: int, max_batch: int = 1_000) -> float:
    """Seconds for `appenders` concurrent tasks to append `total` one-event calls, FULL sync."""
    per_task = total // appenders
    async with await EventStore.open(path, synchronous="FULL", max_batch=max_batch) as store:

        async def appender(k: int) -> None:
            for i in range(per_task):
                await store.append([NewEvent(f"acc-{k}-{i % 50}", "Bench", DATA)])

        start = time.perf_counter()
        await asyncio.gather(*(appender(k) for k in range(appenders)))
        return time.perf_counter() - start


def plain_insert(path: Path, total: int, batch: int = 1_000) -> float:
    """Seconds for plain sqlite3 to insert `total` rows into the same table, 1,000 per commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(MIGRATIONS[1])
    text = DATA.decode()
    start = time.perf_counter()
    pos = 0
    while pos < total:
        rows = [
            (p, f"acc-{p % 997}", p, "Bench", 1, text, "{}", f"id-{p}", "t", "0" * 64, "0" * 64)
            for p in range(pos + 1, min(pos + batch, total) + 1)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        pos += len(rows)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def build_log(path: Path, total: int) -> None:
    async with await EventStore.open(path, synchronous="NORMAL") as store:
        chunk = 2_000
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            await store.append(
                [NewEvent(f"acc-{(start + i) % 5000}", "Bench", DATA) for i in range(n)]
            )


async def replay(path: Path, decode: Callable[[bytes], object]) -> tuple[int, float]:
    async with await EventStore.open(path, create=False) as store:
        start = time.perf_counter()
        n = 0
        async for event in store.read_all():
            decode(event.data)
            n += 1
        return n, time.perf_counter() - start


def plain_scan(path: Path) -> tuple[int, float]:
    conn = sqlite3.connect(path)
    start = time.perf_counter()
    n = 0
    for row in conn.execute(
        "SELECT position, stream, version, type, schema, data, metadata, event_id,"
        " recorded_at, hash FROM events ORDER BY position"
    ):
        json.loads(row[5])
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return n, elapsed


async def verify(path: Path) -> tuple[int, float]:
    async with await EventStore.open(path, create=False) as store:
        start = time.perf_counter()
        report = await store.verify()
        assert report.ok, report.damage
        return report.events_checked, time.perf_counter() - start


def json_codecs(rounds: int) -> list[tuple[str, float, float]]:
    """(library, encode µs, decode µs) for the typical event dict."""
    codecs: list[tuple[str, Callable, Callable]] = [
        ("stdlib json", lambda o: json.dumps(o).encode(), json.loads),
        ("msgspec", msgspec.json.encode, msgspec.json.decode),
    ]
    try:
        import orjson

        codecs.append(("orjson", orjson.dumps, orjson.loads))
    except ImportError:
        pass
    out = []
    for name, enc, dec in codecs:
        start = time.perf_counter()
        for _ in range(rounds):
            enc(TYPICAL)
        e = (time.perf_counter() - start) / rounds * 1e6
        start = time.perf_counter()
        for _ in range(rounds):
            dec(DATA)
        d = (time.perf_counter() - start) / rounds * 1e6
        out.append((name, e, d))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=20_000, help="events per append run")
    parser.add_argument("--replay-events", type=int, default=200_000, help="log size for replay")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        print(f"durable appends (synchronous=FULL, one event per call, {args.appends:,} events)")
        for appenders in (1, 16, 256):
            n = args.appends if appenders > 1 else max(args.appends // 10, 100)
            n -= n % appenders
            secs = await appends(d / f"a{appenders}.db", appenders, n)
            print(f"  group commit, {appenders:>3} appenders   {rate(n, secs)}")
        n = max(args.appends // 10, 256)
        n -= n % 256
        secs = await appends(d / "single.db", 256, n, max_batch=1)
        print(f"  one event per transaction, 256 {rate(n, secs)}")
        secs = plain_insert(d / "plain.db", args.appends)
        print(f"  plain sqlite3, 1,000 rows/commit {rate(args.appends, secs)}   (ceiling)")

        print(f"replay over {args.replay_events:,} events")
        log = d / "replay.db"
        await build_log(log, args.replay_events)
        n, secs = plain_scan(log)
        print(f"  plain sqlite3 scan + json.loads  {rate(n, secs)}   (ceiling)")
        n, secs = await replay(log, json.loads)
        print(f"  read_all + json.loads            {rate(n, secs)}")
        n, secs = await replay(log, msgspec.json.decode)
        print(f"  read_all + msgspec decode        {rate(n, secs)}")
        n, secs = await verify(log)
        print(f"  verify                           {rate(n, secs)}")

        print(f"JSON codecs on a typical event dict ({len(DATA)} bytes)")
        for name, enc, dec in json_codecs(50_000):
            print(f"  {name:<12} encode {enc:6.2f} µs   decode {dec:6.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
