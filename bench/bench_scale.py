"""Scale benchmark: what a log of 10k, 100k or 1M accounts costs the daemon and the log commands.

Run with ``python -m bench.bench_scale`` (``--help``; ``make bench`` runs the small size). For
each size a log is built through the domain, as the daemon would write it: the migration enabled,
the accounts enrolled in waves of 10,000 (alternately `notify` and `restart`), and each account
driven through its migration (first auth, the stop webhook, the timer, the effect's outcome, the
second auth or the restart, the running webhook); every fifth account is left waiting with its
timer pending, as at any moment of a real migration. Then, each in its own process so that its
peak memory is its own:

- appends on that log: 256 concurrent one-event appends with input-derived event ids, FULL sync;
- start-up of the daemon to ready without a snapshot (replaying the log), and with one, with the
  resident memory at ready and the peak of the whole run (a clean stop writes the snapshot);
- the time to write the snapshot, and its size;
- `status`, `verify` and `export` (to /dev/null): time and peak memory.

The last table gives the growth factor of each figure from one size to the next (10 for a
figure linear in accounts). The 1M size (``--accounts 1000000``) needs about 10 GB of disk and
some minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from bench import daemon_env, print_table, write_secrets
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
from daemon.domain.vocabulary import Policy
from eventstore import EventStore, NewEvent

WAVE = 10_000
APPENDERS = 256


async def build(database: Path, accounts: int) -> int:
    """Write a log of `accounts` migrating accounts through the domain; returns its events."""
    h = Harness(MigrationSettings())
    # In the future, so no pending timer is overdue when a measured daemon starts.
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    written = 0
    async with await EventStore.open(database, synchronous="NORMAL") as store:

        async def flush() -> None:
            nonlocal written
            new = []
            for e in h.log:
                enc = encode_event(e.event)
                new.append(NewEvent(e.stream, enc.type, enc.data, enc.schema, event_id=e.event_id))
            for start in range(0, len(new), 5_000):
                await store.append(new[start : start + 5_000])
            written += len(new)
            h.log.clear()
            h.event_ids.clear()  # nothing is redelivered here: the harness need not remember

        h.handle(EnableMigration(input_id="enable", occurred_at=t0, actor="bench"), t0)
        ids = [hashlib.sha256(b"acc%d" % i).hexdigest()[:25] for i in range(accounts)]
        for w, start in enumerate(range(0, accounts, WAVE)):
            wave = ids[start : start + WAVE]
            policy: Policy = "restart" if w % 2 else "notify"
            enroll = Enroll(
                input_id=f"enroll-{w}", occurred_at=t0, actor="bench",
                account_ids=tuple(wave), wave=f"wave-{w + 1}", policy=policy,
            )  # fmt: skip
            h.handle(enroll, t0)
            for k, a in enumerate(wave):
                _migrate(h, a, t0 + timedelta(seconds=k % 3600), waiting=k % 5 == 0)
                del h.accounts[a]  # done with it: the builder keeps no per-account state
                if len(h.log) >= 50_000:
                    await flush()
        await flush()
    return written


def _migrate(h: Harness, a: str, t: datetime, *, waiting: bool) -> None:
    h.handle(AuthReported(input_id=f"auth:{a}:1", account_id=a, occurred_at=t), t)
    t += timedelta(minutes=1)
    h.handle(ProviderNotified(input_id=f"v2:{a}:stop", account_id=a,
                              trigger="account.stopped", occurred_at=t), t)  # fmt: skip
    if waiting:
        return
    [(timer_id, due)] = h.accounts[a].pending_timers.items()
    h.handle(TimerDue(input_id=f"timer:{timer_id}", account_id=a, timer_id=timer_id,
                      due_at=due, fired_at=due), due)  # fmt: skip
    for key in list(h.accounts[a].pending_effects):
        h.handle(EffectOutcome(input_id=f"outcome:{key}:1", account_id=a, effect_key=key,
                               outcome="succeeded", attempt=1, occurred_at=due), due)  # fmt: skip
    t = due + timedelta(minutes=5)
    if h.accounts[a].state == "second_step_due":  # notify: the user authenticates again
        h.handle(AuthReported(input_id=f"auth:{a}:2", account_id=a, occurred_at=t), t)
    h.handle(ProviderNotified(input_id=f"v2:{a}:run", account_id=a,
                              trigger="account.running", occurred_at=t), t)  # fmt: skip


# -- the measured phases, each run in a process of its own -----------------------------------


async def count_events(database: Path) -> int:
    async with await EventStore.open(database) as store:
        return (await store.head())[0]


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib() -> float:
    fields = Path(f"/proc/{os.getpid()}/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def phase_start(database: Path, secrets: Path) -> dict[str, Any]:
    """Start a daemon on the log, wait until ready, stop it cleanly (writing the snapshot)."""
    from daemon import logs
    from daemon.config import load_config, load_secrets
    from daemon.service import Daemon

    logs.configure_logging("error", "json")
    env = daemon_env(database, secrets)
    config = load_config(None, env)
    keys = load_secrets(config, env)
    daemon = Daemon(config, keys, reload=lambda: (config, keys))
    async with anyio.create_task_group() as tg:
        start = time.perf_counter()
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        ready = time.perf_counter() - start
        at_ready = rss_now_mib()
        accounts, position = len(daemon.live.projection), daemon.live.position
        stop = time.perf_counter()
        daemon.stopped.set()
    return {
        "ready_s": ready, "stop_s": time.perf_counter() - stop, "rss_ready_mib": at_ready,
        "accounts": accounts, "position": position,
    }  # fmt: skip


async def phase_snapshot(database: Path) -> dict[str, Any]:
    """Load the projection from its snapshot, then time writing it again (encode + store)."""
    from daemon.runtime.live import LiveProjection

    async with await EventStore.open(database) as store:
        live = await LiveProjection.load(store, resident=True)
        live.projection.rewrite_all()  # measure the dearest: every account written
        t = time.perf_counter()
        _, parts, size = await live.write_snapshot()
        total = time.perf_counter() - t
    return {"write_s": total, "bytes": size, "parts": parts}


async def phase_append(database: Path, total: int) -> dict[str, Any]:
    """`APPENDERS` tasks appending one event per call, with ids shaped like the daemon's."""
    async with await EventStore.open(database, synchronous="FULL") as store:
        per_task = total // APPENDERS
        data = b'{"account_id":"x","trigger":"account.running","meaning":"running"}'

        async def appender(k: int) -> None:
            for i in range(per_task):
                digest = hashlib.sha256(b"%d:%d:%f" % (k, i, time.time())).hexdigest()
                await store.append([NewEvent(f"account-bench{k}", "Bench", data,
                                             event_id=f"v2:{digest}#0")])  # fmt: skip

        start = time.perf_counter()
        await asyncio.gather(*(appender(k) for k in range(APPENDERS)))
        elapsed = time.perf_counter() - start
    return {"events_per_s": per_task * APPENDERS / elapsed}


