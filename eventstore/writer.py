"""The single writer: owns the write connection and group-commits queued append calls.

`Writer.run()` is its long-running loop: the store's owner runs it in a task group
(`EventStore.run_writer`), or the store starts it itself (`EventStore.open` without
`supervised`).

The write connection is a plain `sqlite3` connection used by one thread of its own
(`WriteConnection`): each batch is one hand-off to that thread, which runs the whole
transaction (BEGIN, head, stream versions, planning and hashing, one executemany, COMMIT) while
the event loop goes on. fsync is paid once per batch instead of once per event. The batch's event
ids are not looked up first: the UNIQUE index on event_id finds a stored one at the insert, and
only then is the batch written again with its ids looked up (see `_write_batch`).

WAL checkpoints (copying committed pages from the `-wal` file into the database file) are kept off
the commit: a checkpointer thread with a connection of its own copies them after every
`CHECKPOINT_EVENTS` events committed and every job, while the writer goes on, and the writer's
own checkpoint (SQLite's `wal_autocheckpoint`)
only runs once the WAL holds `WAL_AUTOCHECKPOINT_PAGES`, finding little left to copy. In SQLite's
default, every commit that takes the WAL past 1,000 pages copies them itself, and at a long log's
random index pages that was over half of each large commit (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskStatus

from .chain import format_time
from .errors import EventStoreError, StoreClosed, WriterBusy, translate
from .planner import BatchPlan, PlannedCall, plan_batch, record_from_row
from .records import AppendResult, RecordedEvent
from .schema import EVENT_COLUMNS

__all__ = ["WRITER_PRAGMAS", "WriteConnection", "WriteTarget", "Writer"]

T = TypeVar("T")
_CHUNK = 900  # bound parameters per IN list; SQLite builds before 3.32 allow 999
# Planning (hashing) holds the GIL in the writer's thread: cap a batch's events so the event loop
# is never kept waiting long.
_MAX_BATCH_EVENTS = 20_000
_STOP = object()
# Only constant column lists and "?" marks are ever formatted into these statements.
# One MAX() per stream (a seek to the stream's last entry in the (stream, version) index): about
# twice as fast on a long log as `stream IN (...) GROUP BY stream`. NULL for a new stream.
_VERSIONS_SQL = (
    "SELECT column1, (SELECT MAX(version) FROM events WHERE stream = column1) FROM (VALUES {})"
)
_STORED_SQL = "SELECT " + EVENT_COLUMNS + " FROM events WHERE event_id IN ({})"  # noqa: S608
# Set on the writer's connection after `synchronous` (bench/bench_appends.py gives the raw sqlite3
# baseline the same ones). None: a larger page cache (`cache_size`, 64 MiB) made raw inserts into
# a 5M-event log 10-20 % slower, not faster.
WRITER_PRAGMAS: tuple[str, ...] = ()
# The writer's own checkpoint (SQLite's default is 1,000 pages): the bound of the WAL, in pages,
# should the checkpointer fall behind; about 64 MiB of `-wal` file at 4 KiB pages. It is also the
# size (`journal_size_limit`) the file is cut back to once rewound, should a long read (a backup)
# have held off the checkpoints and let it grow past it.
WAL_AUTOCHECKPOINT_PAGES = 16_000
# The checkpointer runs once this many events were committed since it last ran (a lone append
# dirties 3-4 pages, an event of a large batch on a long log about 2), and pauses this long after
# each of its checkpoints: commits in between are copied together, and a lone appender's fsyncs
# are not kept waiting behind the checkpoints' own.
CHECKPOINT_EVENTS = 500
CHECKPOINT_INTERVAL = 0.05
_INSERT = (
    "INSERT INTO events (position, stream, version, type, schema, data, metadata, event_id,"
    " recorded_at, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _AppendCall:
    """Queued append calls with one future, which gets their outcomes, one per call, in order.

    A call's own error (a failed expectation) is an outcome; storage errors fail the future.
    """

    __slots__ = ("calls", "future")

    def __init__(
        self,
        calls: Sequence[PlannedCall],
        future: asyncio.Future[list[AppendResult | EventStoreError]],
    ) -> None:
        self.calls = calls
        self.future = future


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future


class WriteTarget(Protocol):
    """What the writer writes through: SQLite's `WriteConnection`, or another backend's own
    (eventstore/postgres), which runs the same batch with the same planner."""

    async def write_batch(
        self, calls: list[PlannedCall], head_hash: str, now_text: str
    ) -> tuple[BatchPlan, float]: ...

    async def run_job(self, fn: Callable[[Any], Any]) -> Any: ...

    async def close(self) -> None: ...


class _Thread:
    """One thread running the calls given to it in order. The hand-off is a queue one way and
    `call_soon_threadsafe` the other: about a third of what an executor's round trip costs
    (its futures, callbacks and locks), which a lone append pays in full (bench/README.md)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # A daemon thread: one still in a COMMIT when the interpreter exits is a crash of the
        # process, which the log survives whole (WAL); an idle one must not keep it alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, future, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                _answer(loop, future, None, exc)
            else:
                _answer(loop, future, result, None)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return await future

    def stop(self) -> None:
        """End the thread once the calls given so far have run."""
        self._calls.put(None)


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.cancelled():  # the caller stopped waiting; the call ran all the same
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)


