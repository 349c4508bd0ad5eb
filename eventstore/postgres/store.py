"""PostgresStore: the same log as EventStore's, kept in a PostgreSQL database.

The same columns, the same planner (eventstore/planner.py) and hash chain (eventstore/chain.py),
the same verify pass (eventstore/verify.py): a log copied from SQLite verifies and exports
byte for byte the same. What differs is only how statements reach the database:

- writes go through `PgWriteConnection`, one asyncpg connection owned by the store's single
  `Writer` (group commit as on SQLite). Each batch is one transaction that first takes the
  log's advisory lock (`schema.WRITE_LOCK`), then reads the head, plans and inserts, so
  positions are gap-free and in commit order even with several writing processes
  (docs/log-format.md, "PostgreSQL"). A lost connection is replaced at the next batch: the
  store recovers by itself when the server returns.
- reads go through a small asyncpg pool (a read retried once on a fresh connection when the
  one it got was lost), and verify() reads one REPEATABLE READ snapshot of the whole log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..chain import GENESIS, format_time, key_fingerprint, sign_checkpoint
from ..connections import Opening
from ..errors import DatabaseCorrupt, DatabaseMissing, EventStoreError, InvalidEvent
from ..planner import BatchPlan, PlannedCall, plan_batch, record_from_row
from ..records import ANY, AppendCall, AppendResult, NewEvent
from ..schema import EVENT_COLUMNS
from ..snapshots import MemorySnapshotReader, SnapshotReader
from ..store import (
    EventStore,
    OpenOptions,
    SignedCheckpoint,
    register_url_opener,
    split_parts,
)
from ..verify import RowVisitor, VerifyReport, verify_log
from ..writer import Writer
from .errors import connection_lost, translate_pg
from .leadership import CommitNotices, Leadership
from .schema import MIGRATIONS, NOTIFY_CHANNEL, TRIGGERS, WRITE_LOCK, migrate, schema_version

__all__ = ["PgWriteConnection", "PostgresStore", "is_database_url", "redact_url"]

T = TypeVar("T")

_SCHEMES = ("postgresql://", "postgres://")
_HEAD = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_WRITE_HEAD = "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1"
_VERSIONS = "SELECT stream, MAX(version) FROM events WHERE stream = ANY($1::text[]) GROUP BY stream"
_STORED = f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1::text[])"  # noqa: S608
# One statement for the whole batch, whatever its size: the rows as eleven arrays.
_INSERT = (
    "INSERT INTO events (position, stream, version, type, schema, data, metadata, event_id,"
    " recorded_at, prev_hash, hash) SELECT * FROM unnest($1::bigint[], $2::text[],"
    " $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[],"
    " $10::text[], $11::text[])"
)
_SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (name, position, blob, saved_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " blob = excluded.blob, saved_at = excluded.saved_at"
)
# What verify() asks SQLite's catalogue for, asked of PostgreSQL's: the enabled triggers.
_TRIGGER_NAMES = (
    "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('events')"
    " AND NOT tgisinternal AND tgenabled <> 'D'"
)
_NOTIFY = "SELECT pg_notify($1, $2)"
_SMALLEST = -(2**63)
_SYNC = {"NORMAL": "off", "FULL": "on", "EXTRA": "on"}


def is_database_url(target: object) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL rather than a file path."""
    return isinstance(target, str) and target.startswith(_SCHEMES)


def redact_url(url: str) -> str:
    """`url` without its password (safe to log and to show as the store's `path`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


@lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """SQLite's `?` parameters as PostgreSQL's `$1, $2, ...` (the shared statements have no `?`
    inside literals)."""
    counter = iter(range(1, 1 << 20))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _arg(value: Any) -> Any:
    # verify's cursor starts at -inf so that rows below position 1 are read too.
    return _SMALLEST if value == float("-inf") else value


def _check_text(call: AppendCall) -> None:
    """PostgreSQL's text cannot hold NUL: refuse such a call alone, before it joins a batch."""
    for e in call.events:
        if "\x00" in e.stream or "\x00" in e.type or "\x00" in (e.event_id or ""):
            raise InvalidEvent("stream, type and event_id must not contain NUL characters")