def run_phase(argv: list[str]) -> dict[str, Any]:
    """Run one phase in a child process; its JSON answer (with its own peak memory)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", *argv], capture_output=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-3000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return answer


def run_command(args: list[str], database: Path) -> dict[str, Any]:
    """A `staticipd` log command in its own process: wall time and peak memory."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args, "--database", str(database)],
            stdout=null, stderr=null,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"staticipd {' '.join(args)} exited {proc.returncode}")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024}


def measure(accounts: int, work: Path, appends: int, *, keep: bool = False) -> dict[str, Any]:
    database = work / f"scale-{accounts}.db"
    secrets = work / "credentials"
    t = time.perf_counter()
    if keep and database.exists():  # built by an earlier run: measure it again
        events = anyio.run(count_events, database)
    else:
        events = anyio.run(build, database, accounts)
    built = time.perf_counter() - t
    row: dict[str, Any] = {"accounts": accounts, "events": events, "build_s": built}
    row["db_mib"] = database.stat().st_size / 2**20
    common = ["--database", str(database), "--secrets", str(secrets)]
    row["cold"] = run_phase(["--phase", "start", "--no-snapshot", *common])
    row["warm"] = run_phase(["--phase", "start", *common])
    row["snapshot"] = run_phase(["--phase", "snapshot", *common])
    row["append"] = run_phase(["--phase", "append", "--appends", str(appends), *common])
    for command in ("status", "verify", "export"):
        row[command] = run_command([command], database)
    if keep:
        return row
    database.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    return row