class _Checkpointer:
    """A thread with a connection of its own that runs a PASSIVE WAL checkpoint after commits.

    PASSIVE takes no lock a writer or reader waits for: it copies the pages committed so far and
    leaves the rest for its next run, once the writer wakes it again (`committed`: after every
    `CHECKPOINT_EVENTS` events and every job) and `interval` seconds after this one at the soonest.
    A checkpoint that fails (the disk full, the file gone) is tried again at the next wake: the
    WAL keeps every commit meanwhile, and the writer's own checkpoint still bounds it. `last` is
    the last result: (busy, WAL pages, pages copied), as `PRAGMA wal_checkpoint` gives it.
    """

    def __init__(self, path: str, synchronous: str, interval: float = CHECKPOINT_INTERVAL) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.last: tuple[int, int, int] | None = None
        self.last_error: sqlite3.Error | None = None
        self._thread = threading.Thread(target=self._run, name="eventstore-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Wake the thread: the writer committed pages that are waiting to be copied."""
        self._wake.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self._path, isolation_level=None, check_same_thread=False
                        )
                        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                    self.last = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.last_error = None
                except sqlite3.Error as exc:
                    self.last_error = exc
                if self._stopping.wait(self._interval):
                    return
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        """End the thread (after the checkpoint it may be running) and close its connection."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()


class WriteConnection:
    """A `sqlite3` connection in autocommit mode (BEGIN/COMMIT are explicit) and the one thread
    that uses it: `call(fn, ...)` runs `fn(conn, ...)` there, in order, one at a time. Its
    `checkpointer` copies what it commits into the database file (the module's docstring)."""

    def __init__(
        self, thread: _Thread, conn: sqlite3.Connection, checkpointer: _Checkpointer
    ) -> None:
        self._thread = thread
        self.conn = conn
        self.checkpointer = checkpointer
        self._uncopied = 0  # events committed since the checkpointer was last woken

    @classmethod
    async def open(cls, path: str, busy_timeout: float, synchronous: str) -> WriteConnection:
        thread = _Thread("eventstore-writer")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
                (page_size,) = conn.execute("PRAGMA page_size").fetchone()
                conn.execute(f"PRAGMA journal_size_limit = {WAL_AUTOCHECKPOINT_PAGES * page_size}")
                for pragma in WRITER_PRAGMAS:
                    conn.execute(f"PRAGMA {pragma}")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await thread.call(connect)
        except BaseException:
            thread.stop()
            raise
        return cls(thread, conn, _Checkpointer(path, synchronous))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.call(fn, self.conn, *args)

    async def write_batch(
        self, calls: list[PlannedCall], head_hash: str, now_text: str
    ) -> tuple[BatchPlan, float]:
        written = await self.call(_write_batch, calls, head_hash, now_text)
        self._uncopied += len(written[0].rows)
        if self._uncopied >= CHECKPOINT_EVENTS:
            self._uncopied = 0
            self.checkpointer.committed()
        return written

    async def run_job(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self.call(_in_transaction, fn)
        finally:
            self.checkpointer.committed()

    async def close(self) -> None:
        """Close after whatever the thread is running (closing after a failure never raises).

        The checkpointer stops first (it may be in a checkpoint), in the same call to the writer's
        thread as the close, so that a cancelled close cannot leave the connection open.
        """
        try:
            with contextlib.suppress(Exception):
                await self.call(_close, self.checkpointer)
        finally:
            self._thread.stop()


def _close(conn: sqlite3.Connection, checkpointer: _Checkpointer) -> None:
    """In the writer's thread: stop the checkpointer (whatever it says), then close `conn`."""
    try:
        checkpointer.stop()
    finally:
        conn.close()


class Writer:
    """Queue + loop (`run`) that serialises every write of the store through one connection."""

    def __init__(
        self,
        conn: WriteConnection | WriteTarget,
        *,
        queue_size: int,
        max_batch: int,
        clock: Callable[[], datetime] | None,
        head_position: int,
        head_hash: str,
        last_recorded_at: str = "",
    ) -> None:
        self._conn = conn
        self.listeners: list[Callable[[list[RecordedEvent]], None]] = []
        # Told (seconds from BEGIN to COMMIT, events written) after each committed batch.
        self.commit_observers: list[Callable[[float, int], None]] = []
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self._max_batch = max_batch
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_time = last_recorded_at  # the log's last, so a restart cannot go back
        self.head_position = head_position
        self.head_hash = head_hash
        self.last_error: EventStoreError | None = None
        self._committed = asyncio.Event()
        self._closing = False
        self._started = False
        self._finished = False
        self._exited = anyio.Event()
        # For a watchdog: is the loop waiting for work, and when did it last commit or go idle.
        self._idle = True
        self._progress_at = time.monotonic()

    # -- callers' side -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    def stalled_for(self) -> float:
        """Seconds the writer has had work without committing any (0 while it waits for work).

        It grows while a write hangs (a lock held, storage that does not answer) and while one
        write after another fails; an idle writer is healthy. Infinite once the writer ended.
        """
        if self._finished:
            return math.inf
        if self._idle:
            return 0.0
        return time.monotonic() - self._progress_at

    def commit_signal(self) -> asyncio.Event:
        """Return the event that is set at the next commit (or at close); take it before reading."""
        return self._committed

    async def append_many(
        self, calls: Sequence[PlannedCall], enqueue_timeout: float | None
    ) -> list[AppendResult | EventStoreError]:
        fut: asyncio.Future[list[AppendResult | EventStoreError]]
        fut = asyncio.get_running_loop().create_future()
        await self._enqueue(_AppendCall(calls, fut), enqueue_timeout)
        return await fut

    async def run_job(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in the writer's thread inside its own IMMEDIATE transaction, between
        append batches."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Job(fn, fut), None)
        return await fut

    async def run_async_job(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`run_job` for a backend whose jobs are coroutines on its own connection."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Job(fn, fut), None)
        return await fut

    async def _enqueue(self, item: _AppendCall | _Job, timeout: float | None) -> None:
        if self._closing:
            raise StoreClosed("the event store is closed")
        try:
            self._queue.put_nowait(item)  # the usual case: room in the queue, no timer needed
        except asyncio.QueueFull:
            await self._enqueue_waiting(item, timeout)
        if self._finished:  # the writer ended while we waited for room in the queue
            self._fail_queued()

    async def _enqueue_waiting(self, item: _AppendCall | _Job, timeout: float | None) -> None:
        if timeout is None:
            await self._queue.put(item)
        else:
            try:
                async with asyncio.timeout(timeout):
                    await self._queue.put(item)
            except TimeoutError:
                raise WriterBusy(
                    f"append queue stayed full for {timeout} s ({self._queue.maxsize} waiting)"
                ) from None

    async def stop(self) -> None:
        """Write everything queued so far, end `run` and close the write connection.

        Cancelling `stop()` (a caller's timeout) does not cancel the writer: it finishes what is
        queued, answers every caller, and closes its connection itself. A writer that never ran
        answers its callers (StoreClosed) and closes here.
        """
        if not self._closing:
            self._closing = True
            if not self._started:
                self._started = True  # it never will: `run` now refuses to start
                await self._finish([])
            elif not self._finished:
                await self._queue.put(_STOP)
        # Neither cancels the writer nor raises what ended it (see last_error).
        await self._exited.wait()

    # -- the writer loop ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write queued calls until `stop()` (then return) or cancellation; runs once.

        Whatever ends it, every caller waiting is answered and the connection is closed.
        """
        if self._started:
            if self._closing:
                task_status.started()
                return  # closed before it ran: `stop` answered everyone and closed
            raise StoreClosed("the event store's writer already ran")
        self._started = True
        task_status.started()
        pending: Any = None
        in_flight: list[_AppendCall] = []
        try:
            while True:
                item = pending if pending is not None else await self._next()
                pending = None
                if item is _STOP:
                    break
                if isinstance(item, _Job):
                    await self._do_job(item)
                    continue
                batch = [item]
                n_events = sum(len(c[0]) for c in item.calls)
                while len(batch) < self._max_batch and n_events < _MAX_BATCH_EVENTS:
                    try:
                        nxt = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if not isinstance(nxt, _AppendCall):
                        pending = nxt
                        break
                    batch.append(nxt)
                    n_events += sum(len(c[0]) for c in nxt.calls)
                # A caller cancelled before its call was taken: nothing of it is written.
                live = [c for c in batch if not c.future.done()]
                if live:
                    in_flight = live
                    await self._write_batch(live)
                    in_flight = []
        except BaseException as exc:
            # Not expected (every batch catches its own errors), but /readyz must see it.
            self.last_error = translate(exc) if isinstance(exc, Exception) else StoreClosed()
            raise
        finally:
            with anyio.CancelScope(shield=True):  # closing must finish, cancelled or not
                await self._finish(in_flight)

    async def _next(self) -> Any:
        """The next queued item; waiting for one counts as progress (see `stalled_for`)."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        self._idle = True
        try:
            return await self._queue.get()
        finally:
            self._idle = False
            self._progress_at = time.monotonic()

    async def _finish(self, in_flight: list[_AppendCall]) -> None:
        self._finished = True
        # Every caller gets an answer, also those of a batch interrupted by cancellation.
        # Its COMMIT may or may not have happened: a retry with the same event ids is safe.
        for call in in_flight:
            if not call.future.done():
                call.future.set_exception(
                    StoreClosed("the event store closed during this write; retry it")
                )
        self._fail_queued()
        self._signal()
        try:
            # The writer owns the write connection. Closing after a storage failure must not
            # mask that failure.
            await self._conn.close()
        finally:
            self._exited.set()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _STOP and not item.future.done():
                item.future.set_exception(StoreClosed("the event store is closed"))

    def _signal(self) -> None:
        event, self._committed = self._committed, asyncio.Event()
        event.set()

    def _now_text(self) -> str:
        # recorded_at never goes backwards in the log, even if the wall clock does (also across
        # restarts: the writer starts from the log's last recorded_at).
        text = format_time(self._clock())
        if text < self._last_time:
            text = self._last_time
        self._last_time = text
        return text

    async def _write_batch(self, batch: list[_AppendCall]) -> None:
        calls = [call for item in batch for call in item.calls]
        try:
            plan, seconds = await self._conn.write_batch(calls, self.head_hash, self._now_text())
        except Exception as exc:
            err = translate(exc)
            self.last_error = err
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(err)
            return
        self.last_error = None
        self._progress_at = time.monotonic()
        self.head_position, self.head_hash = plan.head_position, plan.head_hash
        if self.commit_observers:
            self._observe(seconds, len(plan.rows))
        if plan.records and self.listeners:
            self._publish(plan.records)
        outcomes = iter(plan.outcomes)
        for item in batch:
            mine = [next(outcomes) for _ in item.calls]
            if item.future.done():
                continue  # cancelled after being taken: its events are committed whole
            item.future.set_result(mine)
        if plan.rows:
            self._signal()

    def _publish(self, new: list[RecordedEvent]) -> None:
        """Hand the batch's new records, in position order, to the in-process listeners."""
        _tell(self.listeners, new)

    def _observe(self, seconds: float, events: int) -> None:
        _tell(self.commit_observers, seconds, events)

    async def _do_job(self, job: _Job) -> None:
        if job.future.done():
            return
        try:
            result = await self._conn.run_job(job.fn)
        except Exception as exc:
            err = translate(exc)
            if not isinstance(err, StoreClosed) and err.__class__ is not EventStoreError:
                self.last_error = err
            if not job.future.done():
                job.future.set_exception(err)
            return
        self.last_error = None
        self._progress_at = time.monotonic()
        if not job.future.done():
            job.future.set_result(result)


def _write_batch(
    conn: sqlite3.Connection, calls: list[PlannedCall], head_hash: str, now_text: str
) -> tuple[BatchPlan, float]:
    """In the writer's thread: one transaction writing the batch; its plan and its seconds.

    The batch's own event ids are not looked up first: the insert's UNIQUE constraint on
    event_id tells whether any is stored already, and only then (a redelivery) is the
    transaction rolled back and the batch planned again, every id looked up, in a new one.
    """
    started = time.perf_counter()
    try:
        with _transaction(conn):
            plan = _plan_and_insert(conn, calls, head_hash, now_text, look_up_all=False)
    except _IdStored:
        with _transaction(conn):
            plan = _plan_and_insert(conn, calls, head_hash, now_text, look_up_all=True)
    return plan, time.perf_counter() - started


class _IdStored(Exception):
    """An event id of the batch, inserted without being looked up first, is stored already."""


def _plan_and_insert(
    conn: sqlite3.Connection,
    calls: list[PlannedCall],
    head_hash: str,
    now_text: str,
    *,
    look_up_all: bool,
) -> BatchPlan:
    """Read the head and the streams' versions, plan the batch and insert its rows.

    Unless `look_up_all`, only the ids that the plan would not insert (guards naming other
    events, events of failed or skipped calls) are looked up, and a stored one among those
    inserted raises _IdStored (the insert is then rolled back with the transaction).
    """
    head = conn.execute(
        "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
    ).fetchone()
    head_pos, head_hash = head if head else (0, head_hash)
    streams = {e.stream for c in calls for e in c[0]}
    versions: dict[str, int] = {}
    for chunk in chunks(streams):
        rows = conn.execute(_VERSIONS_SQL.format(",".join(("(?)",) * len(chunk))), chunk)
        versions.update((stream, v) for stream, v in rows if v is not None)
    own = {e.event_id for c in calls for e in c[0]}
    guards = {g for c in calls for g in c[2]}
    stored = _stored(conn, own | guards if look_up_all else guards - own)
    plan = plan_batch(calls, head_pos, head_hash, dict(versions), stored, now_text)
    if not look_up_all and own.difference(row[7] for row in plan.rows):
        # The plan counts on ids it does not insert being new: look them all up and plan again.
        stored.update(_stored(conn, own))
        plan = plan_batch(calls, head_pos, head_hash, versions, stored, now_text)
    elif plan.rows and not look_up_all:
        try:
            conn.executemany(_INSERT, plan.rows)
        except sqlite3.IntegrityError:
            raise _IdStored from None
        return plan
    if plan.rows:
        conn.executemany(_INSERT, plan.rows)
    return plan


def _stored(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, RecordedEvent]:
    """The stored records of those of `ids` that are in the log, by event id."""
    stored: dict[str, RecordedEvent] = {}
    for chunk in chunks(ids):
        rows = conn.execute(_STORED_SQL.format(marks(len(chunk))), chunk)
        stored.update((r[7], record_from_row(r)) for r in rows)
    return stored


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    with _transaction(conn):
        return fn(conn)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the body (or the COMMIT) fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # The failure may have ended the transaction already (or the connection is gone).
        with contextlib.suppress(Exception):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise


def _tell(callbacks: list[Callable[..., None]], *args: Any) -> None:
    """Call each callback; one that raises is removed (its bug must not stop the log)."""
    for callback in list(callbacks):
        try:
            callback(*args)
        except Exception:
            callbacks.remove(callback)


def marks(n: int) -> str:
    return ",".join("?" * n)


def chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = list(values)
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