class _Connect:
    """How to reach the database: the URL (libpq's form; sslmode, sslrootcert and the other TLS
    settings in it are passed through), an optional password, and the session settings."""

    def __init__(
        self, url: str, password: str | None, busy_timeout: float, settings: dict[str, str]
    ) -> None:
        self.url = url
        self.password = password
        self.busy_timeout = busy_timeout
        # lock_timeout bounds the wait for the log's write lock like SQLite's busy_timeout.
        self.settings = {
            "lock_timeout": str(max(1, int(busy_timeout * 1000))),
            "application_name": "staticipd",
            **settings,
        }

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dsn": self.url,
            "timeout": max(self.busy_timeout, 1.0),
            "server_settings": self.settings,
        }
        if self.password is not None:
            out["password"] = self.password
        return out

    async def connect(self, settings: Mapping[str, str] | None = None) -> asyncpg.Connection:
        kwargs = self.kwargs()
        if settings:
            kwargs["server_settings"] = {**self.settings, **settings}
        return await asyncpg.connect(**kwargs)

    def with_settings(self, settings: Mapping[str, str]) -> _Connect:
        """The same, with more session settings."""
        return _Connect(self.url, self.password, self.busy_timeout, {**self.settings, **settings})

    async def pool(self, size: int) -> asyncpg.Pool:
        return await asyncpg.create_pool(min_size=1, max_size=size, **self.kwargs())