def report(rows: list[dict[str, Any]]) -> None:
    print("scale: logs built through the domain; each figure from its own process")
    print_table(
        ["accounts", "events", "DB MiB", "appends/s", "start cold s", "start snap s",
         "RSS ready MiB", "peak MiB", "snapshot s", "snap MiB", "status s", "verify s",
         "export s", "cmd peak MiB"],
        [(
            f"{r['accounts']:,}", f"{r['events']:,}", f"{r['db_mib']:,.0f}",
            f"{r['append']['events_per_s']:,.0f}", f"{r['cold']['ready_s']:.2f}",
            f"{r['warm']['ready_s']:.2f}", f"{r['warm']['rss_ready_mib']:,.0f}",
            f"{max(r['cold']['peak_mib'], r['warm']['peak_mib']):,.0f}",
            f"{r['snapshot']['write_s']:.2f}", f"{r['snapshot']['bytes'] / 2**20:,.1f}",
            f"{r['status']['wall_s']:.2f}", f"{r['verify']['wall_s']:.2f}",
            f"{r['export']['wall_s']:.2f}",
            f"{max(r[c]['peak_mib'] for c in ('status', 'verify', 'export')):,.0f}",
        ) for r in rows],
    )  # fmt: skip
    if len(rows) < 2:
        return
    figures: dict[str, Callable[[dict[str, Any]], float]] = {
        "events": lambda r: r["events"],
        "start cold": lambda r: r["cold"]["ready_s"],
        "start snapshot": lambda r: r["warm"]["ready_s"],
        "RSS at ready": lambda r: r["warm"]["rss_ready_mib"],
        "peak RSS": lambda r: max(r["cold"]["peak_mib"], r["warm"]["peak_mib"]),
        "snapshot write": lambda r: r["snapshot"]["write_s"],
        "status": lambda r: r["status"]["wall_s"],
        "verify": lambda r: r["verify"]["wall_s"],
        "appends/s": lambda r: r["append"]["events_per_s"],
    }
    pairs = list(itertools.pairwise(rows))
    steps = [f"{a['accounts']:,} -> {b['accounts']:,}" for a, b in pairs]
    print("\ngrowth factor from one size to the next")
    print_table(
        ["figure", *steps],
        [(name, *(f"{f(b) / f(a):.1f}x" for a, b in pairs)) for name, f in figures.items()],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", default="10000", help="sizes, comma-separated")
    parser.add_argument("--appends", type=int, default=25_600, help="events appended per size")
    parser.add_argument("--dir", type=Path, default=None, help="where the logs are built")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the logs in --dir (which must be given) and measure a log already there again"
        " instead of building it",
    )
    parser.add_argument("--phase", choices=("start", "snapshot", "append"), help=argparse.SUPPRESS)
    parser.add_argument("--no-snapshot", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--secrets", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return _child(args)
    sizes = [int(s) for s in args.accounts.split(",")]
    if args.keep and args.dir is None:
        parser.error("--keep needs --dir")
    rows = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = args.dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        if not (args.keep and (work / "credentials").exists()):  # a kept log keeps its key
            write_secrets(work / "credentials")
        for accounts in sizes:
            rows.append(measure(accounts, work, args.appends, keep=args.keep))
            print(f"  {accounts:,} accounts measured", file=sys.stderr, flush=True)
    report(rows)
    return 0


def _child(args: argparse.Namespace) -> int:
    if args.phase == "start":
        if args.no_snapshot:
            import sqlite3

            with sqlite3.connect(args.database) as conn:
                conn.execute("DELETE FROM snapshots")
        answer = anyio.run(phase_start, args.database, args.secrets)
    elif args.phase == "snapshot":
        answer = anyio.run(phase_snapshot, args.database)
    else:
        answer = anyio.run(phase_append, args.database, args.appends)
    answer["peak_mib"] = peak_rss_mib()
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
