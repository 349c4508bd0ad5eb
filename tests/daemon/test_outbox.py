"""The outbox performs each pending effect, retries failures with backoff, and records outcomes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from daemon.runtime.outbox import (
    Outbox,
    OutboxItem,
    OutcomeReport,
    PermanentEffectError,
    Progress,
    RetryPolicy,
)

pytestmark = pytest.mark.anyio


class Harness:
    """Plays the projection: recorded outcomes update the pending set as the log would."""

    def __init__(self, outbox_kwargs: dict, fail_times: dict[str, int]) -> None:
        self.fail_times = fail_times
        self.calls: list[tuple[str, int]] = []
        self.reports: list[OutcomeReport] = []
        self.outbox = Outbox(self.perform, self.record, rng=random.Random(1), **outbox_kwargs)

    async def perform(self, effect: OutboxItem, progress: Progress) -> str:
        self.calls.append((effect.key, effect.attempts + 1))
        if self.fail_times.get(effect.key, 0) > effect.attempts:
            if effect.key.startswith("perm"):
                raise PermanentEffectError("refused for good")
            raise ConnectionError("provider unreachable")
        return "done"

    async def record(self, report: OutcomeReport) -> None:
        self.reports.append(report)
        e = report.effect
        remaining = []
        if report.outcome == "failed_retrying":
            remaining = [
                OutboxItem(e.key, e.account_id, e.effect, report.attempt, report.next_attempt_at)
            ]
        self.outbox.sync_account(e.account_id, remaining)

    async def run_until(self, n_reports: int) -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.outbox.run)
                while len(self.reports) < n_reports or len(self.outbox):
                    await anyio.sleep(0.001)
                tg.cancel_scope.cancel()


FAST = {"policy": RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_max=0.002)}


async def test_effect_succeeds_once() -> None:
    """A pending effect is performed once and its success recorded."""
    h = Harness(FAST, {})
    h.outbox.sync_account("a", [OutboxItem("k1", "a", object())])
    await h.run_until(1)
    assert h.calls == [("k1", 1)]
    assert [r.outcome for r in h.reports] == ["succeeded"]


async def test_failures_retry_then_succeed_with_same_key() -> None:
    """A failing effect is retried with the same idempotency key until it succeeds."""
    h = Harness(FAST, {"k": 2})
    h.outbox.sync_account("a", [OutboxItem("k", "a", None)])
    await h.run_until(3)
    assert h.calls == [("k", 1), ("k", 2), ("k", 3)]
    assert [r.outcome for r in h.reports] == ["failed_retrying", "failed_retrying", "succeeded"]
    assert all(r.next_attempt_at is not None for r in h.reports[:2])


async def test_gives_up_after_max_attempts_or_permanent_error() -> None:
    """After the maximum attempts, or on a permanent refusal, the effect is given up."""
    h = Harness(FAST, {"k": 99, "perm": 99})
    h.outbox.sync_account("a", [OutboxItem("k", "a", None)])
    h.outbox.sync_account("b", [OutboxItem("perm", "b", None)])
    await h.run_until(4)
    outcomes = {(r.effect.key, r.attempt): r.outcome for r in h.reports}
    assert outcomes == {
        ("k", 1): "failed_retrying",
        ("k", 2): "failed_retrying",
        ("k", 3): "gave_up",
        ("perm", 1): "gave_up",
    }


async def test_resumed_effect_waits_for_its_next_attempt_time() -> None:
    """An effect resumed after a restart keeps its attempt count and is not tried early."""
    now = datetime.now(UTC)
    h = Harness(FAST, {})
    h.outbox.sync_account("a", [OutboxItem("later", "a", None, 2, now + timedelta(hours=1))])
    h.outbox.sync_account("b", [OutboxItem("now", "b", None, 1, now - timedelta(seconds=1))])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.outbox.run)
            while not h.reports:
                await anyio.sleep(0.001)
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert h.calls == [("now", 2)]


async def test_concurrency_is_bounded() -> None:
    """No more effects run at once than the configured concurrency."""
    running = peak = 0
    done: list[str] = []

    async def perform(effect: OutboxItem, progress: Progress) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.005)
        running -= 1
        return "ok"

    async def record(report: OutcomeReport) -> None:
        done.append(report.effect.key)
        outbox.sync_account(report.effect.account_id, [])

    outbox = Outbox(perform, record, concurrency=3)
    for i in range(12):
        outbox.sync_account(f"a{i}", [OutboxItem(f"k{i}", f"a{i}", None)])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            while len(done) < 12:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert sorted(done) == sorted(f"k{i}" for i in range(12))
    assert peak == 3


async def test_a_step_is_recorded_mid_attempt_and_the_next_attempt_carries_it() -> None:
    """A step done in an attempt is recorded before the attempt goes on; after the attempt
    fails, the retry is handed the item with that step, under the next attempt number."""
    seen: list[tuple[int, tuple[str, ...]]] = []
    reports: list[OutcomeReport] = []
    steps: tuple[str, ...] = ()

    async def perform(effect: OutboxItem, progress: Progress) -> str:
        seen.append((effect.attempts + 1, effect.steps))
        if "downgraded" not in effect.steps:
            await progress("downgraded", "downgrade answered 200")
            assert [r.outcome for r in reports][-1] == "progressed"  # in the log already
            raise ConnectionError("upgrade unreachable")
        return "upgraded"

    async def record(report: OutcomeReport) -> None:
        nonlocal steps
        reports.append(report)
        e = report.effect
        if report.outcome == "progressed":
            steps = (*steps, report.step)
            item = OutboxItem(e.key, e.account_id, e.effect, e.attempts, e.not_before, steps)
            outbox.sync_account(e.account_id, [item])
        elif report.outcome == "failed_retrying":
            item = OutboxItem(
                e.key, e.account_id, e.effect, report.attempt, report.next_attempt_at, steps
            )
            outbox.sync_account(e.account_id, [item])
        else:
            outbox.sync_account(e.account_id, [])

    outbox = Outbox(perform, record, rng=random.Random(1), **FAST)
    outbox.sync_account("a", [OutboxItem("restart", "a", None)])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            while len(reports) < 3 or len(outbox):
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert [(r.outcome, r.attempt, r.step) for r in reports] == [
        ("progressed", 1, "downgraded"),
        ("failed_retrying", 1, ""),
        ("succeeded", 2, ""),
    ]
    assert seen == [(1, ()), (2, ("downgraded",))]