class PgWriteConnection:
    """The writer's connection (a `writer.WriteTarget`): runs each batch and job in one
    transaction, and opens a new connection when the last one was lost."""

    def __init__(self, connect: _Connect, conn: asyncpg.Connection | None) -> None:
        self._connect = connect
        self._conn = conn
        # With leadership (PostgresStore.lead): the fence every transaction runs under the
        # write lock, raising NotLeader unless this process holds the leader lock.
        self.fence: Callable[[asyncpg.Connection], Awaitable[None]] | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await self._connect.connect()
        return self._conn

    async def _in_transaction(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            conn = await self._connection()
            async with conn.transaction():
                return await body(conn)
        except BaseException as exc:
            if connection_lost(exc) or isinstance(exc, asyncio.CancelledError):
                await self._drop()
            if isinstance(exc, Exception):
                # The writer knows SQLite's errors only: it gets ours already translated.
                raise translate_pg(exc) from exc
            raise

    async def _drop(self) -> None:
        """Forget a connection that failed (or was interrupted mid-statement)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def write_batch(
        self, calls: list[PlannedCall], head_hash: str, now_text: str
    ) -> tuple[BatchPlan, float]:
        started = time.perf_counter()

        async def body(conn: asyncpg.Connection) -> BatchPlan:
            # The log's write lock first (see the module's text and schema.WRITE_LOCK): the head
            # read below is then the last committed one and nobody commits before us.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            if self.fence is not None:
                await self.fence(conn)
            head = await conn.fetchrow(_WRITE_HEAD)
            head_pos, head_hash_now = (head[0], head[1]) if head else (0, head_hash)
            # Another process may have written since this one opened the log (the old leader
            # before a takeover), by a clock ahead of ours: the log's times never go back.
            batch_time = max(now_text, head[2]) if head else now_text
            streams = list({e.stream for c in calls for e in c[0]})
            ids = {e.event_id for c in calls for e in c[0]}
            ids.update(g for c in calls for g in c[2])
            versions = {r[0]: r[1] for r in await conn.fetch(_VERSIONS, streams)}
            stored = {r[7]: record_from_row(tuple(r)) for r in await conn.fetch(_STORED, list(ids))}
            plan = plan_batch(calls, head_pos, head_hash_now, versions, stored, batch_time)
            if plan.rows:
                await conn.execute(_INSERT, *(list(col) for col in zip(*plan.rows, strict=True)))
                # Standbys following the log wake on this, sent when the transaction commits.
                await conn.execute(_NOTIFY, NOTIFY_CHANNEL, str(plan.head_position))
            return plan

        plan = await self._in_transaction(body)
        return plan, time.perf_counter() - started

    async def run_job(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        fence = self.fence
        if fence is None:
            return await self._in_transaction(fn)

        async def fenced(conn: asyncpg.Connection) -> T:
            # Snapshots and checkpoints too: a fenced leader writes nothing at all.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            await fence(conn)
            return await fn(conn)

        return await self._in_transaction(fenced)

    def add_settings(self, settings: Mapping[str, str]) -> None:
        """Session settings for the connections opened from now on (see PostgresStore.lead)."""
        self._connect = self._connect.with_settings(settings)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()


class PostgresStore(EventStore):
    """EventStore's public methods on a PostgreSQL database (open with `EventStore.open(url)`)."""

    def __init__(
        self, url: str, writer: Writer | None, pool: asyncpg.Pool, busy_timeout: float
    ) -> None:
        # The SQLite reader's slot is unused here: reads go through `_pool`.
        super().__init__(redact_url(url), writer, None, busy_timeout)  # type: ignore[arg-type]
        self._pool = pool
        self._connect: _Connect | None = None
        self._target: PgWriteConnection | None = None
        self.leadership: Leadership | None = None

    @classmethod
    async def open_url(
        cls, url: str, password: str | None = None, options: OpenOptions | None = None
    ) -> PostgresStore:
        """Open the log in the database at `url` (see EventStore.open for the options)."""
        options = options or OpenOptions()
        synchronous, readonly, busy_timeout = (
            options.synchronous,
            options.readonly,
            options.busy_timeout,
        )
        sync = synchronous.upper()
        if sync not in _SYNC:
            raise ValueError(f"synchronous must be one of {tuple(_SYNC)}, not {synchronous!r}")
        settings = {"synchronous_commit": _SYNC[sync]}
        if readonly:
            settings["default_transaction_read_only"] = "on"
        connect = _Connect(url, password, busy_timeout, settings)
        where = redact_url(url)
        wconn: asyncpg.Connection | None = None
        pool: asyncpg.Pool | None = None
        try:
            wconn = await connect.connect()
            version = await schema_version(wconn)
            if version is None and (readonly or not options.create):
                raise DatabaseMissing(f"no event store at {where} (no schema_migrations table)")
            if readonly or (version is not None and version >= max(MIGRATIONS)):
                await _check_schema(wconn, where, version)
            else:
                await migrate(wconn)
            head = await wconn.fetchrow(_WRITE_HEAD)
            pool = await connect.pool(4)
        except BaseException as exc:
            if wconn is not None:
                wconn.terminate()
            if pool is not None:
                pool.terminate()
            if isinstance(exc, Exception):
                raise translate_pg(exc) from exc
            raise
        if readonly:
            wconn.terminate()
            return cls(url, None, pool, busy_timeout)
        pos, hsh, last_time = (head[0], head[1], head[2]) if head else (0, GENESIS, "")
        target = PgWriteConnection(connect, wconn)
        writer = Writer(
            target,
            queue_size=options.queue_size,
            max_batch=options.max_batch,
            clock=options.clock,
            head_position=pos,
            head_hash=hsh,
            last_recorded_at=last_time,
        )
        store = cls._with_writer(url, writer, pool, busy_timeout, supervised=options.supervised)
        store._connect, store._target = connect, target
        return store

    @classmethod
    def open_opening(
        cls, url: str, password: str | None, options: OpenOptions
    ) -> Opening[EventStore]:
        async def factory() -> EventStore:
            return await cls.open_url(url, password, options)

        return Opening(factory)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                await self._writer.stop()
        finally:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except Exception:
                self._pool.terminate()

    # -- leadership (docs/log-format.md, "Leadership") -------------------------------------------

    async def lead(self, lease: float) -> Leadership:
        """Take part in leadership of this log: from now on every commit of this store is fenced
        (NotLeader unless the returned Leadership holds the leader lock), and a transaction of
        the writer left idle longer than `lease` seconds (a paused process) is ended by the
        server. The caller acquires and holds the lock (Leadership.acquire, .hold)."""
        self._require_writer("lead")
        connect, target = self._connect, self._target
        assert connect is not None
        assert target is not None
        leadership = Leadership(connect.connect, lease)
        idle = {"idle_in_transaction_session_timeout": str(max(1, int(lease * 1000)))}
        target.add_settings(idle)

        async def job(conn: asyncpg.Connection) -> None:
            for name, value in idle.items():
                await conn.execute("SELECT set_config($1, $2, false)", name, value)

        await self._job("lead", job)
        target.fence = leadership.check
        self.leadership = leadership
        return leadership

    def commit_notices(self) -> CommitNotices:
        """A listener for the commits of any process on this log (see CommitNotices)."""
        assert self._connect is not None
        return CommitNotices(self._connect.connect)

    async def wait_out_commits(self) -> None:
        """Return once every commit in flight has ended, whoever makes it: one empty
        transaction of the writer under the write lock (fenced, with leadership)."""

        async def job(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)

        await self._job("wait_out_commits", job)

    # -- writing --------------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: int | Mapping[str, int] = ANY,
        *,
        enqueue_timeout: float | None = None,
        if_absent: str | Sequence[str] | None = None,
    ) -> AppendResult:
        # EventStore.append hands its call to the writer directly: refuse NUL here first.
        _check_text(AppendCall(events, expected, if_absent))
        return await super().append(
            events, expected, enqueue_timeout=enqueue_timeout, if_absent=if_absent
        )

    async def append_many(
        self, calls: Sequence[AppendCall], *, enqueue_timeout: float | None = None
    ) -> list[AppendResult | EventStoreError]:
        refused: dict[int, EventStoreError] = {}
        for i, call in enumerate(calls):
            try:
                _check_text(call)
            except InvalidEvent as exc:
                refused[i] = exc
        if not refused:
            return await super().append_many(calls, enqueue_timeout=enqueue_timeout)
        rest = [c for i, c in enumerate(calls) if i not in refused]
        done = iter(await super().append_many(rest, enqueue_timeout=enqueue_timeout))
        return [refused[i] if i in refused else next(done) for i in range(len(calls))]

    async def _job(self, operation: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await self._require_writer(operation).run_async_job(fn)

    async def set_consumer_position(self, name: str, position: int) -> None:
        now = format_time(datetime.now(UTC))

        async def job(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO consumer_positions (name, position, updated_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at",
                name,
                position,
                now,
            )

        await self._job("set_consumer_position", job)

    async def save_snapshot(self, name: str, position: int, blob: bytes) -> None:
        now = format_time(datetime.now(UTC))

        async def job(conn: asyncpg.Connection) -> None:
            await conn.execute(_SAVE_SNAPSHOT, name, position, bytes(blob), now)

        await self._job("save_snapshot", job)

    async def checkpoint(self, key: bytes, key_id: str | None = None) -> SignedCheckpoint:
        key_id = key_fingerprint(key) if key_id is None else key_id
        created_text = format_time(datetime.now(UTC))

        async def job(conn: asyncpg.Connection) -> SignedCheckpoint:
            # Under the write lock: the head signed is the last committed, not one in flight.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            row = await conn.fetchrow(_HEAD)
            pos, hsh = (row[0], row[1]) if row else (0, GENESIS)
            sig = sign_checkpoint(key, pos, hsh, created_text, key_id)
            await conn.execute(
                "INSERT INTO checkpoints (position, head_hash, created_at, key_id, signature)"
                " VALUES ($1, $2, $3, $4, $5)",
                pos,
                hsh,
                created_text,
                key_id,
                sig,
            )
            return SignedCheckpoint(pos, hsh, datetime.fromisoformat(created_text), key_id, sig)

        return await self._job("checkpoint", job)

    async def probe(self) -> bool:
        async def job(conn: asyncpg.Connection) -> None:
            await conn.fetchrow(_HEAD)

        try:
            await self._job("probe", job)
        except EventStoreError:
            return False
        return True

    async def save_snapshot_parts(
        self,
        name: str,
        position: int,
        header: bytes | None,
        parts: Iterable[tuple[str, bytes | None] | tuple[str, bytes, str, str | None]],
        *,
        complete: bool = False,
    ) -> None:
        now = format_time(datetime.now(UTC))
        upserts, removals = split_parts(name, parts)

        async def job(conn: asyncpg.Connection) -> None:
            if complete:
                await conn.execute("DELETE FROM snapshot_parts WHERE name = $1", name)
            if header is None:
                await conn.execute("DELETE FROM snapshots WHERE name = $1", name)
            else:
                await conn.execute(_SAVE_SNAPSHOT, name, position, bytes(header), now)
            if removals:
                await conn.executemany(
                    "DELETE FROM snapshot_parts WHERE name = $1 AND key = $2", removals
                )
            if upserts:
                await conn.executemany(
                    "INSERT INTO snapshot_parts (name, key, blob, label, at)"
                    " VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (name, key) DO UPDATE SET blob = excluded.blob,"
                    " label = excluded.label, at = excluded.at",
                    upserts,
                )

        await self._job("save_snapshot_parts", job)

    async def backup(self, dest: str | os.PathLike[str]) -> tuple[int, str]:
        """Not for a PostgreSQL log: back it up with the server's own tools (pg_dump, base
        backups); `staticipd copy-log` copies an SQLite log into PostgreSQL."""
        self._check_open()
        raise EventStoreError(
            "backup copies an SQLite log; back up a PostgreSQL log with pg_dump or base backups"
        )

    # -- reading --------------------------------------------------------------------------------

    async def open_snapshot(self, name: str) -> SnapshotReader | None:
        """The keyed snapshot `name` read whole, header and every part, in one REPEATABLE READ
        transaction: asyncpg cannot serve the reader's blocking calls, so they are served from
        memory (None when there is no snapshot)."""
        self._check_open()
        try:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                head = await conn.fetchrow(
                    "SELECT position, blob FROM snapshots WHERE name = $1", name
                )
                if head is None:
                    return None
                # A log of schema 2 opened read-only (not migrated) has no labels or times.
                labelled = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'snapshot_parts'"
                    " AND column_name = 'label')"
                )
                select = (
                    "SELECT key, blob, label, at FROM snapshot_parts WHERE name = $1"
                    if labelled
                    else "SELECT key, blob, '', NULL FROM snapshot_parts WHERE name = $1"
                )
                rows = await conn.fetch(select, name)
        except Exception as exc:
            raise translate_pg(exc) from exc
        parts = [(r[0], bytes(r[1]), r[2], r[3]) for r in rows]
        return MemorySnapshotReader(head[0], bytes(head[1]), parts)

    def part_fetcher(self, name: str) -> Callable[[str], bytes | None] | None:
        """None: asyncpg cannot read a part synchronously on the caller's thread, so a loader
        reads every part at once instead (`open_snapshot`)."""
        self._check_open()
        return None

    async def stored_event_ids(self, event_ids: Collection[str]) -> set[str]:
        """Which of `event_ids` are stored: one query on the pool, however many (no SQLite
        lookup connection here)."""
        if not event_ids:
            self._check_open()
            return set()
        rows = await self._fetch(
            "SELECT event_id FROM events WHERE event_id = ANY($1::text[])", [list(event_ids)]
        )
        return {row[0] for row in rows}

    async def verify(
        self,
        checkpoint_key: bytes | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        visit: RowVisitor | None = None,
    ) -> VerifyReport:
        self._check_open()
        try:
            # One snapshot of the whole log for the whole pass, however long it takes.
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await verify_log(
                    _Rows(conn),
                    checkpoint_key,
                    progress=progress,
                    visit=visit,
                    triggers=TRIGGERS,
                    trigger_names=_TRIGGER_NAMES,
                )
        except Exception as exc:
            raise translate_pg(exc) from exc

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one of EventStore's read statements (SQLite's `?` form) on a pooled connection;
        once more on a fresh one when the connection it got had been lost (a server restart)."""
        self._check_open()
        query, args = _numbered(sql), [_arg(p) for p in params]
        for attempt in (1, 2):
            try:
                return list(await self._pool.fetch(query, *args))
            except Exception as exc:
                if attempt == 1 and connection_lost(exc):
                    continue
                raise translate_pg(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover


class _Rows:
    """verify_log's view of a connection: `execute_fetchall` with SQLite's `?` parameters."""

    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        return list(await self._conn.fetch(_numbered(sql), *(_arg(p) for p in parameters)))


async def _check_schema(conn: asyncpg.Connection, where: str, version: int | None) -> None:
    """A database opened without migrating must be a staticipd log this build can read."""
    if version not in MIGRATIONS:
        raise DatabaseCorrupt(
            f"not a staticipd log this build can read: {where} is at schema version {version},"
            f" this build knows versions 1 to {max(MIGRATIONS)}"
        )
    if not await conn.fetchval("SELECT to_regclass('events') IS NOT NULL"):
        raise DatabaseCorrupt(f"not a staticipd log: {where} has no events table")


for _scheme in _SCHEMES:
    register_url_opener(_scheme, PostgresStore.open_opening)
