"""The timer driver: one in-memory heap of durable timers and one task that fires them.

Timers themselves are events in the log (`TimerScheduled`, `TimerFired`, `TimerCancelled`);
this driver only holds the pending ones so a single task can sleep until the earliest is due.
Sleeping uses the monotonic clock (anyio), but due times are UTC instants re-checked at each
wake, so a wall-clock step or a suspended machine never fires a timer early or loses one.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import anyio
import structlog

from daemon.clock import utc_now

log = structlog.get_logger(__name__)

# Re-check the wall clock at least this often, so a clock step is noticed within a minute.
MAX_SLEEP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class DueTimer:
    """A pending timer as the driver keeps it: which, whose, and when it is due."""

    timer_id: str
    account_id: str
    due_at: datetime


FireCallback = Callable[[DueTimer, datetime], Awaitable[None]]
# The `limit` earliest pending timers as (due_at, account_id, timer_id), in that order.
TimerSource = Callable[[int], list[tuple[datetime, str, str]]]

WINDOW = 1_000
"""Timers a driver with a source holds at once: the earliest, refilled when they are done."""


class TimerDriver:
    """Keeps pending timers in a heap and fires each through `fire` once it is due.

    `fire(timer, fired_at)` appends the firing to the log; it is keyed by the timer id there, so a
    crash between firing and its effect never fires twice. A failing `fire` is retried later.
    Timers already overdue when the driver starts (a restart after downtime) fire at most
    `overdue_rate` per second, so a backlog does not burst into the provider at once.

    With a `source` (the projection's due-time index) the driver holds only a window: the
    `window` earliest timers from `load()`, and later changes to timers that fall within it.
    Every timer outside it comes after every timer in it, so nothing fires out of order; once
    the window is done the driver loads the next. A million accounts waiting cost a start-up
    and memory of a thousand timers.
    """

    def __init__(
        self,
        fire: FireCallback,
        *,
        overdue_rate: float = 50.0,
        retry_seconds: float = 5.0,
        max_sleep: float = MAX_SLEEP_SECONDS,
        clock: Callable[[], datetime] = utc_now,
        source: TimerSource | None = None,
        window: int = WINDOW,
    ) -> None:
        self._fire = fire
        self._source = source
        self._window = max(1, window)
        # The last (due_at, account_id, timer_id) of the window; None: every timer is held.
        self._horizon: tuple[datetime, str, str] | None = None
        self._clock = clock
        self._overdue_interval = 1.0 / overdue_rate if overdue_rate > 0 else 0.0
        self._retry_seconds = retry_seconds
        self._max_sleep = max_sleep
        self._heap: list[tuple[datetime, int, str]] = []
        self._pending: dict[str, DueTimer] = {}
        self._by_account: dict[str, set[str]] = {}
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._started_at: datetime | None = None
        self.fired = 0

    def __len__(self) -> int:
        """The timers held (with a source, those of the window)."""
        return len(self._pending)

    def load(self) -> None:
        """Hold the source's earliest timers (up to the window), as the driver starts and each
        time the window is done."""
        if self._source is None:
            return
        earliest = self._source(self._window)
        self._horizon = None
        for due_at, account_id, timer_id in earliest:
            self.schedule(timer_id, account_id, due_at)
        if len(earliest) >= self._window:
            self._horizon = earliest[-1]

    def next_due(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def schedule(self, timer_id: str, account_id: str, due_at: datetime) -> None:
        if self._horizon is not None and (due_at, account_id, timer_id) > self._horizon:
            self.cancel(timer_id)  # beyond the window: the source holds it until then
            return
        current = self._pending.get(timer_id)
        if current is not None and current.due_at == due_at:
            return
        self._pending[timer_id] = DueTimer(timer_id, account_id, due_at)
        self._by_account.setdefault(account_id, set()).add(timer_id)
        heapq.heappush(self._heap, (due_at, next(self._seq), timer_id))
        if self._heap[0][2] == timer_id:
            self._wake.set()

    def cancel(self, timer_id: str) -> None:
        # Lazy deletion: the heap entry stays until it reaches the top and is found stale.
        timer = self._pending.pop(timer_id, None)
        if timer is not None:
            ids = self._by_account.get(timer.account_id)
            if ids is not None:
                ids.discard(timer_id)
                if not ids:
                    del self._by_account[timer.account_id]

    def sync_account(self, account_id: str, timers: Iterable[tuple[str, datetime]]) -> None:
        """Make the account's pending timers exactly `timers` (timer id, due time)."""
        wanted = dict(timers)
        for timer_id in list(self._by_account.get(account_id, ())):
            if timer_id not in wanted:
                self.cancel(timer_id)
        for timer_id, due_at in wanted.items():
            self.schedule(timer_id, account_id, due_at)

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            due_at, _, timer_id = heap[0]
            timer = self._pending.get(timer_id)
            if timer is not None and timer.due_at == due_at:
                return
            heapq.heappop(heap)

    async def run(self) -> None:
        """Fire timers as they come due, forever."""
        self._started_at = self._clock()
        while True:
            self._drop_stale()
            now = self._clock()
            if not self._heap and self._horizon is not None:
                self.load()  # the window is done: the next one
                continue
            if not self._heap:
                await self._sleep(math.inf)
                continue
            due_at, _, timer_id = self._heap[0]
            if due_at > now:
                await self._sleep((due_at - now).total_seconds())
                continue
            heapq.heappop(self._heap)
            timer = self._pending.pop(timer_id)
            self._by_account.get(timer.account_id, set()).discard(timer_id)
            try:
                await self._fire(timer, now)
            except Exception as exc:
                log.warning("timer.fire_failed", timer_id=timer_id, error=str(exc))
                self.schedule(timer_id, timer.account_id, due_at)
                await self._sleep(self._retry_seconds)
                continue
            self.fired += 1
            if self._overdue_interval and due_at < self._started_at:
                await anyio.sleep(self._overdue_interval)

    async def _sleep(self, seconds: float) -> None:
        self._wake = anyio.Event()
        with anyio.move_on_after(min(seconds, self._max_sleep)):
            await self._wake.wait()
