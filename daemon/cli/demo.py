"""`staticipd demo`: the daemon, the sandbox provider and simulated users, on loopback.

Everything real but the provider: the daemon runs exactly as `serve` does (its own SQLite
log with fsync on commit, its HTTP listener, timers, outbox and pollers), with the provider's
times compressed so the 30-minute wait takes seconds. It ends when every account is `static`,
or `stalled` for the users who never answer, and leaves a log `verify`, `audit` and `replay`
work on.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets as pysecrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import anyio
import structlog

from daemon import exitcodes, logs
from daemon.cli.logcommands import open_log
from daemon.config import load_config, load_secrets
from daemon.provider.sandbox import SandboxProvider, SandboxSettings
from daemon.provider.sandbox.users import SimulatedUsers, UsersSettings
from daemon.provider.standardwebhooks import generate_secret
from daemon.service import Daemon
from eventstore import EventStoreError

log = structlog.get_logger(__name__)

# Nominal (provider-time) durations of the demo's migration schedule, compressed by the scale.
DELAY = 1800.0
REMINDERS = (900.0, 1800.0)
STALL_AFTER = 1800.0
STOP_GRACE = 900.0
RUNNING_GRACE = 900.0
AUTH_WINDOW = 9000.0
HUMAN_DELAY = (60.0, 1200.0)
NEVER_ANSWER = 0.08
DONE_STATES = ("static", "stalled")


@dataclass
class DemoOptions:
    """The `staticipd demo` options, with the defaults the command line shows."""

    accounts: int = 200
    database: Path | None = None
    time_scale: float = 600.0
    policy: str = "mixed"
    seed: int = 7
    port: int = 0
    timeout: float = 240.0
    out: TextIO = sys.stdout
    live_view: bool | None = None


@dataclass
class DemoResult:
    """How a demo ended: where its log and key are, the final funnel, and accounts to look at."""

    database: Path
    checkpoint_key: Path | None  # None: the log is in a temporary directory and its key is gone
    funnel: dict[str, int]
    finished: bool
    interrupted: bool
    url: str
    sample_account: str | None
    stalled_account: str | None
    head: tuple[int, str] = (0, "")  # the log's last position and hash when the demo ended


def write_secrets(
    directory: Path, client_secret: str, checkpoint_key: str | None = None
) -> dict[str, str]:
    """Fresh secrets for a daemon talking to the sandbox, as files (mode 600) in `directory`;
    `checkpoint_key` is the key of an existing log the daemon goes on with."""
    values = {
        # v2 webhooks are signed with the application's client secret
        # (docs/provider.md#webhook-signatures),
        # which is also the management API key.
        "webhook_secret": client_secret,
        "provider_api_key": client_secret,
        "auth_events_token": pysecrets.token_urlsafe(24),
        "operator_token": pysecrets.token_urlsafe(24),
        "notify_secret": generate_secret(),
        "checkpoint_key": checkpoint_key or pysecrets.token_urlsafe(32),
    }
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, value in values.items():
        path = directory / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    return values


class SandboxWorld:
    """The sandbox provider, the simulated users and the environment of a daemon between them.

    Shared by the demo, the end-to-end tests and the benchmarks, so all three run the same
    wiring: provider times compressed `time_scale`-fold, secrets as files, everything on
    loopback. `daemon()` builds a new `Daemon` on the same log (a restart is just another one).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        time_scale: float = 600.0,
        seed: int = 7,
        never_answer: float = NEVER_ANSWER,
        database: Path | None = None,
        checkpoint_key: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.scale = 1.0 / time_scale
        self.seed = seed
        self.never_answer = never_answer
        self.database = database or workdir / "staticipd.db"
        self.checkpoint_key = checkpoint_key
        self.env: dict[str, str] = {}
        self.values: dict[str, str] = {}

    async def start(self) -> None:
        scale = self.scale
        self.sandbox = SandboxProvider(
            SandboxSettings.compressed(scale, seed=self.seed, client_secret=pysecrets.token_hex(16))
        )
        await self.sandbox.start()
        credentials = self.workdir / "credentials"
        self.values = write_secrets(
            credentials, self.sandbox.settings.client_secret, self.checkpoint_key
        )
        self.users = SimulatedUsers(
            self.sandbox.base_url,
            "http://127.0.0.1:0",  # set by `daemon_listening` once the daemon is up
            self.values["auth_events_token"],
            [self.values["notify_secret"]],
            UsersSettings(
                seed=self.seed, time_scale=scale, auth_window=AUTH_WINDOW,
                human_delay=HUMAN_DELAY, never_answer=self.never_answer,
            ),
        )  # fmt: skip
        notify_url = await self.users.start()
        self.env = {
            "STATICIPD_DATABASE": str(self.database),
            "STATICIPD_SECRETS_DIR": str(credentials),
            "STATICIPD_PROVIDER__BASE_URL": self.sandbox.base_url,
            "STATICIPD_PROVIDER__CLIENT_ID": self.sandbox.settings.client_id,
            "STATICIPD_PROVIDER__SANDBOX": "true",
            "STATICIPD_PROVIDER__TIME_SCALE": f"{1 / scale:g}",
            "STATICIPD_PROVIDER__STATIC_IP_PATH": "/a/{client_id}/ip_addresses?environment=static",
            "STATICIPD_NOTIFY__URL": notify_url,
            "STATICIPD_MIGRATION__DELAY_SECONDS": str(DELAY * scale),
            "STATICIPD_MIGRATION__REMINDER_SCHEDULE_SECONDS": ",".join(
                str(r * scale) for r in REMINDERS
            ),
            "STATICIPD_MIGRATION__STALL_AFTER_SECONDS": str(STALL_AFTER * scale),
            "STATICIPD_MIGRATION__STOP_GRACE_SECONDS": str(STOP_GRACE * scale),
            "STATICIPD_MIGRATION__RUNNING_GRACE_SECONDS": str(RUNNING_GRACE * scale),
            "STATICIPD_POLLERS__IP_LIST_INTERVAL_SECONDS": str(max(1.0, 900 * scale)),
            "STATICIPD_POLLERS__RECONCILER_INTERVAL_SECONDS": str(max(1.0, 1800 * scale)),
            "STATICIPD_OUTBOX__BACKOFF_BASE_SECONDS": "0.2",
            "STATICIPD_OUTBOX__BACKOFF_MAX_SECONDS": "2",
            "STATICIPD_OUTBOX__CONCURRENCY": "16",
        }

    def daemon(self, port: int = 0, **overrides: str) -> Daemon:
        """A new daemon on the world's log; `overrides` are more `STATICIPD_*` settings."""
        env = {**self.env, "STATICIPD_LISTEN": f"127.0.0.1:{port}", **overrides}
        config = load_config(None, env)
        return Daemon(
            config, load_secrets(config, env), reload=lambda: (config, load_secrets(config, env))
        )

    async def daemon_listening(self, daemon: Daemon) -> str:
        """Once `daemon` is ready: point the users and the provider's webhooks at it."""
        url = f"http://127.0.0.1:{daemon.bound_port}"
        self.users.daemon_url = url
        await self.sandbox.register_webhook(f"{url}/webhooks/nylas")
        return url

    async def stop(self) -> None:
        await self.users.stop()
        await self.sandbox.stop()


