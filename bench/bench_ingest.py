"""Webhook ingest benchmark: the real daemon (durable append, FULL sync) against a bare aiohttp app.

Run with ``python -m bench.bench_ingest`` (``--help`` for sizes). Each server runs in its own
process on 127.0.0.1 and receives the same pre-signed, unique v2 webhook bodies (so every daemon
request is a real durable append, never a duplicate); the trivial app only reads the body and
answers 200, which is the HTTP stack's ceiling. Between the HMAC+JSON handler and the daemon, two
servers locate the cost: the same handler plus one group-committed SQLite row (`sqlite`, the floor
of any SQLite log) and plus one `EventStore.append` (`store`, no domain). The load generator is
`wrk` when installed (a Lua script cycles through the body file), else an aiohttp client in this
process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import daemon_env, print_table, write_secrets

BASE_DATE = 1_760_000_000
PATH = "/webhooks/nylas"

# Each wrk thread keeps the lines whose index modulo the thread count is its own, so threads
# never send the same body (a resent body would be a cheap duplicate, not an append).
WRK_SCRIPT = r"""
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local nthreads = tonumber(args[2])
  sigs, bodies, n, i = {}, {}, 0, 0
  for line in io.lines(args[1]) do
    if i % nthreads == id then
      local sp = line:find(" ", 1, true)
      sigs[#sigs + 1] = line:sub(1, sp - 1)
      bodies[#bodies + 1] = line:sub(sp + 1)
    end
    i = i + 1
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  local k = ((n - 1) % #bodies) + 1
  wrk.headers["X-Nylas-Signature"] = sigs[k]
  return wrk.format(nil, nil, nil, bodies[k])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"status":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Result:
    target: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    cpu_seconds: float | None = None  # the server process's, all threads, during the run

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> str:
        if self.cpu_seconds is None or not self.requests:
            return ""
        return f"{self.cpu_seconds / self.requests * 1e6:,.0f}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process `pid` (all its threads); None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def make_body(i: int, accounts: int) -> bytes:
    """A v2 `account.running` delta, unique by date and account (dedupe digests the delta)."""
    account = f"acc{i % accounts:06d}"
    delta = {
        "date": BASE_DATE + i,
        "object": "account",
        "type": "account.running",
        "object_data": {
            "namespace_id": account,
            "account_id": account,
            "object": "account",
            "attributes": None,
            "id": account,
            "metadata": None,
        },
    }
    return json.dumps({"deltas": [delta]}, separators=(",", ":")).encode()


def write_bodies(path: Path, secret: str, start: int, count: int, accounts: int) -> int:
    """Write `count` lines of "<signature> <body>"; return the mean body size in bytes."""
    key = secret.encode()
    total = 0
    with path.open("wb") as f:
        for i in range(start, start + count):
            body = make_body(i, accounts)
            total += len(body)
            f.write(hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b" " + body + b"\n")
    return total // count


# --- the servers (each in its own process) -------------------------------------------------------


def announce(port_file: Path, port: int | None) -> None:
    """Tell the parent process the listening port (it polls for the file)."""
    port_file.write_text(str(port))


async def serve_daemon(workdir: Path, port_file: Path, synchronous: str) -> None:
    import anyio

    from daemon import logs
    from daemon.config import load_config, load_secrets
    from daemon.memory import tune_gc
    from daemon.service import Daemon

    if synchronous == "pg":  # the log on the throwaway PostgreSQL the parent started
        env = daemon_env(workdir / "unused.db", workdir / "credentials")
        env["STATICIPD_DATABASE"] = (workdir / "pg.url").read_text()
    else:
        env = daemon_env(workdir / f"{synchronous}.db", workdir / "credentials")
        env["STATICIPD_DATABASE__SYNCHRONOUS"] = synchronous
    config = load_config(None, env)
    logs.configure_logging("warning", "json")
    secrets = load_secrets(config, env)
    daemon = Daemon(config, secrets, reload=lambda: (config, secrets))
    tune_gc()  # as `staticipd serve` does
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        announce(port_file, daemon.bound_port)
    # The daemon handles SIGTERM itself: graceful stop, flush, snapshot.


def _signature_ok(secret: bytes, body: bytes, given: str) -> str | None:
    """What any receiver does first: the body's HMAC (hex) if it matches `given`, else None."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return digest if hmac.compare_digest(digest, given) else None


def _secret(workdir: Path) -> bytes:
    return (workdir / "credentials" / "webhook_secret").read_text().strip().encode()


async def serve_trivial(port_file: Path, secret: bytes | None = None) -> None:
    """The HTTP stack alone; with `secret`, also what any receiver must do: HMAC and JSON."""
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if secret is not None:
            if not _signature_ok(secret, body, request.headers.get("X-Nylas-Signature", "")):
                return web.json_response({"error": "bad signature"}, status=401)
            json.loads(body)
        return web.json_response({"recorded": 1, "duplicates": 0})

    await _serve_app(receive, port_file)


async def _serve_app(receive: Any, port_file: Path) -> None:
    """Serve `receive` at PATH on a free loopback port until SIGTERM."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post(PATH, receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    announce(port_file, runner.addresses[0][1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def serve_sqlite(workdir: Path, port_file: Path, secret: bytes) -> None:
    """The floor of any durable receiver here: HMAC, JSON, one group-committed SQLite row.

    No event store: one table (digest, body) in WAL mode with synchronous=FULL, one thread that
    runs BEGIN, one executemany and COMMIT per batch, requests answered after COMMIT. No hash
    chain, versions, duplicate answers or domain: whatever real log sits on SQLite here costs
    at least this much.
    """
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web

    from daemon.memory import tune_gc

    tune_gc()
    db = sqlite3.connect(workdir / "sqlite.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS bodies (digest TEXT PRIMARY KEY, body BLOB)")
    thread = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    queue: list[tuple[tuple[str, bytes], asyncio.Future[None]]] = []
    busy = False

    def commit(rows: list[tuple[str, bytes]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR IGNORE INTO bodies VALUES (?, ?)", rows)
        db.execute("COMMIT")

    def flush() -> None:
        nonlocal busy, queue
        batch, queue = queue, []
        busy = bool(batch)
        if batch:
            done = loop.run_in_executor(thread, commit, [row for row, _ in batch])
            done.add_done_callback(lambda d: answer(batch, d.exception()))

    def answer(batch: list[tuple[Any, asyncio.Future[None]]], error: BaseException | None) -> None:
        for _, future in batch:
            if future.done():  # its request was cancelled (the client went away)
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        flush()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        digest = _signature_ok(secret, body, request.headers.get("X-Nylas-Signature", ""))
        if digest is None:
            return web.json_response({"error": "bad signature"}, status=401)
        json.loads(body)
        future = loop.create_future()
        queue.append(((digest, body), future))
        if not busy:
            flush()
        await future
        return web.json_response({"recorded": 1, "duplicates": 0})

    await _serve_app(receive, port_file)
    thread.shutdown()
    db.close()


async def serve_store(workdir: Path, port_file: Path, secret: bytes) -> None:
    """The event store alone: HMAC, JSON, then one durable `EventStore.append` per request.

    No domain, engine or projection: each body is stored as one event keyed by its digest,
    with the daemon's store settings (WAL, FULL, group commit, hash chain). Between this and
    the HMAC+JSON handler is the cost of durable storage; between this and the daemon, the cost
    of deciding and projecting.
    """
    from aiohttp import web

    from daemon.domain import account_stream
    from daemon.memory import tune_gc
    from eventstore import EventStore, NewEvent

    tune_gc()
    async with EventStore.open(workdir / "store.db", synchronous="FULL") as store:

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            digest = _signature_ok(secret, body, request.headers.get("X-Nylas-Signature", ""))
            if digest is None:
                return web.json_response({"error": "bad signature"}, status=401)
            delta = json.loads(body)["deltas"][0]
            account = delta["object_data"]["id"]
            event = NewEvent(account_stream(account), "Received", body, event_id=digest)
            result = await store.append([event], if_absent=digest)
            return web.json_response(
                {"recorded": sum(result.created), "duplicates": int(result.skipped)}
            )

        await _serve_app(receive, port_file)


def start_server(
    target: str, workdir: Path, *, uvloop: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `target` (a key of TARGETS) in a child process; its port."""
    port_file = workdir / f"{target}.port"
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.bench_ingest", "--serve", target, "--dir", str(workdir)]
    cmd += ["--uvloop"] if uvloop else []
    with (workdir / f"{target}.log").open("ab") as log:  # the daemon's warnings, not the table
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the {target} server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the load generators -------------------------------------------------------------------------


def run_wrk(
    url: str, bodies: Path, script: Path, seconds: float, connections: int, threads: int
) -> tuple[int, float, float, float, int, int]:
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "30s", "-s", str(script), url, "--", str(bodies), str(threads),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    r = json.loads(line.removeprefix("WRKJSON "))
    return (
        r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3,
        r["errors"], r["status"],
    )  # fmt: skip


async def run_aiohttp(
    url: str, lines: list[list[bytes]], seconds: float, connections: int
) -> tuple[int, float, float, float, int, int]:
    import aiohttp

    latencies: list[float] = []
    errors = non_2xx = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal errors, non_2xx
        mine = lines[k::connections]
        n = 0
        while time.perf_counter() < deadline:
            sig, body = mine[n % len(mine)]
            n += 1
            headers = {"X-Nylas-Signature": sig.decode(), "Content-Type": "application/json"}
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    non_2xx += not 200 <= resp.status < 300
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, k) for k in range(connections)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return len(latencies), elapsed, q[49] * 1e3, q[98] * 1e3, errors, non_2xx


_COUNT_DELTAS = "SELECT count(*) FROM events WHERE type = 'ProviderNotificationRecorded'"


def count_appended(database: Path | str) -> int:
    """Webhook deltas recorded in the log (warm-up included): a SQLite file or a URL."""
    if isinstance(database, str):
        import asyncpg

        async def count() -> int:
            conn = await asyncpg.connect(database)
            try:
                return int(await conn.fetchval(_COUNT_DELTAS))
            finally:
                await conn.close()

        return asyncio.run(count())
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (n,) = conn.execute(_COUNT_DELTAS).fetchone()
    return int(n)


BASELINES = ("trivial", "hmac-json")
TARGETS = {
    "trivial": "aiohttp: read body, answer 200 (ceiling)",
    "hmac-json": "aiohttp: check HMAC, parse JSON, answer 200",
    "sqlite": "aiohttp: HMAC, JSON, SQLite row, group commit, FULL",
    "store": "aiohttp: HMAC, JSON, EventStore.append, FULL",
    "daemon-FULL": "daemon: verify, decide, append, FULL",
    "daemon-NORMAL": "daemon, NORMAL (WAL: no fsync per commit)",
    "daemon-pg": "daemon on PostgreSQL (fsync, synchronous_commit on)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument(
        "--connections", default="32,128", help="concurrent connections, comma-separated"
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="run every server (and the daemon) on uvloop"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--bodies", type=int, default=120_000, help="unique signed bodies per measured run"
    )
    parser.add_argument("--accounts", type=int, default=5_000, help="distinct account ids")
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve and args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.serve == "trivial":
        asyncio.run(serve_trivial(args.dir / "trivial.port"))
        return 0
    if args.serve == "hmac-json":
        asyncio.run(serve_trivial(args.dir / "hmac-json.port", _secret(args.dir)))
        return 0
    if args.serve == "sqlite":
        asyncio.run(serve_sqlite(args.dir, args.dir / "sqlite.port", _secret(args.dir)))
        return 0
    if args.serve == "store":
        asyncio.run(serve_store(args.dir, args.dir / "store.port", _secret(args.dir)))
        return 0
    if args.serve:
        sync = args.serve.removeprefix("daemon-")
        asyncio.run(serve_daemon(args.dir, args.dir / f"{args.serve}.port", sync))
        return 0
    targets = [t for t in args.targets.split(",") if t]
    levels = [int(c) for c in args.connections.split(",") if c]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    results: list[Result] = []
    appended: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if "daemon-pg" in targets:  # a throwaway server from the machine's binaries
            from eventstore.testing import ThrowawayPostgres

            postgres = ThrowawayPostgres.start(durable=True)
            stack.callback(postgres.stop)
            (work / "pg.url").write_text(postgres.url(postgres.create_database()))
        secret = write_secrets(work / "credentials")["webhook_secret"]
        warm = work / "warm.txt"
        # One file of fresh bodies per connection level: a later run never repeats (and so
        # never gets the cheaper duplicate path for) a body an earlier run sent.
        files = [work / f"bodies-{n}.txt" for n in range(len(levels))]
        for n, file in enumerate(files):
            size = write_bodies(file, secret, n * args.bodies, args.bodies, args.accounts)
        # Warm-up bodies are distinct from the measured ones, so no measured request is a
        # duplicate of a warm-up one.
        write_bodies(warm, secret, 10**9, 5_000, args.accounts)
        script = work / "bodies.lua"
        script.write_text(WRK_SCRIPT)
        for target in targets:
            proc, port = start_server(target, work, uvloop=args.uvloop)
            url = f"http://127.0.0.1:{port}{PATH}"
            try:
                for n, connections in enumerate(levels):
                    for file, seconds, measured in (
                        (warm, args.warmup if n == 0 else 0, False),
                        (files[n], args.duration, True),
                    ):
                        if seconds <= 0:
                            continue
                        cpu_before = cpu_seconds(proc.pid)
                        if client == "wrk":
                            r = run_wrk(url, file, script, seconds, connections, args.threads)
                        else:
                            lines = [x.split(b" ", 1) for x in file.read_bytes().splitlines()]
                            r = asyncio.run(run_aiohttp(url, lines, seconds, connections))
                        cpu_after = cpu_seconds(proc.pid)
                        if measured:
                            cpu = None
                            if cpu_before is not None and cpu_after is not None:
                                cpu = cpu_after - cpu_before
                            results.append(Result(target, connections, *r, cpu_seconds=cpu))
            finally:
                stop_server(proc)
            if target == "daemon-pg":
                appended[target] = count_appended((work / "pg.url").read_text())
            elif target.startswith("daemon-"):
                appended[target] = count_appended(work / f"{target.removeprefix('daemon-')}.db")

    loop = "uvloop" if args.uvloop else "asyncio"
    print(
        f"webhook ingest: {client}, {args.duration:g} s per run, {size}-byte bodies, {loop}, "
        f"{os.cpu_count()} cores shared by client and server"
    )
    by = {(r.target, r.connections): r for r in results}
    rows = []
    for r in results:
        base = by.get(("hmac-json", r.connections))
        ratio = f"{r.rate / base.rate:.2f}x" if base and r.target not in BASELINES else ""
        floor = by.get(("sqlite", r.connections))
        durable = f"{r.rate / floor.rate:.2f}x" if floor and r.target not in BASELINES else ""
        rows.append(
            (TARGETS[r.target], r.connections, f"{r.requests:,}", f"{r.rate:,.0f}",
             f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", r.errors, r.non_2xx, r.cpu_us, ratio,
             durable)
        )  # fmt: skip
    print_table(
        ["server", "conns", "requests", "req/s", "p50 ms", "p99 ms", "errors", "non-2xx",
         "CPU us/req", "vs HMAC+JSON", "vs sqlite"],
        rows,
    )  # fmt: skip
    for target, n in appended.items():
        most = max(r.requests for r in results if r.target == target)
        note = "" if most <= args.bodies else " (bodies were reused, raise --bodies)"
        print(f"  {target}: {n:,} deltas in the log, warm-up included{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
