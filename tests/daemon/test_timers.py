"""The timer driver fires each pending timer once, in due order, and never early."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.runtime.timers import DueTimer, TimerDriver

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock the test sets by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_fires_in_due_order_and_once() -> None:
    """Timers fire in order of their due times, each exactly once."""
    clock = FakeClock(T0)
    fired: list[str] = []

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        fired.append(timer.timer_id)

    driver = TimerDriver(fire, max_sleep=0.005, clock=clock, overdue_rate=0)
    for i, offset in enumerate([30, 10, 20]):
        driver.schedule(f"t{i}", "acct", T0 + timedelta(seconds=offset))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            for step in (10, 20, 30):
                clock.now = T0 + timedelta(seconds=step)
                while len(fired) < step // 10:
                    await anyio.sleep(0.001)
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert fired == ["t1", "t2", "t0"]
    assert len(driver) == 0


async def test_wall_clock_behind_due_time_never_fires_early() -> None:
    """A timer is not fired while the UTC clock is before its due time, however often it wakes."""
    clock = FakeClock(T0)
    fired: list[datetime] = []

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        fired.append(fired_at)

    driver = TimerDriver(fire, max_sleep=0.002, clock=clock)
    driver.schedule("t", "acct", T0 + timedelta(minutes=30))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            await anyio.sleep(0.05)
            assert fired == []
            clock.now = T0 + timedelta(minutes=31)
            while not fired:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert fired == [T0 + timedelta(minutes=31)]


async def test_cancel_and_resync_replace_pending_timers() -> None:
    """Cancelled timers never fire; syncing an account keeps exactly the timers it lists."""
    clock = FakeClock(T0)
    fired: list[str] = []

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        fired.append(timer.timer_id)

    driver = TimerDriver(fire, max_sleep=0.002, clock=clock, overdue_rate=0)
    driver.schedule("a1", "a", T0 + timedelta(seconds=1))
    driver.schedule("a2", "a", T0 + timedelta(seconds=2))
    driver.schedule("b1", "b", T0 + timedelta(seconds=3))
    driver.cancel("b1")
    driver.sync_account("a", [("a2", T0 + timedelta(seconds=4))])
    assert driver.next_due() == T0 + timedelta(seconds=4)
    clock.now = T0 + timedelta(seconds=10)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            while len(driver):
                await anyio.sleep(0.001)
            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert fired == ["a2"]


async def test_failed_firing_is_retried() -> None:
    """A firing that fails (storage unavailable) stays pending and is tried again."""
    clock = FakeClock(T0 + timedelta(seconds=5))
    attempts: list[str] = []

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        attempts.append(timer.timer_id)
        if len(attempts) == 1:
            raise RuntimeError("storage unavailable")

    driver = TimerDriver(fire, max_sleep=0.002, retry_seconds=0.001, clock=clock)
    driver.schedule("t", "acct", T0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            while driver.fired < 1:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert attempts == ["t", "t"]
    assert len(driver) == 0


def test_heap_holds_many_timers_without_a_task_each() -> None:
    """Hundreds of thousands of pending timers live in one heap, earliest on top."""
    driver = TimerDriver(lambda t, f: anyio.sleep(0))
    for i in range(200_000):
        driver.schedule(f"t{i}", f"a{i}", T0 + timedelta(seconds=(i * 7919) % 200_000))
    assert len(driver) == 200_000
    assert driver.next_due() == T0


@settings(max_examples=60, deadline=None)
@given(
    dues=st.lists(st.integers(0, 20), min_size=0, max_size=25),
    follow_ups=st.lists(st.integers(0, 20), max_size=10),
    window=st.integers(1, 5),
)
def test_a_window_of_the_earliest_fires_every_timer_once_and_earliest_first(
    dues: list[int], follow_ups: list[int], window: int
) -> None:
    """Holding only a window of the earliest timers, the driver still fires each timer once,
    and each when no pending timer is earlier, also with timers added while it fires."""
    pending: dict[str, tuple[datetime, str]] = {
        f"t{i:02d}": (T0 + timedelta(seconds=d), f"acct{i % 3}") for i, d in enumerate(dues)
    }
    fired: list[str] = []
    more = iter(follow_ups)

    def source(limit: int) -> list[tuple[datetime, str, str]]:
        return sorted((due, acct, t) for t, (due, acct) in pending.items())[:limit]

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        assert timer.timer_id in pending
        assert timer.due_at == source(1)[0][0]  # no pending timer is due earlier
        fired.append(timer.timer_id)
        del pending[timer.timer_id]  # as the projection drops a fired timer
        if (extra := next(more, None)) is not None:  # and a new one comes with the change
            timer_id = f"f{len(fired):02d}"
            pending[timer_id] = (T0 + timedelta(seconds=extra), timer.account_id)
        mine = {t: due for t, (due, acct) in pending.items() if acct == timer.account_id}
        driver.sync_account(timer.account_id, mine.items())

    driver = TimerDriver(
        fire, clock=lambda: T0 + timedelta(days=1), overdue_rate=0, source=source, window=window
    )

    async def main() -> None:
        driver.load()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(driver.run)
                while pending:
                    await anyio.sleep(0.001)
                tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(fired) == len(set(fired)) == len(dues) + min(len(follow_ups), len(fired))
    assert not pending
