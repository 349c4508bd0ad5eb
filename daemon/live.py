"""The live projection: the read model kept current from the log, event by event.

At start it loads the latest snapshot (if any) and replays the log's tail, so start-up time is
bounded by the snapshot, not by the log's length. Then it follows the store's subscription and
tells the timer driver and the outbox which timers and effects each changed account now has.
Deleting the snapshot only costs a longer start: the log is the only truth.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import anyio
import structlog

from daemon.domain import AccountState, decode_event
from daemon.projections import Projection
from eventstore import EventStore, RecordedEvent

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "projection"

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

    @classmethod
    async def load(cls, store: EventStore) -> LiveProjection:
        """Start from the latest snapshot, or from nothing if there is none or it is unreadable."""
        snapshot = await store.load_snapshot(SNAPSHOT_NAME)
        projection = Projection()
        if snapshot is not None:
            position, blob = snapshot
            try:
                projection = Projection.from_snapshot(blob)
            except Exception as exc:  # a bad snapshot must never stop the daemon: replay all
                log.warning("projection.snapshot_unreadable", error=str(exc), position=position)
                projection = Projection()
        live = cls(store, projection)
        await live.catch_up()
        live.caught_up.set()
        return live

    @property
    def position(self) -> int:
        return self.projection.position

    def add_account_hook(self, hook: AccountHook) -> None:
        self._hooks.append(hook)

    def apply(self, record: RecordedEvent) -> None:
        event = decode_event(record.type, record.schema, record.data)
        self.projection.apply(record.position, event)
        account_id = getattr(event, "account_id", None)
        if account_id and self._hooks:
            state = self.projection.account(account_id)
            for hook in self._hooks:
                hook(account_id, state)
        self._release_waiters()

    async def catch_up(self) -> None:
        """Apply everything already in the log (used at start, before serving)."""
        head, _ = await self.store.head()
        async for record in self.store.read_all(self.position + 1, head):
            event = decode_event(record.type, record.schema, record.data)
            self.projection.apply(record.position, event)

    async def run(self) -> None:
        """Follow the log forever; a failure here stops the process (no half-alive daemon)."""
        try:
            async for record in self.store.subscribe(self.position + 1):
                self.apply(record)
        except BaseException as exc:
            self.failed = exc
            raise

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

    def snapshot(self) -> tuple[int, bytes]:
        return self.position, self.projection.to_snapshot()
