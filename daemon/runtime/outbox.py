"""The outbox dispatcher: performs recorded effects, with retries, and records their outcomes.

An effect (ask a user to re-authenticate, restart an account's sync, check an account at the
provider) is first an event in the log carrying an idempotency key. The pending ones are
derived from the projection, never kept in a separate queue, so after a restart they resume with
the same key. Each attempt's outcome is appended as an event too, which removes the effect from
the pending set (succeeded, gave up) or moves its next attempt later (failed, retrying). An
effect of several steps (a sync restart: downgrade, then upgrade) also records each step done
(progressed) as it happens; the pending item then carries the steps recorded, so a later attempt
goes on from there.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog

from daemon.clock import utc_now
from daemon.domain.vocabulary import EffectOutcomeKind

log = structlog.get_logger(__name__)


class PermanentEffectError(Exception):
    """An attempt that must not be retried (the target refused it for good)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One effect in the outbox's queue: what to perform, how often it was tried, and not before
    when; built from the projection's pending effects, which stay the record."""

    key: str
    account_id: str
    effect: Any  # the domain's effect event, handed back to `perform` untouched
    attempts: int = 0  # attempts already made (recorded in the log)
    not_before: datetime | None = None
    steps: tuple[str, ...] = ()  # steps of the effect recorded as done, in order


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """What one attempt at an effect came to, in the words the domain's `EffectOutcome` takes."""

    effect: OutboxItem
    outcome: EffectOutcomeKind
    attempt: int
    detail: str
    at: datetime
    next_attempt_at: datetime | None
    step: str = ""  # the step done (outcome `progressed`)


Progress = Callable[[str, str], Awaitable[None]]
"""Records one step of an attempt as done: `await progress(step, detail)`; returns once it is
in the log."""
Perform = Callable[[OutboxItem, Progress], Awaitable[str]]
Record = Callable[[OutcomeReport], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart an effect is attempted before the outbox gives up."""

    max_attempts: int = 8
    backoff_base: float = 2.0
    backoff_max: float = 600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
        And Jitter"): spreads retries of many effects that failed together."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


class Outbox:
    """Runs pending effects with bounded concurrency; each attempt ends in a recorded outcome."""

    def __init__(
        self,
        perform: Perform,
        record: Record,
        *,
        concurrency: int = 8,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._perform = perform
        self._record = record
        self._policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._pending: dict[str, OutboxItem] = {}
        self._by_account: dict[str, set[str]] = {}
        self._in_flight: set[str] = set()
        self._heap: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def sync_account(self, account_id: str, effects: Iterable[OutboxItem]) -> None:
        """Make the account's pending effects exactly `effects` (as the projection now has them)."""
        wanted = {e.key: e for e in effects}
        for key in list(self._by_account.get(account_id, ())):
            if key not in wanted:
                self._pending.pop(key, None)
                self._by_account[account_id].discard(key)
        for key, effect in wanted.items():
            if self._pending.get(key) == effect:
                continue
            self._pending[key] = effect
            self._by_account.setdefault(account_id, set()).add(key)
            ready = effect.not_before or datetime.min.replace(tzinfo=UTC)
            heapq.heappush(self._heap, (ready, next(self._seq), key))
            self._wake.set()
        if not self._by_account.get(account_id):
            self._by_account.pop(account_id, None)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                effect = self._next_ready()
                if effect is None:
                    await self._sleep()
                    continue
                await self._limiter.acquire_on_behalf_of(effect.key)
                self._in_flight.add(effect.key)
                tg.start_soon(self._attempt, effect)

    def _next_ready(self) -> OutboxItem | None:
        now = self._clock()
        while self._heap:
            ready, _, key = self._heap[0]
            effect = self._pending.get(key)
            if effect is None or key in self._in_flight:
                heapq.heappop(self._heap)
                continue
            if (effect.not_before or ready) > now:
                return None
            heapq.heappop(self._heap)
            return effect
        return None

    async def _sleep(self) -> None:
        self._wake = anyio.Event()
        delay = 60.0
        if self._heap:
            delay = max(0.0, (self._heap[0][0] - self._clock()).total_seconds())
        with anyio.move_on_after(min(delay, 60.0)):
            await self._wake.wait()

    async def _attempt(self, effect: OutboxItem) -> None:
        attempt = effect.attempts + 1

        async def progress(step: str, detail: str) -> None:
            report = OutcomeReport(effect, "progressed", attempt, detail, self._clock(), None, step)
            await self._record_with_retry(report)
            log.info("effect.progressed", key=effect.key, step=step, attempt=attempt, detail=detail)

        try:
            try:
                detail = await self._perform(effect, progress)
                outcome: EffectOutcomeKind = "succeeded"
                next_at = None
            except Exception as exc:  # every failure becomes a recorded outcome
                detail = _describe(exc)
                if isinstance(exc, PermanentEffectError) or attempt >= self._policy.max_attempts:
                    outcome, next_at = "gave_up", None
                else:
                    outcome = "failed_retrying"
                    delay = getattr(exc, "retry_after", None) or self._policy.delay(
                        attempt, self._rng
                    )
                    next_at = self._clock() + timedelta(seconds=delay)
            report = OutcomeReport(effect, outcome, attempt, detail, self._clock(), next_at)
            await self._record_with_retry(report)
            log.info(
                "effect.outcome",
                key=effect.key,
                account_id=effect.account_id,
                outcome=outcome,
                attempt=attempt,
                detail=detail,
            )
        finally:
            # `record` returns once the projection has applied the outcome, so `_pending` now
            # holds what is still due for this key (a later attempt), if anything.
            self._in_flight.discard(effect.key)
            if (still := self._pending.get(effect.key)) is not None:
                ready = still.not_before or datetime.min.replace(tzinfo=UTC)
                heapq.heappush(self._heap, (ready, next(self._seq), effect.key))
            self._limiter.release_on_behalf_of(effect.key)
            self._wake.set()

    async def _record_with_retry(self, report: OutcomeReport) -> None:
        # The attempt happened; losing its outcome would repeat it. Keep trying to record it
        # (storage may be briefly unavailable); the idempotency key makes a repeat harmless anyway.
        delay = 0.5
        while True:
            try:
                await self._record(report)
                return
            except Exception as exc:
                log.warning("effect.record_failed", key=report.effect.key, error=str(exc))
                await anyio.sleep(delay)
                delay = min(delay * 2, 30.0)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]
