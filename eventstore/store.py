"""EventStore: the public face of the log — open/close, append, reads, subscriptions, audit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import aiosqlite
import anyio
from anyio.abc import TaskStatus

from .backup import backup_log
from .chain import GENESIS, format_time, key_fingerprint, sign_checkpoint
from .connections import (
    Opening,
    check_log_schema,
    close_quietly,
    connect,
    connect_readonly,
    readonly_uri,
)
from .errors import (
    DatabaseMissing,
    EventStoreError,
    InvalidEvent,
    StoreClosed,
    translate,
)
from .planner import check_expectation, prepare_event, record_from_row, records_from_rows
from .records import ANY, LAST_POSITION, AppendCall, AppendResult, NewEvent, RecordedEvent
from .schema import EVENT_COLUMNS, migrate
from .snapshots import SnapshotReader, SqliteSnapshotReader
from .verify import RowVisitor, VerifyReport, verify_log
from .writer import WriteConnection, Writer, chunks, marks

__all__ = ["EventStore", "ReadOnlyStore", "SignedCheckpoint"]

_C = TypeVar("_C")
_R = TypeVar("_R")

# A snapshot's row: its whole value, or the header of a keyed one (save_snapshot_parts).
_SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (name, position, blob, saved_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " blob = excluded.blob, saved_at = excluded.saved_at"
)

_QUICK_IDS = 16  # stored_event_ids looks up at most this many on the caller's thread
_SELECT = "SELECT " + EVENT_COLUMNS + " FROM events WHERE "  # noqa: S608 — constant columns
_READ_ALL = _SELECT + "position BETWEEN ? AND ? ORDER BY position LIMIT ?"
_READ_STREAM = _SELECT + "stream = ? AND version >= ? ORDER BY version LIMIT ?"
_GET_EVENT = _SELECT + "event_id = ?"
_SYNC_MODES = ("NORMAL", "FULL", "EXTRA")


@dataclass(frozen=True, slots=True)
class OpenOptions:
    """How `EventStore.open` was asked to open a log (see its text), for whichever backend."""

    synchronous: str = "FULL"
    create: bool = True
    readonly: bool = False
    queue_size: int = 10_000
    max_batch: int = 1_000
    clock: Callable[[], datetime] | None = None
    busy_timeout: float = 5.0
    supervised: bool = False


class ReadOnlyStore(EventStoreError):
    """The store was opened with readonly=True: it reads and verifies, and never writes."""


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A recorded (position, head hash, time) with an HMAC-SHA256 signature by key `key_id`."""

    position: int
    head_hash: str
    created_at: datetime
    key_id: str
    signature: str


