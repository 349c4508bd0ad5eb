"""Start-up benchmark: time from `Daemon.run()` to ready, with and without a projection snapshot.

Run with ``python -m bench.bench_startup`` (``--help`` for sizes). The log holds real domain
events: a fixed set of accounts is driven through the migration by the domain harness (most
end `static`, every fifth waits in `stopped_waiting` with a future timer), then the log grows
with further webhooks and auths for the same accounts. So the projection (and its snapshot)
stays the same size while the log gets longer: start-up with a snapshot should stay flat.
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from bench import daemon_env, print_table, write_secrets
from daemon import logs
from daemon.config import load_config, load_secrets
from daemon.domain import (
    AuthReported,
    EffectOutcome,
    EnableMigration,
    Enroll,
    MigrationSettings,
    ProviderNotified,
    TimerDue,
    encode_event,
)
from daemon.domain.testing import Harness
from daemon.runtime.live import SNAPSHOT_NAME
from daemon.service import Daemon
from eventstore import EventStore, NewEvent


class LogBuilder:
    """Drives accounts through the domain harness and appends what it decides to a store."""

    def __init__(self, accounts: int) -> None:
        # In the future, so no pending timer is overdue when a measured daemon starts.
        self.t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        self.h = Harness(MigrationSettings())
        self.accounts = [f"acc{i:06d}" for i in range(accounts)]
        self.appended = 0
        self._ids = itertools.count()
        self._filler = 0

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def migrate_all(self) -> None:
        """Enable, enrol, and run every account's migration (every fifth stops half-way)."""
        h, t0 = self.h, self.t0
        h.handle(EnableMigration(input_id="enable", occurred_at=t0, actor="bench"), t0)
        enroll = Enroll(
            input_id="enroll", occurred_at=t0, actor="bench",
            account_ids=tuple(self.accounts), wave="w1", policy="notify",
        )  # fmt: skip
        h.handle(enroll, t0)
        for k, a in enumerate(self.accounts):
            now = t0 + timedelta(minutes=1)
            h.handle(AuthReported(input_id=self._id("auth"), account_id=a, occurred_at=now), now)
            now += timedelta(minutes=1)
            self._hook(a, "account.stopped", now)
            if k % 5 == 0:
                continue  # left waiting: a pending timer the driver must hold at start-up
            [(timer_id, due)] = h.accounts[a].pending_timers.items()
            fired = TimerDue(
                input_id=f"timer:{timer_id}", account_id=a,
                timer_id=timer_id, due_at=due, fired_at=due,
            )  # fmt: skip
            h.handle(fired, due)
            for key in list(h.accounts[a].pending_effects):
                outcome = EffectOutcome(
                    input_id=f"{key}:1", account_id=a, effect_key=key,
                    outcome="succeeded", attempt=1, occurred_at=due,
                )  # fmt: skip
                h.handle(outcome, due)
            now = due + timedelta(minutes=5)
            h.handle(AuthReported(input_id=self._id("auth"), account_id=a, occurred_at=now), now)
            self._hook(a, "account.running", now + timedelta(minutes=1))

    def _hook(self, account: str, trigger: str, at: datetime) -> None:
        inp = ProviderNotified(
            input_id=self._id("hook"), account_id=account, trigger=trigger, occurred_at=at
        )
        self.h.handle(inp, at)

    def grow_to(self, total: int) -> None:
        """Add webhooks and auths for the same accounts until the log holds `total` events."""
        h = self.h
        while len(h.log) < total:
            a = self.accounts[self._filler % len(self.accounts)]
            at = self.t0 + timedelta(days=1, seconds=self._filler)
            if self._filler % 2:
                h.handle(AuthReported(input_id=self._id("auth"), account_id=a, occurred_at=at), at)
            else:
                self._hook(a, "account.running", at)
            self._filler += 1

    async def flush(self, store: EventStore, chunk: int = 2_000) -> None:
        """Append the harness's new events to `store`, in its order and with its event ids."""
        log = self.h.log
        while self.appended < len(log):
            batch = log[self.appended : self.appended + chunk]
            new = []
            for e in batch:
                enc = encode_event(e.event)
                new.append(NewEvent(e.stream, enc.type, enc.data, enc.schema, event_id=e.event_id))
            await store.append(new)
            self.appended += len(batch)


async def start_once(env: dict[str, str]) -> tuple[float, int, int, int]:
    """Seconds from `run()` to ready; the position, accounts and pending timers at that point."""
    config = load_config(None, env)
    secrets = load_secrets(config, env)
    daemon = Daemon(config, secrets, reload=lambda: (config, secrets))
    async with anyio.create_task_group() as tg:
        start = time.perf_counter()
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        elapsed = time.perf_counter() - start
        facts = (
            daemon.live.position,
            len(daemon.live.projection),
            len(daemon.timers),
        )
        daemon.stopped.set()  # a clean stop writes a snapshot at the head
    return elapsed, *facts


def drop_snapshot(database: Path) -> None:
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM snapshots")


def snapshot_facts(database: Path) -> tuple[int, int]:
    with sqlite3.connect(database) as conn:
        row = conn.execute(
            "SELECT position, length(blob) + (SELECT COALESCE(SUM(length(blob)), 0)"
            " FROM snapshot_parts WHERE name = snapshots.name) FROM snapshots WHERE name = ?",
            (SNAPSHOT_NAME,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def run(args: argparse.Namespace) -> None:
    sizes = sorted({int(args.events * f) for f in (0.25, 0.5, 1.0)})
    logs.configure_logging("error", "json")  # the daemon's ready/warning lines, not the table
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        write_secrets(work / "credentials")
        database = work / "staticipd.db"
        env = daemon_env(database, work / "credentials")
        builder = LogBuilder(args.accounts)
        build_seconds = -time.perf_counter()
        builder.migrate_all()
        build_seconds += time.perf_counter()
        # The migration itself is the shortest log there can be with these accounts.
        sizes = sorted({max(size, len(builder.h.log)) for size in sizes})
        for size in sizes:
            build_start = time.perf_counter()
            builder.grow_to(size)
            async with await EventStore.open(database, synchronous="NORMAL") as store:
                await builder.flush(store)
            build_seconds += time.perf_counter() - build_start
            cold = []
            for _ in range(args.repeat):
                drop_snapshot(database)
                cold.append(await start_once(env))
            # Each clean stop leaves a snapshot at the head, which the next start-ups load.
            warm = [await start_once(env) for _ in range(args.repeat)]
            position, blob = snapshot_facts(database)
            assert position == cold[0][1], "the snapshot should be at the head of the log"
            cold_s = min(c[0] for c in cold)
            warm_s = min(w[0] for w in warm)
            _, accounts, timers = warm[0][1:]
            rows.append((
                f"{cold[0][1]:,}", f"{accounts:,}", f"{timers:,}", f"{blob / 1024:,.0f}",
                f"{cold_s:.2f}", f"{warm_s:.3f}", f"{cold_s / warm_s:.0f}x",
            ))  # fmt: skip
    print(
        f"daemon start-up (Daemon.run until ready), best of {args.repeat}; log of real domain "
        f"events written at {len(builder.h.log) / build_seconds:,.0f} events/s"
    )
    print_table(
        ["log events", "accounts", "timers", "snapshot KiB", "no snapshot s", "snapshot s",
         "speed-up"],
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="largest log size")
    parser.add_argument("--accounts", type=int, default=2_000, help="accounts in the log")
    parser.add_argument("--repeat", type=int, default=1, help="start-ups per case (best kept)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the database")
    args = parser.parse_args(argv)
    anyio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
