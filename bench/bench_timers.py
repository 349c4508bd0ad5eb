"""Timer benchmark: `TimerDriver` holding hundreds of thousands of pending timers in one heap.

Run with ``python -m bench.bench_timers`` (``--help`` for sizes). Measures the time to schedule
them, the memory the driver's structures take, and how fast it fires them once all are overdue
(`overdue_rate=0`, so no stagger, and a trivial fire callback). For comparison, the memory of
the design the heap replaces, one sleeping task per timer, measured on a smaller number.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel

from bench import print_table, rss_mib
from daemon.runtime.timers import DueTimer, TimerDriver

Timers = list[tuple[str, str, datetime]]


def make_timers(n: int, accounts: int, overdue: bool, seed: int = 1) -> Timers:
    """(timer id, account id, due time) in random due order, all past or all future."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    sign = -1 if overdue else 1
    out = []
    for i in range(n):
        due = now + sign * timedelta(seconds=60 + rng.random() * 30 * 86400)
        out.append((f"acc{i % accounts:06d}:timer:{i}", f"acc{i % accounts:06d}", due))
    return out


async def _never(timer: DueTimer, fired_at: datetime) -> None:
    raise AssertionError("no timer is due")


def schedule_all(driver: TimerDriver, timers: Timers) -> float:
    start = time.perf_counter()
    for timer_id, account_id, due in timers:
        driver.schedule(timer_id, account_id, due)
    return time.perf_counter() - start


def driver_bytes(timers: Timers) -> int:
    """Bytes the driver allocates to hold `timers` (ids and datetimes are shared, as in the
    daemon, where they come from the projection)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    driver = TimerDriver(_never, overdue_rate=0)
    schedule_all(driver, timers)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del driver
    return used


async def fire_all(timers: Timers, yield_each: bool) -> tuple[float, int]:
    """Seconds to fire every (overdue) timer; the count fired."""
    scope = anyio.CancelScope()
    fired = 0
    target = len(timers)

    async def fire(timer: DueTimer, fired_at: datetime) -> None:
        nonlocal fired
        fired += 1
        if yield_each:
            await anyio.lowlevel.checkpoint()  # as an append would: let other tasks run
        if fired == target:
            scope.cancel()
            await anyio.lowlevel.checkpoint()

    driver = TimerDriver(fire, overdue_rate=0)
    schedule_all(driver, timers)
    start = time.perf_counter()
    with scope:
        await driver.run()
    return time.perf_counter() - start, fired


async def task_per_timer_bytes(n: int) -> tuple[int, float]:
    """Bytes and seconds to start `n` tasks each sleeping until its timer, the design avoided."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with anyio.create_task_group() as tg:
        start = time.perf_counter()
        for _ in range(n):
            tg.start_soon(anyio.sleep, 86400)
        await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.01)  # let every task start and reach its sleep
        elapsed = time.perf_counter() - start
        used = tracemalloc.get_traced_memory()[0] - before
        tg.cancel_scope.cancel()
    tracemalloc.stop()
    return used, elapsed


async def run(args: argparse.Namespace) -> None:
    n = args.timers
    future = make_timers(n, args.accounts, overdue=False)
    overdue = make_timers(n, args.accounts, overdue=True, seed=2)

    rss_before = rss_mib()
    driver = TimerDriver(_never, overdue_rate=0)
    secs = schedule_all(driver, future)
    rss_after = rss_mib()
    assert len(driver) == n
    next_due = driver.next_due()
    assert next_due == min(d for _, _, d in future)
    del driver
    heap_bytes = driver_bytes(future)
    fire_s, fired = await fire_all(overdue, yield_each=False)
    fire_yield_s, fired_yield = await fire_all(overdue, yield_each=True)
    assert fired == fired_yield == n

    print(f"timer driver, {n:,} pending timers over {args.accounts:,} accounts, one heap")
    rows = [
        ("schedule (random due order)", f"{secs:.2f} s", f"{n / secs:,.0f} timers/s"),
        ("memory of the driver", f"{heap_bytes / 2**20:.1f} MiB",
         f"{heap_bytes / n:,.0f} B/timer (RSS +{rss_after - rss_before:.0f} MiB)"),
        ("fire all overdue, trivial callback", f"{fire_s:.2f} s", f"{n / fire_s:,.0f} fired/s"),
        ("fire all overdue, callback yields once", f"{fire_yield_s:.2f} s",
         f"{n / fire_yield_s:,.0f} fired/s"),
    ]  # fmt: skip
    if args.tasks_compare:
        m = args.tasks_compare
        used, started = await task_per_timer_bytes(m)
        rows.append((
            f"one sleeping task per timer ({m:,})", f"{used / 2**20:.1f} MiB",
            f"{used / m:,.0f} B/timer, {started:.2f} s to start",
        ))  # fmt: skip
    print_table(["operation", "total", "rate"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=300_000, help="pending timers")
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts they belong to")
    parser.add_argument(
        "--tasks-compare",
        type=int,
        default=20_000,
        help="tasks for the one-task-each row (0: skip)",
    )
    args = parser.parse_args(argv)
    anyio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
