"""The live projection: the read model kept current from the log, event by event.

At start it loads the latest snapshot (if any) and replays the log's tail, so start-up time is
bounded by the snapshot, not by the log's length. A snapshot is kept as one part per account
and each one written stores only the accounts changed since the last (`write_snapshot`). Then
the store hands it each commit's records as they are committed (`on_commit`), and it tells the
timer driver and the outbox which timers and effects each changed account now has.
Deleting the snapshot only costs a longer start: the log is the only truth.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable

import anyio
import anyio.lowlevel
import structlog

from daemon.domain import AccountState
from daemon.runtime.projections import Projection
from eventstore import EventStore, RecordedEvent

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "projection"
# Accounts encoded between two turns of the event loop while a snapshot is written (a few ms).
SNAPSHOT_SLICE = 1_000
# Accounts per transaction of a complete snapshot (a few hundred milliseconds of the writer).
SNAPSHOT_CHUNK = 50_000

# Events applied at a time while following another process's commits (`follow`).
FOLLOW_BATCH = 1_000

AccountHook = Callable[[str, AccountState | None], None]


class LiveProjection:
    """Owns the in-memory `Projection` and the task that applies new events to it."""

    def __init__(self, store: EventStore, projection: Projection) -> None:
        self.store = store
        self.projection = projection
        self._hooks: list[AccountHook] = []
        self._waiters: list[tuple[int, int, anyio.Event]] = []
        self._seq = itertools.count()
        self.caught_up = anyio.Event()
        self.failed: BaseException | None = None
        self._failure = anyio.Event()
        self._buffer: list[RecordedEvent] | None = None

    @classmethod
    async def load(cls, store: EventStore, *, resident: bool = False) -> LiveProjection:
        """Start from the latest snapshot, or from nothing if there is none or it is unreadable.

        From a snapshot, the indexes are loaded and each account's state is read from it when
        first needed (`resident` reads them all at once, as does a store that cannot read a
        part synchronously: `part_fetcher` None)."""
        reader = await store.open_snapshot(SNAPSHOT_NAME)
        projection = Projection()
        if reader is not None:
            try:
                # In bulk, in a worker thread: the loop has nothing else to do yet.
                fetch = None if resident else store.part_fetcher(SNAPSHOT_NAME)
                projection = await anyio.to_thread.run_sync(
                    functools.partial(Projection.from_reader, reader, fetch=fetch)
                )
            except Exception as exc:  # a bad snapshot must never stop the daemon: replay all
                log.warning(
                    "projection.snapshot_unreadable", error=str(exc), position=reader.position
                )
                projection = Projection()
            finally:
                reader.close()
        live = cls(store, projection)
        # Listen before catching up: commits made meanwhile wait in a buffer, so none is lost
        # between the last read and the first live one.
        live._buffer = []
        store.on_commit(live._on_commit)  # for the store's lifetime (see `run`)
        await live.catch_up()
        buffered, live._buffer = live._buffer, None
        live._on_commit([r for r in buffered if r.position > live.position])
        live.caught_up.set()
        return live

    @property
    def position(self) -> int:
        return self.projection.position

    def add_account_hook(self, hook: AccountHook) -> None:
        self._hooks.append(hook)

    def apply(self, records: list[RecordedEvent]) -> None:
        """Fold `records` (in position order), then tell the hooks once per changed account."""
        changed: set[str] = set()
        for record in records:
            event = self.projection.apply_record(record)
            if account_id := getattr(event, "account_id", None):
                changed.add(account_id)
        for account_id in changed:
            state = self.projection.account(account_id)
            for hook in self._hooks:
                hook(account_id, state)

    async def catch_up(self) -> None:
        """Apply everything already in the log (used at start, before serving)."""
        head, _ = await self.store.head()
        async for record in self.store.read_all(self.position + 1, head):
            self.projection.apply_record(record)

    async def follow(self) -> None:
        """Apply what another process committed since our position (a standby following the
        leader of a PostgreSQL log), through the same path as a local commit (hooks, waiters).
        A failure to apply stops the process (`run`)."""
        head, _ = await self.store.head()
        batch: list[RecordedEvent] = []
        async for record in self.store.read_all(self.position + 1, head):
            batch.append(record)
            if len(batch) >= FOLLOW_BATCH:
                self._on_commit(batch)
                batch = []
        if batch:
            self._on_commit(batch)

    def _on_commit(self, records: list[RecordedEvent]) -> None:
        # Called by the store's writer right after each commit, so the projection is current
        # before any appender is answered; nothing is read back from the database.
        if self.failed is not None:
            return
        if self._buffer is not None:
            self._buffer.extend(records)
            return
        try:
            if records and records[0].position != self.position + 1:
                raise RuntimeError(
                    f"log position {records[0].position} follows {self.position}: "
                    "another process wrote to the log"
                )
            self.apply(records)
        except Exception as exc:
            self.failed = exc
            self._failure.set()
            return
        self._release_waiters()

    async def run(self) -> None:
        """Wait while commits keep the projection current; a failure stops the process.

        The projection goes on taking commits after this returns or is cancelled, until the
        store closes: appends still queued when the daemon's parts stop are committed while
        the writer flushes, and the projection (what the daemon reports at exit) holds them.
        """
        await self._failure.wait()
        assert self.failed is not None
        raise self.failed

    async def wait_for(self, position: int) -> None:
        """Return once the projection has applied the event at `position`."""
        if self.position >= position:
            return
        event = anyio.Event()
        heapq.heappush(self._waiters, (position, next(self._seq), event))
        await event.wait()

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.position:
            heapq.heappop(self._waiters)[2].set()

    async def write_snapshot(self) -> tuple[int, int, int]:
        """Store a snapshot of the accounts changed since the last one (all of them the first
        time); returns its position, parts and bytes written. Encoding goes a slice at a time,
        so the event loop keeps turning; events applied meanwhile go into the next one.

        The accounts changed are written in one transaction with the header. A complete one
        (every account) is written a chunk per transaction, so the writer is never held for
        long and no more than a chunk is held encoded: the old snapshot is dropped with the
        first chunk and the header comes with the last, so a reader meanwhile finds none."""
        taken = self.projection.take_snapshot()
        items = len(taken.items)
        chunk = SNAPSHOT_CHUNK if taken.complete else max(items, 1)
        written = len(taken.header)
        try:
            for first in range(0, max(items, 1), chunk):
                parts: list[tuple[str, bytes, str, str | None]] = []
                for start in range(first, min(first + chunk, items), SNAPSHOT_SLICE):
                    parts.extend(taken.encode(start, min(start + SNAPSHOT_SLICE, first + chunk)))
                    await anyio.lowlevel.checkpoint()
                last = first + chunk >= items
                await self.store.save_snapshot_parts(
                    SNAPSHOT_NAME,
                    taken.position,
                    taken.header if last else None,
                    parts,
                    complete=taken.complete and first == 0,
                )
                written += sum(len(p) for _, p, _, _ in parts)
        except BaseException:
            self.projection.snapshot_failed(taken)
            raise
        return taken.position, items, written