async def run_demo(opts: DemoOptions) -> DemoResult:
    """Run a demo; its secrets live in a temporary directory removed when it ends, and only the
    log (and, for a log the user named, its checkpoint key beside it) stays."""
    database = opts.database or Path(tempfile.mkdtemp(prefix="staticipd-demo-")) / "staticipd.db"
    kept_key = key_beside(database) if opts.database else None
    with tempfile.TemporaryDirectory(prefix="staticipd-demo-secrets-") as secrets_dir:
        world = SandboxWorld(
            Path(secrets_dir), time_scale=opts.time_scale, seed=opts.seed, database=database,
            checkpoint_key=_read_key(kept_key) if kept_key and kept_key.exists() else None,
        )  # fmt: skip
        await world.start()
        if kept_key is not None and not kept_key.exists():
            _write_key(kept_key, world.values["checkpoint_key"])
        try:
            result = await _run_world(world, opts)
        finally:
            await world.stop()
    async with open_log(database) as store:
        result.head = await store.head()
    return result


async def _run_world(world: SandboxWorld, opts: DemoOptions) -> DemoResult:
    database, sandbox, users = world.database, world.sandbox, world.users
    daemon = world.daemon(opts.port)
    out = opts.out
    live_view = out.isatty() if opts.live_view is None else opts.live_view
    result: DemoResult | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        url = await world.daemon_listening(daemon)
        print(f"staticipd demo: {opts.accounts} accounts, time x{opts.time_scale:g}", file=out)
        print(f"  log:         {database}", file=out)
        print(f"  status page: {url}/  (while the demo runs)", file=out)
        print(f"  sandbox:     {sandbox.base_url} (simulated provider)", file=out, flush=True)
        account_ids = await _set_up(sandbox, users, url, world.values["operator_token"], opts)
        users_scope = anyio.CancelScope()
        tg.start_soon(_run_in, users_scope, users.authenticate_all)
        finished = await _watch(daemon, account_ids, opts, out, live_view)
        users_scope.cancel()  # users still waiting to authenticate stop with the demo
        # The daemon handles SIGINT/SIGTERM itself: if it stopped, the user asked us to.
        interrupted = daemon.stopped.is_set()
        projection = daemon.live.projection
        static = sorted(projection.ids_in("static"))
        stalled = sorted(projection.ids_in("stalled"))
        result = DemoResult(
            database=database,
            checkpoint_key=key_beside(database) if opts.database else None,
            funnel=projection.funnel(),
            finished=finished,
            interrupted=interrupted,
            url=url,
            sample_account=static[0] if static else None,
            stalled_account=stalled[0] if stalled else None,
        )
        daemon.stopped.set()
        tg.cancel_scope.deadline = anyio.current_time() + 30
    assert result is not None
    return result


