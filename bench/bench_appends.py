"""Appends at size: durable appends on a long log, against raw sqlite3 and `eventsourcing`.

Run with ``python -m bench.bench_appends`` (small defaults; ``--help``). The published figure is
``--events 5000000 --dir /var/tmp --keep`` (a 5M-event log is about 2.5 GB and takes some minutes
to build; --keep builds it once and measures it again on later runs).

A base log of ``--events`` events is written with plain sqlite3 into the store's own schema
(eventstore.schema.MIGRATIONS), with rows shaped like the daemon's: streams
``account-<opaque id>`` over many accounts, event ids derived from inputs (``v2:<sha256 hex>#k``,
``auth:<id>#0``, ``timer:<id>#0``), 200-400 bytes of JSON data, a 64-hex hash chain. Each
contender gets its own copy of that log, and in one run:

- (a) `EventStore.append`, 256 concurrent tasks, one event per call, synchronous=FULL, new events
  with input-derived ids on existing accounts' streams;
- (b) raw sqlite3: the same kind of rows inserted into the same table (same indexes, WAL, FULL,
  and the store writer's pragmas), one `executemany` + COMMIT per 256 rows (the store's batch
  at 256 appenders); precomputed rows, no hashing, no checks; SQLite's own WAL checkpoints
  (every 1,000 pages, in the committing connection);
- (b2) the same as (b) with the store's WAL bound (`WAL_AUTOCHECKPOINT_PAGES`) but no checkpointer
  thread: what the store's larger WAL alone gives raw inserts;
- (c) a lone appender (one task, one event per call) against the `eventsourcing` library's SQLite
  application recorder (one event per `insert_events`), both WAL with synchronous=FULL.

(a), (b) and (b2) take turns ``--rounds`` times, each on its own copy, so all see the same log
growing by the same amount.
``--index-costs`` adds a table of raw inserts with and without each index.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import print_table
from eventstore import EventStore, NewEvent
from eventstore.chain import format_time
from eventstore.schema import MIGRATIONS
from eventstore.writer import WAL_AUTOCHECKPOINT_PAGES, WRITER_PRAGMAS

APPENDERS = 256
_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
TYPES = ("ProviderNotified", "AuthReported", "TimerDue", "EffectOutcome", "StateChanged")
# The events table without its two UNIQUE constraints, for --index-costs.
_BARE_EVENTS = """
CREATE TABLE events (
    position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
    type TEXT NOT NULL, schema INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL,
    event_id TEXT NOT NULL, recorded_at TEXT NOT NULL, prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)"""
_INDEXES = {
    "event_id": "CREATE UNIQUE INDEX events_event_id ON events (event_id)",
    "stream, version": "CREATE UNIQUE INDEX events_stream_version ON events (stream, version)",
}


class Rows:
    """Deterministic realistic rows: accounts, input-derived ids, JSON data, a 64-hex chain."""

    def __init__(self, events: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.accounts = [f"account-{uuid.UUID(int=self.rng.getrandbits(128)).hex}" for _ in
                         range(max(events // 16, 100))]  # fmt: skip
        self.versions: dict[str, int] = {}
        self.position = 0
        self.prev = "0" * 64
        self.at = datetime(2026, 1, 1, tzinfo=UTC)
        self.pending: list[str] = []  # ids still to come of the current input

    def event_id(self) -> str:
        if self.pending:
            return self.pending.pop()
        r = self.rng.random()
        if r < 0.6:
            digest = hashlib.sha256(self.rng.randbytes(32)).hexdigest()
            n = self.rng.randint(1, 3)
            self.pending = [f"v2:{digest}#{k}" for k in range(n - 1, 0, -1)]
            return f"v2:{digest}#0"
        if r < 0.85:
            return f"auth:{uuid.UUID(int=self.rng.getrandbits(128))}#0"
        return f"timer:{self.rng.getrandbits(64):016x}#0"

    def data(self, stream: str) -> str:
        doc: dict[str, Any] = {
            "account_id": stream[8:],
            "grant_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "provider": self.rng.choice(("google", "microsoft", "imap")),
            "email": f"user{self.rng.getrandbits(24)}@example.com",
            "state": self.rng.choice(("stopped_waiting", "running", "auth_pending")),
            "due_at": "2026-11-25T11:42:00.000000Z",
        }
        doc["detail"] = "x" * self.rng.randint(0, 160)
        return json.dumps(doc)

    def row(self, stream: str | None = None) -> tuple[Any, ...]:
        stream = stream or self.rng.choice(self.accounts)
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        self.position += 1
        if self.position % 100 == 0:
            self.at += timedelta(milliseconds=7)
        digest = hashlib.sha256(self.prev.encode()).hexdigest()
        row = (
            self.position, stream, version, self.rng.choice(TYPES), 1, self.data(stream),
            '{"source":"bench"}', self.event_id(), format_time(self.at), self.prev, digest,
        )  # fmt: skip
        self.prev = digest
        return row

    def batches(self, total: int, size: int) -> Iterator[list[tuple[Any, ...]]]:
        done = 0
        while done < total:
            n = min(size, total - done)
            yield [self.row() for _ in range(n)]
            done += n


def build_base(path: Path, events: int, *, bare: bool = False) -> float:
    """Write the base log (the store's schema, or the bare table); returns seconds."""
    start = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -4000000")  # 4 GB: the random index inserts stay in memory
    conn.execute("BEGIN")
    if bare:
        conn.execute(_BARE_EVENTS)
    else:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for version, script in sorted(MIGRATIONS.items()):
            _script(conn, script)
            conn.execute("INSERT INTO schema_migrations VALUES (?, '2026-01-01')", (version,))
    for batch in Rows(events, seed=1).batches(events, 10_000):
        conn.executemany(_INSERT, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return time.perf_counter() - start


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run a migration's statements inside the open transaction (executescript would COMMIT)."""
    buf = ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""


def new_rows(events: int, base_events: int, seed: int) -> Rows:
    """A generator of further rows for the log of `base_events` (same accounts, fresh ids)."""
    rows = Rows(base_events, seed=1)  # the same accounts as the base log
    rows.rng = random.Random(seed)
    rows.position = base_events
    rows.at = datetime(2026, 6, 1, tzinfo=UTC)
    return rows


def new_events(n: int, base_events: int, seed: int) -> list[NewEvent]:
    rows = new_rows(n, base_events, seed)
    out = []
    for _ in range(n):
        r = rows.row()
        out.append(NewEvent(r[1], r[3], r[5].encode(), event_id=r[7]))
    return out


async def store_appends(path: Path, events: list[NewEvent], appenders: int) -> tuple[float, float]:
    """Seconds for `appenders` tasks to append `events` one per call, and the mean batch."""
    commits: list[int] = []
    async with await EventStore.open(path, synchronous="FULL") as store:
        store.observe_commits(lambda _s, n: commits.append(n))
        share = [events[k::appenders] for k in range(appenders)]

        async def appender(mine: list[NewEvent]) -> None:
            for event in mine:
                await store.append([event])

        start = time.perf_counter()
        await asyncio.gather(*(appender(m) for m in share))
        secs = time.perf_counter() - start
    return secs, sum(commits) / max(len(commits), 1)


def raw_connection(path: Path, wal_pages: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    if wal_pages is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
    for pragma in WRITER_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    return conn


def raw_inserts(
    path: Path, n: int, base_events: int, batch: int, seed: int, wal_pages: int | None = None
) -> float:
    """Seconds for raw sqlite3 to insert `n` precomputed rows, `batch` per COMMIT."""
    conn = raw_connection(path, wal_pages)
    rows = new_rows(n, base_events, seed)
    rows.versions = dict(conn.execute("SELECT stream, MAX(version) FROM events GROUP BY stream"))
    batches = list(rows.batches(n, batch))
    start = time.perf_counter()
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    secs = time.perf_counter() - start
    conn.close()
    return secs


def head_position(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT MAX(position) FROM events").fetchone()[0] or 0)
    finally:
        conn.close()


def eventsourcing_saves(path: Path, n: int) -> tuple[float, str] | str:
    """Seconds for `n` one-event saves through eventsourcing's SQLite recorder, and its pragmas."""
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
    except ImportError:
        return "eventsourcing is not installed (pip install -e '.[bench]')"
    datastore = SQLiteDatastore(str(path))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    with datastore.transaction(commit=False) as c:
        c.execute("PRAGMA journal_mode")
        journal = c.fetchone()[0]
        c.execute("PRAGMA synchronous")
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[c.fetchone()[0]]
    rng = random.Random(7)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(max(n // 16, 1))]
    versions: dict[uuid.UUID, int] = {}
    data = json.dumps({"account_id": "acc_6f1c2b9e4d", "detail": "x" * 200}).encode()
    saves = []
    for _ in range(n):
        oid = rng.choice(ids)
        versions[oid] = versions.get(oid, 0) + 1
        saves.append([StoredEvent(oid, versions[oid], "bench:Event", data)])
    start = time.perf_counter()
    for events in saves:
        recorder.insert_events(events)
    secs = time.perf_counter() - start
    datastore.close()
    return secs, f"journal_mode={journal}, synchronous={sync}"


def index_costs(work: Path, events: int, n: int, batch: int) -> list[list[str]]:
    """Raw inserts on the base log with each combination of the two UNIQUE indexes."""
    bare = work / "bare.db"
    build_base(bare, events, bare=True)
    out = []
    for name, indexes in (
        ("both (the store's schema)", list(_INDEXES)),
        ("only event_id", ["event_id"]),
        ("only (stream, version)", ["stream, version"]),
        ("neither", []),
    ):
        path = work / "variant.db"
        shutil.copyfile(bare, path)
        conn = sqlite3.connect(path, isolation_level=None)
        for index in indexes:
            conn.execute(_INDEXES[index])
        conn.close()
        os.sync()
        secs = raw_inserts(path, n, events, batch, seed=99)
        size = os.path.getsize(path)
        out.append([name, f"{n / secs:,.0f}", f"{size / 2**20:,.0f}"])
        _remove(path)
    _remove(bare)
    return out


def _remove(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def _copy(base: Path, dest: Path) -> Path:
    _remove(dest)
    shutil.copyfile(base, dest)
    return dest


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.2f}"
    return f"{min(values):,.2f}-{max(values):,.2f}"


def rate_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.0f}/s"
    return f"{min(values):,.0f}-{max(values):,.0f}/s"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events in the base log")
    parser.add_argument("--appends", type=int, default=50_000, help="events appended per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating (a)/(b) rounds")
    parser.add_argument("--lone", type=int, default=2_000, help="events of the lone appenders")
    parser.add_argument("--batch", type=int, default=APPENDERS, help="rows per raw COMMIT")
    parser.add_argument("--dir", type=Path, default=None, help="where the logs are built")
    parser.add_argument("--keep", action="store_true", help="keep the base log in --dir, reuse it")
    parser.add_argument("--index-costs", action="store_true", help="raw inserts by index")
    args = parser.parse_args()
    if args.keep and args.dir is None:
        parser.error("--keep needs --dir")
    n = args.appends - args.appends % APPENDERS
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        base = (args.dir / f"appends-base-{args.events}.db") if args.keep else work / "base.db"
        if base.exists() and head_position(base) == args.events:
            print(f"base log: {args.events:,} events, kept from an earlier run ({base})")
        else:
            _remove(base)
            secs = build_base(base, args.events)
            print(f"base log: {args.events:,} events built in {secs:.0f} s ({base})")
        size = base.stat().st_size
        print(f"  {size / 2**20:,.0f} MiB; writer pragmas: "
              f"{', '.join(WRITER_PRAGMAS) or '(SQLite defaults)'}")  # fmt: skip
        a_db, b_db, b2_db = (_copy(base, work / f"{x}.db") for x in ("a", "b", "b2"))
        os.sync()  # the copies' writes reach the disk before anything is timed
        rates: dict[str, list[float]] = {"a": [], "b": [], "b2": []}
        batch = args.batch
        mean_batch = 0.0

        async def store_round(seed: int) -> float:
            nonlocal mean_batch
            events = new_events(n, head_position(a_db), seed=seed)
            secs, mean_batch = await store_appends(a_db, events, APPENDERS)
            return n / secs

        async def raw_round(path: Path, seed: int, wal_pages: int | None = None) -> float:
            return n / raw_inserts(path, n, head_position(path), batch, seed, wal_pages)

        for r in range(args.rounds):
            seed = 1000 + r
            contenders = [
                ("a", functools.partial(store_round, seed)),
                ("b", functools.partial(raw_round, b_db, seed)),
                ("b2", functools.partial(raw_round, b2_db, seed, WAL_AUTOCHECKPOINT_PAGES)),
            ]
            # Take turns at going first: the one after pays for the other's checkpoint writes.
            for name, run in contenders[r % 3 :] + contenders[: r % 3]:
                rates[name].append(await run())
            a, b, b2 = (rates[x][-1] for x in ("a", "b", "b2"))
            print(f"  round {r + 1}: (a) store {a:,.0f}/s (mean batch {mean_batch:.0f})  "
                  f"(b) raw {b:,.0f}/s  (b2) raw, store's WAL bound {b2:,.0f}/s  "
                  f"ratios {a / b:.2f}x, {a / b2:.2f}x", flush=True)  # fmt: skip
        _remove(b_db)
        _remove(b2_db)
        print(f"\n{n:,} events per round, {args.rounds} rounds, log of {args.events:,} events,"
              f" raw batches of {batch}")  # fmt: skip
        to_b = [x / y for x, y in zip(rates["a"], rates["b"], strict=True)]
        to_b2 = [x / y for x, y in zip(rates["a"], rates["b2"], strict=True)]
        print_table(
            ["contender", "events/s", "ratio to (b)", "ratio to (b2)"],
            [
                [f"(a) EventStore.append, {APPENDERS} appenders", rate_spread(rates["a"]),
                 spread(to_b) + "x", spread(to_b2) + "x"],
                ["(b) raw sqlite3 batches (same table)", rate_spread(rates["b"]), "1x", ""],
                [f"(b2) raw, wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
                 rate_spread(rates["b2"]), "", "1x"],
            ],
        )  # fmt: skip

        lone = max(args.lone, 10)
        events = new_events(lone, head_position(a_db), seed=5)
        secs, _ = await store_appends(a_db, events, 1)
        on_log = lone / secs
        _remove(a_db)
        os.sync()
        # New logs, alternating, one pair per round: each round's ratio is measured side by side.
        fresh_rates, es_rates, es_ratios = [], [], []
        es_pragmas = ""
        for r in range(args.rounds):
            fresh = _remove(work / "fresh.db")
            events = new_events(lone, 0, seed=6 + r)
            secs, _ = await store_appends(fresh, events, 1)
            fresh_rates.append(lone / secs)
            _remove(fresh)
            es = eventsourcing_saves(_remove(work / "es.db"), lone)
            if isinstance(es, str):
                es_pragmas = es
                continue
            es_pragmas = es[1]
            es_rates.append(lone / es[0])
            es_ratios.append(fresh_rates[-1] / es_rates[-1])
        print(f"\n(c) a lone appender, one event per call, {lone:,} events, WAL + synchronous=FULL")
        rows = [
            [f"EventStore.append, on the {args.events:,}-event log", f"{on_log:,.0f}/s", ""],
            ["EventStore.append, on a new log", rate_spread(fresh_rates), spread(es_ratios) + "x"
             if es_ratios else ""],
        ]  # fmt: skip
        if es_rates:
            rows.append(
                [
                    f"eventsourcing insert_events, new log ({es_pragmas})",
                    rate_spread(es_rates),
                    "1x",
                ]
            )
        else:
            print(f"  eventsourcing skipped: {es_pragmas}")
        print_table(["contender", "events/s", "ratio to eventsourcing"], rows)

        if args.index_costs:
            batch = args.batch
            print(f"\nwhat each index costs: raw inserts of {n:,} events, batches of {batch}, "
                  f"on a {args.events:,}-event log")  # fmt: skip
            print_table(["UNIQUE indexes", "events/s", "MiB"], index_costs(work, args.events, n,
                        batch))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