class EventStore:
    """Append-only, hash-chained event log in one SQLite file; one instance per process and file."""

    def __init__(
        self,
        path: str,
        writer: Writer | None,
        reader: aiosqlite.Connection,
        busy_timeout: float,
    ) -> None:
        self._path = path
        self._writer = writer  # None: opened read-only
        self._reader = reader
        self._busy_timeout = busy_timeout
        self._closed = False
        self._writer_task: asyncio.Task[None] | None = None  # when the store runs its writer
        self._lookups: sqlite3.Connection | None = None  # see _lookup_connection

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        create: bool = True,
        readonly: bool = False,
        queue_size: int = 10_000,
        max_batch: int = 1_000,
        clock: Callable[[], datetime] | None = None,
        busy_timeout: float = 5.0,
        supervised: bool = False,
        password: str | None = None,
    ) -> Opening[EventStore]:
        """Open (and by default create) the log at `path`, applying pending migrations.

        `path` may also be a ``postgresql://`` URL: the same log in a PostgreSQL database
        (eventstore/postgres; `password`, if given, is used with it), with the same methods.

        Use as ``store = await EventStore.open(path)`` or ``async with EventStore.open(path) as
        store:`` (the latter closes it). `clock` returns aware datetimes for recorded_at;
        `busy_timeout` (seconds) bounds the wait for a lock held by another process.

        The writer (the one task that writes) is started by the store, unless ``supervised=True``:
        then the owner runs it in its own task group (``await tg.start(store.run_writer)``), so a
        crash of the writer ends the group; until it runs, appends wait in the queue.

        ``readonly=True`` never writes to the file nor creates one: no pragma writes, no
        migrations, no writer task. The file must exist (else DatabaseMissing) and be a
        staticipd log at a schema version this build knows (else DatabaseCorrupt). Reads,
        verify() and load_snapshot() work; writing calls and subscribe() raise ReadOnlyStore.
        """
        options = OpenOptions(
            synchronous=synchronous,
            create=create,
            readonly=readonly,
            queue_size=queue_size,
            max_batch=max_batch,
            clock=clock,
            busy_timeout=busy_timeout,
            supervised=supervised,
        )
        opener = _url_opener(path)
        if opener is not None:
            return opener(os.fspath(path), password, options)
        if readonly:
            return Opening(lambda: cls._open_readonly(path, busy_timeout=busy_timeout))
        return Opening(lambda: cls._open(path, options))

    @classmethod
    async def _open(cls, path: str | os.PathLike[str], options: OpenOptions) -> EventStore:
        synchronous, busy_timeout = options.synchronous, options.busy_timeout
        sync = synchronous.upper()
        if sync not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {_SYNC_MODES}, not {synchronous!r}")
        path = os.fspath(path)
        if not options.create and not os.path.exists(path):  # noqa: ASYNC240 — one stat, at open
            raise DatabaseMissing(f"no event store at {path}")
        conns: list[aiosqlite.Connection] = []
        try:
            wconn = await connect(path, busy_timeout)
            conns.append(wconn)
            await wconn.execute("PRAGMA journal_mode = WAL")
            await wconn.execute(f"PRAGMA synchronous = {sync}")
            await migrate(wconn)
            head = list(
                await wconn.execute_fetchall(
                    "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1"
                )
            )
            rconn = await connect(path, busy_timeout)
            conns.append(rconn)
            await rconn.execute("PRAGMA query_only = 1")
        except BaseException as exc:
            for c in conns:
                await close_quietly(c)
            if isinstance(exc, Exception):
                raise translate(exc) from exc
            raise
        pos, hsh, last_time = head[0] if head else (0, GENESIS, "")
        # The schema is in place: from here the writer writes through its own thread and
        # connection (see WriteConnection), and this one is done.
        await close_quietly(wconn)
        try:
            own = await WriteConnection.open(path, busy_timeout, sync)
        except BaseException as exc:
            await close_quietly(rconn)
            if isinstance(exc, Exception):
                raise translate(exc) from exc
            raise
        writer = Writer(
            own,
            queue_size=options.queue_size,
            max_batch=options.max_batch,
            clock=options.clock,
            head_position=pos,
            head_hash=hsh,
            last_recorded_at=last_time,
        )
        return cls._with_writer(path, writer, rconn, busy_timeout, supervised=options.supervised)

    @classmethod
    def _with_writer(
        cls, location: str, writer: Writer, reader: Any, busy_timeout: float, *, supervised: bool
    ) -> Self:
        """The store writing through `writer`; it runs the writer itself unless `supervised`."""
        store = cls(location, writer, reader, busy_timeout)
        if not supervised:
            store._writer_task = asyncio.get_running_loop().create_task(
                writer.run(), name="eventstore-writer"
            )
        return store

    @classmethod
    async def _open_readonly(cls, path: str | os.PathLike[str], *, busy_timeout: float) -> Self:
        path = os.fspath(path)
        conn: aiosqlite.Connection | None = None
        try:
            conn = await connect_readonly(path, busy_timeout)
            await check_log_schema(conn, path)
        except BaseException as exc:
            if conn is not None:
                await close_quietly(conn)
            if isinstance(exc, Exception):
                raise translate(exc) from exc
            raise
        return cls(path, None, conn, busy_timeout)

    async def run_writer(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the writer of a store opened with ``supervised=True``; returns once closed.

        Raises what ended the writer otherwise (cancellation, or a bug): appends can no longer
        succeed, so the owner's task group should stop too.
        """
        if self._writer is None:
            raise ReadOnlyStore("a read-only store has no writer")
        if self._writer_task is not None:
            raise StoreClosed("this store runs its own writer (opened without supervised=True)")
        await self._writer.run(task_status=task_status)

    async def close(self) -> None:
        """Write what is queued, stop the writer and close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        # The read-only lookups first: the last connection to close checkpoints the log and
        # removes its -wal file, which a read-only one cannot do.
        if self._lookups is not None:
            self._lookups.close()
        try:
            if self._writer is not None:
                await self._writer.stop()
        finally:
            await close_quietly(self._reader)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def path(self) -> str:
        return self._path

    @property
    def readonly(self) -> bool:
        """True when opened with readonly=True (no writer; nothing is ever written)."""
        return self._writer is None

    @property
    def healthy(self) -> bool:
        """False once closed or while the last write failed on storage (for /readyz)."""
        return not self._closed and self.last_error is None

    def writer_stalled_for(self) -> float:
        """Seconds the writer has had work without committing any: 0 while it waits for work
        (and for a read-only store), growing while a write hangs or one write after another
        fails, infinite once it ended. What a watchdog checks (see `Writer.stalled_for`)."""
        return self._writer.stalled_for() if self._writer is not None else 0.0

    @property
    def last_error(self) -> EventStoreError | None:
        return self._writer.last_error if self._writer is not None else None

    # -- writing --------------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: int | Mapping[str, int] = ANY,
        *,
        enqueue_timeout: float | None = None,
        if_absent: str | Sequence[str] | None = None,
    ) -> AppendResult:
        """Append `events` as one atomic call; returns only after COMMIT.

        `expected` is one version for every stream of the call or a per-stream mapping (absent
        streams: ANY). `if_absent`: an event id (or several) that, if already stored, makes the
        whole call a no-op (`result.skipped`) — checked in the same transaction, so a redelivered
        input is recognised without a read of its own. Raises WrongExpectedVersion (nothing
        written), WriterBusy when the queue stays full longer than `enqueue_timeout`,
        StorageUnavailable/DatabaseCorrupt on storage failures, InvalidEvent for malformed input.
        """
        writer = self._require_writer("append")
        check_expectation(expected)
        if not events:
            return AppendResult((), ())
        # What append_many does for one call, without its lists (the one-event call is hot).
        call = (tuple(prepare_event(e) for e in events), expected, _guards(if_absent))
        (outcome,) = await writer.append_many([call], enqueue_timeout)
        if isinstance(outcome, EventStoreError):
            raise outcome
        return outcome

    async def append_many(
        self,
        calls: Sequence[AppendCall],
        *,
        enqueue_timeout: float | None = None,
    ) -> list[AppendResult | EventStoreError]:
        """Append several independent calls in one transaction; one outcome per call, in order.

        Each call behaves as its own `append` would, in the order given (a later call sees the
        earlier ones' events), except that its failure is returned, not raised: a call whose
        expectation fails gets WrongExpectedVersion, and a call with an invalid event gets
        InvalidEvent; neither writes anything, and the others are written. Storage failures and
        WriterBusy raise for all. One queue entry and one future for many calls: the cheap way for
        a caller that batches its own work.
        """
        writer = self._require_writer("append_many")
        outcomes: list[AppendResult | EventStoreError | None] = []
        prepared = []
        for call in calls:
            try:
                check_expectation(call.expected)
                events = tuple(prepare_event(e) for e in call.events)
            except InvalidEvent as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)  # filled from the writer's answer, in order
            prepared.append((events, call.expected, _guards(call.if_absent)))
        written = iter(await writer.append_many(prepared, enqueue_timeout) if prepared else [])
        return [next(written) if o is None else o for o in outcomes]

    async def set_consumer_position(self, name: str, position: int) -> None:
        """Record `name`'s last processed position (overwrites)."""
        writer = self._require_writer("set_consumer_position")
        now = format_time(datetime.now(UTC))

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO consumer_positions (name, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at",
                (name, position, now),
            )

        await writer.run_job(job)

    async def save_snapshot(self, name: str, position: int, blob: bytes) -> None:
        """Store `blob` as the snapshot `name` reflecting the log up to `position`, atomically."""
        writer = self._require_writer("save_snapshot")
        now = format_time(datetime.now(UTC))

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                _SAVE_SNAPSHOT,
                (name, position, bytes(blob), now),
            )

        await writer.run_job(job)

    async def checkpoint(self, key: bytes, key_id: str | None = None) -> SignedCheckpoint:
        """Sign and record the current head; the key is used here and never stored, only named
        by `key_id` (default: its fingerprint, `chain.key_fingerprint`)."""
        writer = self._require_writer("checkpoint")
        key_id = key_fingerprint(key) if key_id is None else key_id
        created = datetime.now(UTC)
        created_text = format_time(created)

        def job(conn: sqlite3.Connection) -> SignedCheckpoint:
            rows = list(
                conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            )
            pos, hsh = rows[0] if rows else (0, GENESIS)
            sig = sign_checkpoint(key, pos, hsh, created_text, key_id)
            conn.execute(
                "INSERT INTO checkpoints (position, head_hash, created_at, key_id, signature)"
                " VALUES (?, ?, ?, ?, ?)",
                (pos, hsh, created_text, key_id, sig),
            )
            return SignedCheckpoint(pos, hsh, datetime.fromisoformat(created_text), key_id, sig)

        return await writer.run_job(job)

    async def probe(self) -> bool:
        """Whether the log can be written again, checked without writing: True when it can.

        The writer takes the write lock (BEGIN IMMEDIATE), reads the head and gives the lock
        back, between append batches. Success clears `last_error`, so `healthy` is True again
        without waiting for a caller's append; failure keeps (or sets) it.
        """

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT position FROM events ORDER BY position DESC LIMIT 1").fetchone()

        try:
            await self._require_writer("probe").run_job(job)
        except EventStoreError:
            return False
        return True

    async def backup(self, dest: str | os.PathLike[str]) -> tuple[int, str]:
        """Copy the log, consistent at one commit, to the new file `dest` while the writer (this
        store's or another process's) keeps writing; return the copy's head (position, hash).

        Works on a read-only store too. FileExistsError when `dest` exists; see
        `eventstore.backup.backup_log` for how the copy is made and made durable.
        """
        self._check_open()
        return await backup_log(self._path, dest, busy_timeout=self._busy_timeout)

    # -- reading --------------------------------------------------------------------------------

    async def read_all(
        self, from_position: int = 1, to_position: int | None = None, *, batch: int = 5_000
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events in position order from `from_position` to `to_position` (inclusive)."""
        start = max(from_position, 1)
        last = LAST_POSITION if to_position is None else to_position
        # Fetch the next batch on the reader's thread while the caller handles this one.
        fetch = _read_ahead(self._fetch(_READ_ALL, (start, last, batch)))
        try:
            while True:
                rows = await fetch
                more = len(rows) == batch and rows[-1][0] < last
                if more:
                    nxt = rows[-1][0] + 1
                    fetch = _read_ahead(self._fetch(_READ_ALL, (nxt, last, batch)))
                for event in records_from_rows(rows):
                    yield event
                if not more:
                    return
        finally:
            if not fetch.done():
                fetch.cancel()

    async def read_stream(self, stream: str, from_version: int = 1) -> AsyncIterator[RecordedEvent]:
        """Yield the events of `stream` in version order from `from_version`."""
        version = max(from_version, 1)
        batch = 1_000
        while True:
            rows = await self._fetch(
                _READ_STREAM,
                (stream, version, batch),
            )
            for event in records_from_rows(rows):
                yield event
            if len(rows) < batch:
                return
            version = rows[-1][2] + 1

    async def get_event(self, event_id: str) -> RecordedEvent | None:
        """Return the event stored under `event_id`, or None."""
        rows = await self._fetch(_GET_EVENT, (event_id,))
        return record_from_row(rows[0]) if rows else None

    async def stored_event_ids(self, event_ids: Collection[str]) -> set[str]:
        """Which of `event_ids` are stored: one query per 900 ids, for batched dedupe checks.

        A handful of ids is looked up right here, on the caller's thread: a few index probes
        cost less than a hand-off to the reader's thread and a wait behind its other reads."""
        self._check_open()
        if len(event_ids) <= _QUICK_IDS:
            try:
                conn = self._lookup_connection()
                sql = f"SELECT event_id FROM events WHERE event_id IN ({marks(len(event_ids))})"  # noqa: S608
                return {row[0] for row in conn.execute(sql, tuple(event_ids))}
            except sqlite3.Error as exc:
                raise translate(exc) from exc
        found: set[str] = set()
        for chunk in chunks(event_ids):
            sql = f"SELECT event_id FROM events WHERE event_id IN ({marks(len(chunk))})"  # noqa: S608
            found.update(row[0] for row in await self._fetch(sql, chunk))
        return found

    async def head(self) -> tuple[int, str]:
        """Return (last position, its hash), or (0, GENESIS) for an empty log."""
        rows = await self._fetch(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1", ()
        )
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS)

    async def subscribe(self, from_position: int = 1) -> AsyncIterator[RecordedEvent]:
        """Yield every event from `from_position` on, then each new one as it commits; forever.

        Raises StoreClosed when the store closes. Position-based, so nothing is missed or
        repeated at the switch from catch-up to live.
        """
        nxt = max(from_position, 1)
        writer = self._require_writer("subscribe")
        while True:
            self._check_open()
            # Take the signal before reading: a commit after our read still wakes us.
            signal = writer.commit_signal()
            got = False
            async for event in self.read_all(nxt):
                got = True
                nxt = event.position + 1
                yield event
            if not got and writer.head_position < nxt:
                await signal.wait()

    def on_commit(self, listener: Callable[[list[RecordedEvent]], None]) -> Callable[[], None]:
        """Call `listener` with each committed batch's new records, in position order.

        In-process readers that keep a model current (a projection) get every commit without
        reading it back: the call happens right after COMMIT, before any appender of that
        batch returns, in the writer task. It must be quick and must not raise (a listener
        that raises is removed). Returns a function that removes the listener.
        """
        return _subscribe(self._require_writer("on_commit").listeners, listener)

    async def save_snapshot_parts(
        self,
        name: str,
        position: int,
        header: bytes | None,
        parts: Iterable[tuple[str, bytes | None] | tuple[str, bytes, str, str | None]],
        *,
        complete: bool = False,
    ) -> None:
        """Bring the keyed snapshot `name` to the log up to `position`, in one transaction.

        Each `(key, blob)` of `parts` is written (a `None` blob removes that key), or
        `(key, blob, label, at)`: a label to group parts by and a time (text) to find them by,
        both read without the blobs (`open_snapshot`). With `complete`, `parts` is the whole
        snapshot and every other key is removed. The header and the parts change together, so a
        reader sees the snapshot before or after, never a mix. Writing the parts that changed
        since the last snapshot costs what changed. A `None` header removes the header row: the
        snapshot is absent to readers until a later call brings one (a large snapshot written a
        chunk per call, the header with the last).
        """
        writer = self._require_writer("save_snapshot_parts")
        now = format_time(datetime.now(UTC))
        upserts, removals = split_parts(name, parts)

        def job(conn: sqlite3.Connection) -> None:
            if complete:
                conn.execute("DELETE FROM snapshot_parts WHERE name = ?", (name,))
            if header is None:
                conn.execute("DELETE FROM snapshots WHERE name = ?", (name,))
            else:
                conn.execute(_SAVE_SNAPSHOT, (name, position, bytes(header), now))
            if removals:
                conn.executemany("DELETE FROM snapshot_parts WHERE name = ? AND key = ?", removals)
            if upserts:
                conn.executemany(
                    "INSERT INTO snapshot_parts (name, key, blob, label, at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (name, key) DO UPDATE SET blob = excluded.blob,"
                    " label = excluded.label, at = excluded.at",
                    upserts,
                )

        await writer.run_job(job)

    async def load_snapshot_parts(
        self, name: str
    ) -> tuple[int, bytes, list[tuple[str, bytes]]] | None:
        """The keyed snapshot `name`: its position, header and parts (in key order); None when
        there is none. Read in one read transaction (`open_snapshot`), so header and parts
        agree."""
        reader = await self.open_snapshot(name)
        if reader is None:
            return None
        with reader:
            blobs = await anyio.to_thread.run_sync(reader.blobs)
        return reader.position, reader.header, sorted(blobs.items())

    async def open_snapshot(self, name: str) -> SnapshotReader | None:
        """A reader of the keyed snapshot `name` in one read transaction of its own (None when
        there is none): its header, and its parts in bulk or one by one. Close it."""
        self._check_open()
        # Built from the store's own read-only URI: the log's file is never opened outside
        # SQLite in a process that holds it (see connections.readonly_uri).
        uri = readonly_uri(self._path)
        return await anyio.to_thread.run_sync(
            SqliteSnapshotReader.open, uri, name, self._busy_timeout
        )

    def part_fetcher(self, name: str) -> Callable[[str], bytes | None] | None:
        """A function reading one part of the keyed snapshot `name` as last committed (None if
        there is none), blocking the caller for one indexed read: for a model that keeps in
        memory only what changed since its snapshot. It works on after the store closes (a
        model read once the daemon stopped), each read then on a connection of its own.

        None when the backend cannot read synchronously (PostgreSQL): load every part instead
        (`open_snapshot`)."""
        self._check_open()
        query = "SELECT blob FROM snapshot_parts WHERE name = ? AND key = ?"

        def fetch(key: str) -> bytes | None:
            try:
                if not self._closed:
                    row = self._lookup_connection().execute(query, (name, key)).fetchone()
                else:
                    # The store's connections are gone (the log is checkpointed and its -wal
                    # removed): a short read-only one, which leaves no file behind.
                    conn = self._quick_connection()
                    try:
                        row = conn.execute(query, (name, key)).fetchone()
                    finally:
                        conn.close()
            except sqlite3.Error as exc:
                raise translate(exc) from exc
            return None if row is None else bytes(row[0])

        return fetch

    def observe_commits(self, observer: Callable[[float, int], None]) -> Callable[[], None]:
        """Call `observer(seconds, events)` after each committed append batch.

        `seconds` runs from the batch's BEGIN to its COMMIT (fsync included) and `events` is how
        many events it wrote (0 when every call was a duplicate): what an operator graphs as
        commit latency and group-commit batch size. Same rules as `on_commit`: quick, called in
        the writer task, removed if it raises. Returns a function that removes the observer.
        """
        return _subscribe(self._require_writer("observe_commits").commit_observers, observer)

    async def get_consumer_position(self, name: str) -> int | None:
        rows = await self._fetch("SELECT position FROM consumer_positions WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    async def load_snapshot(self, name: str) -> tuple[int, bytes] | None:
        rows = await self._fetch("SELECT position, blob FROM snapshots WHERE name = ?", (name,))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    async def checkpoints(self) -> list[SignedCheckpoint]:
        """Return every recorded checkpoint, oldest first."""
        rows = await self._fetch(
            "SELECT position, head_hash, created_at, key_id, signature"
            " FROM checkpoints ORDER BY id",
            (),
        )
        return [SignedCheckpoint(p, h, datetime.fromisoformat(c), k, s) for p, h, c, k, s in rows]

    async def last_checkpoint(self) -> SignedCheckpoint | None:
        """Return the latest recorded checkpoint (one indexed row), or None if there is none."""
        rows = await self._fetch(
            "SELECT position, head_hash, created_at, key_id, signature"
            " FROM checkpoints ORDER BY id DESC LIMIT 1",
            (),
        )
        return (
            SignedCheckpoint(
                rows[0][0], rows[0][1], datetime.fromisoformat(rows[0][2]), *rows[0][3:]
            )
            if rows
            else None
        )

    async def verify(
        self,
        checkpoint_key: bytes | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        visit: RowVisitor | None = None,
    ) -> VerifyReport:
        """Recompute the whole chain and check checkpoints (signatures too when given the key);
        `visit`, if given, sees every row in the same pass (see `RowVisitor`)."""
        self._check_open()
        try:
            # Its own connection, so a long audit does not hold up readers and subscribers. A
            # read-only one whether or not this store writes: while the writer is open the -wal
            # file exists, so the connection reads the committed log through it, not immutable.
            conn = await connect_readonly(self._path, self._busy_timeout)
        except Exception as exc:
            raise translate(exc) from exc
        try:
            return await verify_log(conn, checkpoint_key, progress=progress, visit=visit)
        except Exception as exc:
            raise translate(exc) from exc
        finally:
            await close_quietly(conn)

    # -- internals ------------------------------------------------------------------------------

    def _lookup_connection(self) -> sqlite3.Connection:
        """The read-only connection for quick indexed reads on the caller's thread (autocommit:
        each read sees the log as last committed)."""
        if self._lookups is None:
            self._lookups = self._quick_connection()
        return self._lookups

    def _quick_connection(self) -> sqlite3.Connection:
        """A new read-only connection in autocommit mode, usable from any thread."""
        try:
            return sqlite3.connect(
                readonly_uri(self._path),
                uri=True,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _check_open(self) -> None:
        if self._closed or (self._writer is not None and self._writer.closed):
            raise StoreClosed("the event store is closed")

    def _require_writer(self, operation: str) -> Writer:
        self._check_open()
        if self._writer is None:
            raise ReadOnlyStore(f"{operation}: the event store at {self._path} is open read-only")
        return self._writer

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        self._check_open()
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except Exception as exc:
            raise translate(exc) from exc


def _read_ahead(read: Coroutine[Any, Any, _R]) -> asyncio.Future[_R]:
    """`read` started now, for a reader that may stop before it needs the result.

    A caller that leaves `read_all` early (`export | head`, `replay --until`) may close the
    store before the generator is finalised: the read-ahead then fails with StoreClosed, which
    nobody awaits. Its failure is marked as seen here, so that asyncio does not print it as a
    "Task exception was never retrieved" traceback; a caller that awaits it still gets it.
    """
    task = asyncio.ensure_future(read)
    task.add_done_callback(_seen)
    return task


def _seen(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


# Openers of logs named by a URL, by URL prefix: eventstore/postgres registers its own, so that
# EventStore.open takes a `postgresql://` URL without this module importing that backend.
UrlOpener = Callable[[str, str | None, OpenOptions], Opening[EventStore]]
_URL_OPENERS: dict[str, UrlOpener] = {}


def register_url_opener(prefix: str, opener: UrlOpener) -> None:
    """Have EventStore.open(url) call `opener(url, password, options)` for URLs starting
    `prefix`."""
    _URL_OPENERS[prefix] = opener


def _url_opener(path: object) -> UrlOpener | None:
    if isinstance(path, str):
        for prefix, opener in _URL_OPENERS.items():
            if path.startswith(prefix):
                return opener
    return None


def _subscribe(callbacks: list[_C], callback: _C) -> Callable[[], None]:
    """Add `callback` to the writer's `callbacks`; returns the function that removes it."""
    callbacks.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)

    return remove


def split_parts(
    name: str, parts: Iterable[tuple[str, bytes | None] | tuple[str, bytes, str, str | None]]
) -> tuple[list[tuple[str, str, bytes, str, str | None]], list[tuple[str, str]]]:
    """`save_snapshot_parts`'s parts as rows to write (name, key, blob, label, at) and keys to
    remove (name, key)."""
    upserts: list[tuple[str, str, bytes, str, str | None]] = []
    removals: list[tuple[str, str]] = []
    for part in parts:
        key, blob = part[0], part[1]
        if blob is None:
            removals.append((name, key))
        elif len(part) == 4:
            upserts.append((name, key, bytes(blob), part[2], part[3]))
        else:
            upserts.append((name, key, bytes(blob), "", None))
    return upserts, removals


def _guards(if_absent: str | Sequence[str] | None) -> tuple[str, ...]:
    if if_absent is None:
        return ()
    if isinstance(if_absent, str):
        return (if_absent,)
    return tuple(if_absent)