def key_beside(database: Path) -> Path:
    """Where the demo keeps the checkpoint key of a log the user named: beside it."""
    return database.with_name(database.name + ".checkpoint-key")


def _read_key(path: Path) -> str:
    return path.read_text().strip()


def _write_key(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


async def _run_in(scope: anyio.CancelScope, job: Callable[[], Awaitable[object]]) -> None:
    with scope:
        await job()


async def _set_up(
    sandbox: SandboxProvider, users: SimulatedUsers, url: str, token: str, opts: DemoOptions
) -> list[str]:
    """The operator's and customer-success steps, through the real operator API."""
    accounts = await users.create_accounts(opts.accounts)
    ids = [a["id"] for a in accounts]
    sandbox.enable_static_ips()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{url}/v1/migration/enable", json={"reason": "demo"}) as r:
            r.raise_for_status()
        half = len(ids) // 2
        if opts.policy == "mixed":
            waves = [("wave-1", "notify", ids[:half]), ("wave-2", "restart", ids[half:])]
        else:
            waves = [("wave-1", opts.policy, ids)]
        for wave, policy, members in waves:
            if not members:
                continue
            body: dict[str, Any] = {"account_ids": members, "wave": wave, "policy": policy}
            async with http.post(f"{url}/v1/enrollments", json=body) as r:
                r.raise_for_status()
    return ids


async def _watch(
    daemon: Daemon, ids: list[str], opts: DemoOptions, out: TextIO, live_view: bool
) -> bool:
    started = time.monotonic()
    last_line = 0.0
    while True:
        counts = daemon.live.projection.funnel()
        # Count this run's accounts only: a named database may hold an earlier demo's too.
        states = (daemon.live.projection.account(i) for i in ids)
        done = sum(1 for a in states if a is not None and a.state in DONE_STATES)
        elapsed = time.monotonic() - started
        line = "  " + "  ".join(f"{s} {n}" for s, n in counts.items() if n) + f"  [{elapsed:4.0f}s]"
        if live_view:
            out.write("\r" + line.ljust(110))
            out.flush()
        elif elapsed - last_line >= 5:
            print(line, file=out, flush=True)
            last_line = elapsed
        if done >= len(ids) or elapsed > opts.timeout or daemon.stopped.is_set():
            if live_view:
                out.write("\n")
            return done >= len(ids)
        await anyio.sleep(0.25)


def demo_command(args: argparse.Namespace) -> int:
    if args.accounts < 1 or args.time_scale <= 0:
        print("staticipd: --accounts must be >= 1 and --time-scale > 0", file=sys.stderr)
        return exitcodes.USAGE
    refusal = _refusal(args.database, args.go_on)
    if refusal is not None:
        print(f"staticipd: demo: {refusal}", file=sys.stderr)
        return exitcodes.USAGE
    logs.configure_logging("warning", "console")
    opts = DemoOptions(
        accounts=args.accounts,
        database=args.database,
        time_scale=args.time_scale,
        policy=args.policy,
        seed=args.seed,
        port=args.port,
    )
    try:
        result = anyio.run(run_demo, opts)
    except KeyboardInterrupt:
        print("\nstaticipd demo: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except Exception as exc:  # an ExceptionGroup from the task group, or one error
        reason = _why_it_could_not_start(exc, opts)
        if reason is None:
            raise
        print(f"staticipd: demo: {reason}", file=sys.stderr)
        return exitcodes.USAGE
    db = result.database
    # The way the user ran us (`.venv/bin/staticipd` from `make demo`) works for the next commands.
    prog = sys.argv[0] if Path(sys.argv[0]).name == "staticipd" else "staticipd"
    print("\nFinal funnel: " + ", ".join(f"{s} {n}" for s, n in result.funnel.items() if n))
    print(f"The log is kept at {db}. Look at it with:")
    if result.sample_account:
        print(f"  {prog} audit {result.sample_account} --database {db}")
    if result.stalled_account:
        print(f"  {prog} audit {result.stalled_account} --database {db}   # never answered")
    if result.checkpoint_key is not None:
        print(f"  {prog} verify --database {db} --checkpoint-key-file {result.checkpoint_key}")
    else:  # the key went with the demo's secrets: vouch for the head written down here instead
        position, digest = result.head
        print(f"  {prog} verify --database {db} --expect {position}:{digest}")
    print(f"  {prog} replay --database {db}")
    print(f"  {prog} status --database {db}")
    if result.interrupted:
        print("staticipd demo: interrupted; the log so far is kept", file=sys.stderr)
        return exitcodes.INTERRUPTED
    if not result.finished:
        print("staticipd demo: not every account finished in time", file=sys.stderr)
        return exitcodes.PROBLEM
    return exitcodes.OK


def _refusal(database: Path | None, go_on: bool) -> str | None:
    """Why the demo will not start on `database`, said before anything runs; None: it will."""
    if database is None:
        if go_on:
            return "--continue needs the --database of an earlier demo"
        return None
    key = key_beside(database)
    if database.exists() and database.stat().st_size > 0:
        if not go_on:
            return (
                f"{database} already holds a log; name a new --database, or add --continue to "
                "go on with that demo's log"
            )
        if not key.exists():
            return f"cannot go on with {database}: its checkpoint key {key} is missing"
        return None
    if go_on:
        return f"--continue: there is no earlier demo's log at {database}"
    parent = database.parent
    if not parent.is_dir():
        return f"cannot create the log {database}: no directory {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the log {database}: {parent} is not writable"
    return None


def _why_it_could_not_start(exc: BaseException, opts: DemoOptions) -> str | None:
    """One line for a failure to start that the user can fix (a busy port, a log that cannot be
    opened); None for anything else, which is a bug and keeps its traceback."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = (_why_it_could_not_start(e, opts) for e in exc.exceptions)
        return next((r for r in reasons if r is not None), None)
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return f"cannot listen on 127.0.0.1:{opts.port}: {exc.strerror}"
    if isinstance(exc, EventStoreError):
        return f"cannot open the log {opts.database or 'in a temporary directory'}: {exc}"
    return None
