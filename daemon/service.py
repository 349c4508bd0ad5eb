"""`staticipd serve`: the long-running process, anyio task groups holding every part.

The store's writer, the engine, the live projection, the HTTP listener, the timer driver, the
outbox and the pollers run side by side; if any of them dies the group is cancelled and the
process exits non-zero rather than running half-alive. The writer runs in an outer group, so
it outlives the others for the shutdown's snapshot and checkpoint. SIGTERM/SIGINT: answer every
new or still queued HTTP write 503 (`Retry-After`, `Connection: close`), let the requests being
recorded finish (bounded grace), close the listener, flush the writer, write a snapshot, exit 0.
SIGHUP: reload the secrets and the log level without a restart.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from daemon import exitcodes, logs, sdnotify
from daemon.config import Config, ConfigError, Secrets, load_config, load_secrets, render_effective
from daemon.domain import (
    AccountState,
    EffectOutcome,
    Input,
    IpListChanged,
    MigrationSettings,
    TimerDue,
)
from daemon.domain.vocabulary import IpListKind
from daemon.http.context import Runtime
from daemon.http.server import AppRunner, build_app
from daemon.metrics import (
    EFFECT_ATTEMPTS,
    EFFECT_DURATION,
    EFFECTS,
    EVENTS_APPENDED,
    IP_LIST_CHANGES,
    LOG_BATCH_EVENTS,
    LOG_COMMIT_DURATION,
    PROVIDER_REQUEST_DURATION,
    PROVIDER_REQUESTS,
    TIMER_LATENESS,
    TIMERS_FIRED,
    Metrics,
)
from daemon.provider import allowlist
from daemon.provider.client import ProviderClient
from daemon.runtime.effects import EffectPerformer
from daemon.runtime.engine import Engine
from daemon.runtime.live import LiveProjection
from daemon.runtime.outbox import (
    Outbox,
    OutboxItem,
    OutcomeReport,
    Perform,
    Progress,
    RetryPolicy,
)
from daemon.runtime.pollers import IpListWatcher, Reconciler
from daemon.runtime.timers import DueTimer, TimerDriver
from eventstore import EventStore, EventStoreError, NotLeader, StorageUnavailable
from eventstore.postgres import PostgresStore
from eventstore.postgres.leadership import CommitNotices, Leadership, LeadershipLost

log = structlog.get_logger(__name__)

SNAPSHOT_EVERY_EVENTS = 10_000
SNAPSHOT_EVERY_SECONDS = 300.0
CHECKPOINT_EVERY_SECONDS = 600.0
# The engine sources of the HTTP routes: refused at SIGTERM (503), the others run to the end.
HTTP_SOURCES = ("webhook", "auth-event", "operator")
# After SIGTERM, keep-alive connections stay open this long (within the grace) so a client's
# next request gets its 503 and `Connection: close` rather than a closed socket.
KEEPALIVE_LINGER_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.02
# While the store is unhealthy it is probed, first after this many seconds, then doubling.
STORAGE_PROBE_FIRST_SECONDS = 0.5
STORAGE_PROBE_MAX_SECONDS = 4.0


def migration_settings(config: Config) -> MigrationSettings:
    """The domain's settings from the `[migration]` section (seconds become durations)."""
    m = config.migration
    return MigrationSettings(
        delay=timedelta(seconds=m.delay_seconds),
        reminder_schedule=tuple(timedelta(seconds=s) for s in m.reminder_schedule_seconds),
        stall_after=timedelta(seconds=m.stall_after_seconds),
        stop_grace=timedelta(seconds=m.stop_grace_seconds),
        running_grace=timedelta(seconds=m.running_grace_seconds),
        default_policy=m.default_policy,
    )


class Daemon:
    """Builds the parts from the configuration and runs them until told to stop."""

    def __init__(
        self, config: Config, secrets: Secrets, *, reload: Callable[[], tuple[Config, Secrets]]
    ):
        self.config = config
        self.secrets = secrets
        self._reload = reload
        self.metrics = Metrics()
        self.stopped = anyio.Event()
        self.bound_port: int | None = None
        self.ready = anyio.Event()
        self._stall_logged = False
        # On a PostgreSQL log: this process's part in leadership (None on SQLite: it leads).
        self.leadership: Leadership | None = None
        self.leading = anyio.Event()

    async def run(self) -> None:
        config = self.config
        store = await EventStore.open(
            config.database.location,
            synchronous=config.database.synchronous,
            supervised=True,
            password=self.secrets.database_password,
        )
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(_essential, "store writer", store.run_writer, True)
                try:
                    await self._run_with(store)
                finally:
                    # Flush what is queued and let the writer return, also when a part failed.
                    with anyio.CancelScope(shield=True):
                        await store.close()
        finally:
            await store.close()
            if self.leadership is not None:  # the lock goes only after the last commit
                with anyio.CancelScope(shield=True):
                    await self.leadership.close()

    async def _run_with(self, store: EventStore) -> None:
        config = self.config
        live = await LiveProjection.load(store)
        store.observe_commits(self._observe_commit)
        engine = Engine(
            store, live, migration_settings(config),
            on_appended=lambda src, new: self.metrics.inc(
                EVENTS_APPENDED, new, source=src
            ),
        )  # fmt: skip
        self.engine, self.live, self.store = engine, live, store
        runtime = Runtime(config, store, live, engine, self.metrics, self.secrets)
        self.runtime = runtime
        if isinstance(store, PostgresStore):
            # Every `serve` on a PostgreSQL log takes part; a lone one simply leads.
            self.leadership = await store.lead(config.cluster.lease_seconds)
            runtime.role = "standby"
        await self._write_allowlist()  # the file mirrors the log, also after a missed write
        app = build_app(runtime)

        async def reconciled(inputs: Sequence[Input]) -> object:
            return await engine.submit(inputs, source="reconciler")

        timers = TimerDriver(
            self._fire_timer,
            overdue_rate=config.timers.overdue_stagger_per_second,
            source=lambda limit: live.projection.due_soonest(limit),
        )
        async with aiohttp.ClientSession() as session:
            provider = self._provider(session)
            performer = EffectPerformer(
                session,
                notify_url=config.notify.url,
                notify_secrets=lambda: runtime.secrets.notify_secrets,
                provider=provider,
                observe=lambda observed: engine.submit([observed], source="provider-check"),
                notify_timeout=config.notify.timeout_seconds,
            )
            outbox = Outbox(
                self._timed(performer),
                self._record_outcome,
                concurrency=config.outbox.concurrency,
                policy=RetryPolicy(
                    max_attempts=config.outbox.max_attempts,
                    backoff_base=config.outbox.backoff_base_seconds,
                    backoff_max=config.outbox.backoff_max_seconds,
                ),
            )
            self.timers, self.outbox = timers, outbox

            def lead(tg: anyio.abc.TaskGroup) -> None:
                """Start the leader's parts, as a fresh leader does: timers and effects from
                the projection, then the engine, timers, outbox, pollers and snapshots."""
                _feed(live, timers, outbox)
                for name, job in self._leader_jobs(live, timers, outbox, provider, reconciled):
                    tg.start_soon(_essential, name, job)
                runtime.role = "leader"
                self.leading.set()

            # What the grace leaves unfinished (`_drain`) aiohttp cancels after this long.
            runner = AppRunner(app, shutdown_timeout=_CANCEL_AFTER_SECONDS, access_log=None)
            await runner.setup()
            drained = False
            try:
                site = web.TCPSite(runner, config.listen_host, config.listen_port)
                await site.start()
                self.bound_port = _port_of(runner)
                async with anyio.create_task_group() as tg:
                    for name, job in self._jobs(live):
                        tg.start_soon(_essential, name, job)
                    if self.leadership is None:
                        lead(tg)
                    else:
                        campaign = functools.partial(self._campaign, self.leadership, tg, lead)
                        # Started once its first try for the lock is answered: a lone `serve`
                        # is the leader by the time it says it is ready.
                        await tg.start(_essential, "leadership", campaign)
                    tg.start_soon(self._signals)
                    self._announce(store, live, provider)
                    self.ready.set()
                    await self.stopped.wait()
                    runtime.stopping = True
                    refused = engine.stop_intake(HTTP_SOURCES)
                    sdnotify.notify("STOPPING=1")
                    log.info("daemon.stopping", position=live.position, refused=refused)
                    # Let in-flight requests finish (bounded by the grace) while the writer
                    # and the projection still run, so they can be answered; then close.
                    await _drain(runner, runtime, config.http.shutdown_grace_seconds)
                    await runner.cleanup()
                    drained = True
                    tg.cancel_scope.cancel()
            finally:
                if not drained:
                    await runner.cleanup()
        if runtime.role == "leader":  # a standby writes no snapshot nor checkpoint
            await self._snapshot(store, live)
            key = runtime.secrets.checkpoint_key
            if key and live.position:  # an empty log has no head to vouch for
                await self._checkpoint(store, key)
        log.info("daemon.stopped", position=live.position, role=runtime.role)

    async def _campaign(
        self,
        leadership: Leadership,
        tg: anyio.abc.TaskGroup,
        lead: Callable[[anyio.abc.TaskGroup], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """A standby: follow the log until the leader lock is ours; then wait out any commit of
        the old leader still in flight, catch up to the head and start the leader's parts;
        then keep the lock. Losing it ends the process (LeadershipLost): never half a leader,
        never back to standby in the same process (docs/log-format.md, "Leadership")."""
        store = self.store
        assert isinstance(store, PostgresStore)
        first = await leadership.try_acquire()
        waited = 0.0
        if not first:
            task_status.started()
            notices = store.commit_notices()
            try:
                async with anyio.create_task_group() as following:
                    following.start_soon(self._follow, notices, leadership.lease / 2)
                    waited = await leadership.acquire()
                    following.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await notices.close()
        while True:
            try:
                await store.wait_out_commits()  # under the write lock, fenced: ours now
                break
            except NotLeader:
                raise
            except StorageUnavailable as exc:  # an old leader's transaction still holds it
                log.warning("leadership.waiting_for_log", error=str(exc))
                await anyio.sleep(leadership.step)
        await self.live.follow()
        lead(tg)
        log.info(
            "leadership.acquired",
            position=self.live.position,
            waited_seconds=round(waited, 3),
            pending_timers=sum(self.live.projection.timer_counts().values()),
            pending_effects=len(self.outbox),
        )
        sdnotify.notify(f"STATUS=leader; log position {self.live.position}")
        if first:
            task_status.started()
        try:
            await leadership.hold(
                lambda: self.live.position,
                lambda: log.warning("leadership.reclaimed", position=self.live.position),
            )
        except LeadershipLost as exc:
            log.error("leadership.lost", reason=str(exc), position=self.live.position)
            raise

    async def _follow(self, notices: CommitNotices, every: float) -> None:
        """A standby's projection follows the leader's commits: read what is new at each commit
        notification, and every `every` seconds anyway (a missed notification, a reconnect)."""
        while True:
            try:
                await self.live.follow()
            except StorageUnavailable as exc:
                log.warning("standby.follow_failed", error=str(exc))
            if self.live.failed is not None:
                return  # the projection job raises it
            await notices.wait(every)

    def _jobs(self, live: LiveProjection) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The parts that run for the daemon's whole life, leader or standby, each supervised
        by `_essential`."""
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("projection", live.run),
            ("storage-probe", lambda: _probe_storage(self.store)),
        ]
        period = sdnotify.watchdog_period()
        if period is not None:  # the unit sets WatchdogSec=
            alive = functools.partial(self._writer_alive, period)
            jobs.append(("watchdog", functools.partial(sdnotify.keep_alive, period, alive)))
        return jobs

    def _leader_jobs(
        self,
        live: LiveProjection,
        timers: TimerDriver,
        outbox: Outbox,
        provider: ProviderClient | None,
        reconciled: Callable[[Sequence[Input]], Awaitable[object]],
    ) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The parts only the leader runs: it decides, appends, fires timers, performs effects,
        polls the provider and writes snapshots."""
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("engine", self.engine.run),
            ("timers", timers.run),
            ("outbox", outbox.run),
            ("snapshots", lambda: self._snapshots(self.store, live)),
        ]
        if provider is not None:
            pollers = self.config.pollers
            environments: tuple[IpListKind, ...] = (
                ("dynamic", "static") if self.config.provider.static_ip_path else ("dynamic",)
            )
            watcher = IpListWatcher(
                provider, self.submit_ip_lists, interval=pollers.ip_list_interval_seconds,
                environments=environments,
            )  # fmt: skip
            reconciler = Reconciler(
                provider, lambda: live.projection, reconciled,
                interval=pollers.reconciler_interval_seconds,
            )  # fmt: skip
            jobs += [("ip-list-watcher", watcher.run), ("reconciler", reconciler.run)]
        return jobs

    def _writer_alive(self, limit: float) -> bool:
        """Whether the watchdog may ping: the store's writer committed, or had nothing to do,
        within the last `limit` seconds. A writer stuck on storage stops the pings, so systemd
        restarts the process; the event loop is checked by the ping task running at all."""
        stalled = self.store.writer_stalled_for()
        if stalled < limit:
            self._stall_logged = False
            return True
        if not self._stall_logged:
            self._stall_logged = True
            log.error(
                "watchdog.writer_stalled",
                seconds=round(stalled, 1),
                detail="no keep-alive to systemd until the log's writer commits again",
            )
        return False

    def _provider(self, session: aiohttp.ClientSession) -> ProviderClient | None:
        p = self.config.provider
        key = self.secrets.provider_api_key
        if not (key and p.client_id) or p.api_version != 2:
            return None  # v3 has no sync jobs to restart nor accounts to reconcile
        return ProviderClient(
            p.base_url, p.client_id, key, session,
            api_version=p.api_version, timeout=p.timeout_seconds,
            static_ip_path=p.static_ip_path or None, observe=self._observe_provider,
        )  # fmt: skip

    def _observe_commit(self, seconds: float, events: int) -> None:
        self.metrics.observe(LOG_COMMIT_DURATION, seconds)
        self.metrics.observe(LOG_BATCH_EVENTS, events)

    def _observe_provider(self, operation: str, status: int, seconds: float) -> None:
        label = str(status) if status else "error"
        self.metrics.inc(PROVIDER_REQUESTS, operation=operation, status=label)
        self.metrics.observe(PROVIDER_REQUEST_DURATION, seconds, operation=operation)

    def _timed(self, perform: Perform) -> Perform:
        """`perform`, with each attempt's duration observed by effect and result."""

        def observe(item: OutboxItem, started: float, result: str) -> None:
            self.metrics.observe(
                EFFECT_DURATION, time.perf_counter() - started,
                effect=type(item.effect).__name__, result=result,
            )  # fmt: skip

        async def timed(item: OutboxItem, progress: Progress) -> str:
            started = time.perf_counter()
            try:
                detail = await perform(item, progress)
            except Exception:  # an attempt cancelled at shutdown is not counted
                observe(item, started, "error")
                raise
            observe(item, started, "ok")
            return detail

        return timed

    def _announce(self, store: EventStore, live: LiveProjection, provider: object) -> None:
        config, secrets = self.config, self.secrets
        missing = list(secrets.missing)
        log.info(
            "daemon.ready",
            role=self.runtime.role,
            listen=f"http://{config.listen_host}:{self.bound_port}",
            database=store.path,
            synchronous=config.database.synchronous,
            position=live.position,
            accounts=len(live.projection),
            pending_timers=sum(live.projection.timer_counts().values()),
            pending_effects=len(self.outbox),
        )
        if missing:
            # Not under a `secrets`/`credentials` key: the log redactor masks the values of
            # keys naming secrets, which would hide *which* ones are missing.
            log.warning("daemon.not_configured", missing=missing)
        if provider is None:
            log.warning(
                "daemon.provider_not_configured",
                detail="no provider client_id/api key: pollers, restarts and checks are off",
            )
        elif config.provider.sandbox:
            log.warning(
                "daemon.sandbox_provider",
                base_url=config.provider.base_url,
                detail="talking to the SANDBOX provider, not the real one",
            )
        if not config.notify.url:
            log.warning(
                "daemon.notify_not_configured",
                detail="re-authentication requests cannot reach the application",
            )
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS=serving; log position {live.position}")

    async def submit_ip_lists(self, inputs: Sequence[Input]) -> object:
        """Record the IP-list watcher's observations; on a change, rewrite the allowlist file
        and run `ip_change_command`."""
        decisions = await self.engine.submit(inputs, source="ip-list-watcher")
        changed = [e for d in decisions for e in d.events if isinstance(e, IpListChanged)]
        for event in changed:
            self.metrics.inc(IP_LIST_CHANGES, kind=event.kind)
            log.info("ip_list.changed", kind=event.kind, added=event.added, removed=event.removed)
        if changed:
            await self._write_allowlist()
        if changed and self.config.pollers.ip_change_command:
            await self._run_ip_change_command()
        return decisions

    async def _write_allowlist(self) -> None:
        """Replace the allowlist file with the recorded IP lists, atomically, when it differs
        (nothing before the first list is recorded); a failure is logged, not fatal."""
        ip_lists = self.live.projection.application.ip_lists
        path = self.config.allowlist.path
        if not ip_lists:
            return
        try:
            text = allowlist.render_file(ip_lists)
            written = await anyio.to_thread.run_sync(allowlist.replace_file, path, text)
        except (OSError, allowlist.AllowlistError) as exc:
            log.error("allowlist.write_failed", path=str(path), error=str(exc))
            return
        if written:
            log.info("allowlist.written", path=str(path), lists=sorted(ip_lists))

    async def _run_ip_change_command(self) -> None:
        """Hand the new allowlist (plain, one network a line) to the operator's command on stdin."""
        argv = list(self.config.pollers.ip_change_command)
        try:
            text = allowlist.render_observed(self.live.projection.application.ip_lists, "plain")
            with anyio.fail_after(60):
                result = await anyio.run_process(argv, input=text.encode(), check=False)
        except (OSError, TimeoutError, allowlist.AllowlistError) as exc:
            log.error("ip_list.command_failed", command=argv[0], error=str(exc))
            return
        level = log.info if result.returncode == 0 else log.error
        level("ip_list.command_ran", command=argv[0], exit_status=result.returncode)

    async def _fire_timer(self, timer: DueTimer, fired_at: datetime) -> None:
        await self.engine.submit(
            [
                TimerDue(
                    input_id=f"timer:{timer.timer_id}", account_id=timer.account_id,
                    timer_id=timer.timer_id, due_at=timer.due_at, fired_at=fired_at,
                )
            ],
            source="timer",
        )  # fmt: skip
        self.metrics.inc(TIMERS_FIRED)
        lateness = (fired_at - timer.due_at).total_seconds()
        self.metrics.observe(TIMER_LATENESS, max(0.0, lateness))

    async def _record_outcome(self, report: OutcomeReport) -> None:
        effect = report.effect
        await self.engine.submit(
            [
                EffectOutcome(
                    input_id=f"outcome:{effect.key}:{report.attempt}"
                    + (f":{report.step}" if report.step else ""),
                    account_id=effect.account_id, effect_key=effect.key,
                    outcome=report.outcome, attempt=report.attempt, detail=report.detail,
                    occurred_at=report.at, next_attempt_at=report.next_attempt_at,
                    step=report.step,
                )
            ],
            source="outbox",
        )  # fmt: skip
        self.metrics.inc(EFFECTS, outcome=report.outcome)
        if report.outcome in ("succeeded", "gave_up"):
            self.metrics.observe(
                EFFECT_ATTEMPTS, report.attempt,
                effect=type(effect.effect).__name__, outcome=report.outcome,
            )  # fmt: skip

    async def _snapshots(self, store: EventStore, live: LiveProjection) -> None:
        """A snapshot every 10,000 events or 5 minutes, whichever comes first (when anything
        changed); a signed checkpoint of the head every 10 minutes when a key is configured."""
        snap_position = checkpoint_position = live.position
        snap_at = checkpoint_at = anyio.current_time()
        while True:
            await anyio.sleep(5)
            now, position = anyio.current_time(), live.position
            if position != snap_position and (
                position - snap_position >= SNAPSHOT_EVERY_EVENTS
                or now - snap_at >= SNAPSHOT_EVERY_SECONDS
            ):
                await self._snapshot(store, live)
                snap_position, snap_at = position, now
            key = self.runtime.secrets.checkpoint_key
            if (
                key
                and position != checkpoint_position
                and now - checkpoint_at >= (CHECKPOINT_EVERY_SECONDS)
            ):
                await self._checkpoint(store, key)
                checkpoint_position, checkpoint_at = position, now

    async def _checkpoint(self, store: EventStore, key: bytes) -> None:
        """Sign the head; its position and hash also go to the log lines (the journal), a record
        outside the database that `staticipd verify --expect POS:HASH` can check it against."""
        signed = await store.checkpoint(key)
        log.info("checkpoint.written", position=signed.position, head_hash=signed.head_hash)

    async def _snapshot(self, store: EventStore, live: LiveProjection) -> None:
        position, parts, size = await live.write_snapshot()
        log.info("snapshot.written", position=position, accounts=parts, bytes=size)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                log.info("daemon.signal", signal=signal.Signals(signum).name)
                self.stopped.set()
                return

    def reload(self) -> None:
        """What SIGHUP does: read the secrets and the log level again; keep the old on error."""
        try:
            config, secrets = self._reload()
        except ConfigError as exc:
            log.error("daemon.reload_failed", error=str(exc))
            return
        logs.register_secrets(secrets.values(), replace=True)
        logs.set_level(config.logging.level)
        self.runtime.secrets = self.secrets = secrets
        configured = [name for name, status in secrets.describe().items() if status != "missing"]
        log.info(
            "daemon.reloaded",
            configured=configured,
            missing=list(secrets.missing),
            level=config.logging.level,
        )


def _feed(live: LiveProjection, timers: TimerDriver, outbox: Outbox) -> None:
    """Seed the timer heap and the outbox from the projection, then keep them in step with it."""

    def effects_of(account_id: str, state: AccountState | None) -> list[OutboxItem]:
        if state is None:
            return []
        return [
            OutboxItem(key, account_id, p.effect, p.attempts, p.next_attempt_at, p.steps)
            for key, p in state.pending_effects.items()
        ]

    def on_change(account_id: str, state: AccountState | None) -> None:
        timers.sync_account(account_id, state.pending_timers.items() if state else ())
        outbox.sync_account(account_id, effects_of(account_id, state))

    timers.load()
    for account_id in {a for a, _, _ in live.projection.pending_effects()}:
        outbox.sync_account(account_id, effects_of(account_id, live.projection.account(account_id)))
    live.add_account_hook(on_change)


async def _essential(
    name: str,
    job: Callable[..., Awaitable[None]],
    may_return: bool = False,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A part that fails (or returns, unless `may_return`) takes the whole process down.

    Never half-alive. With `tg.start`, it is started once the part says so (`task_status`).
    """
    try:
        if task_status is anyio.TASK_STATUS_IGNORED:
            await job()
        else:
            await job(task_status=task_status)
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        log.exception("daemon.part_failed", part=name)
        raise
    if not may_return:
        raise RuntimeError(f"{name} stopped unexpectedly")


# aiohttp's `shutdown_timeout` (web_protocol.RequestHandler.shutdown): waited once for a handler
# still running after our own grace, and once more after cancelling it.
_CANCEL_AFTER_SECONDS = 0.5


async def _drain(runner: web.AppRunner, runtime: Runtime, grace: float) -> None:
    """Wait, at most `grace` seconds, until no request is being handled and no connection is
    open, or the keep-alive linger has passed with no request running.

    The listener stays open meanwhile: a request arriving now is refused at once (503,
    `Connection: close`) rather than reset. aiohttp's own shutdown (`runner.cleanup()`, called
    after this) closes the listener, stops reading from every open connection at once (a
    keep-alive client's next request would get no answer), then waits `shutdown_timeout` for
    running handlers and cancels them.
    """
    server = runner.server
    start = anyio.current_time()
    linger_until = start + min(KEEPALIVE_LINGER_SECONDS, grace)
    with anyio.move_on_after(grace):
        while True:
            open_connections = len(server.connections) if server is not None else 0
            if runtime.requests_in_flight == 0 and (
                open_connections == 0 or anyio.current_time() >= linger_until
            ):
                break
            await anyio.sleep(_DRAIN_POLL_SECONDS)
    if runtime.requests_in_flight:
        log.warning(
            "daemon.grace_ended",
            requests_in_flight=runtime.requests_in_flight,
            detail="requests still being recorded are closed without an answer",
        )


async def _probe_storage(store: EventStore) -> None:
    """While the log is unhealthy, probe it (with backoff) so `/readyz` recovers by itself."""
    delay = STORAGE_PROBE_FIRST_SECONDS
    while True:
        await anyio.sleep(delay)
        if store.healthy:
            delay = STORAGE_PROBE_FIRST_SECONDS
            continue
        if await store.probe():
            log.info("storage.recovered")
            delay = STORAGE_PROBE_FIRST_SECONDS
        else:
            delay = min(delay * 2, STORAGE_PROBE_MAX_SECONDS)


def _port_of(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def load(args: argparse.Namespace) -> tuple[Config, Secrets, Callable[[], tuple[Config, Secrets]]]:
    """The configuration and secrets, and how to read both again (SIGHUP)."""
    env = dict(os.environ)
    path = Path(args.config) if args.config else None
    if getattr(args, "database", None) is not None:  # --database wins, as for the log commands
        env["STATICIPD_DATABASE"] = str(args.database)

    def reload() -> tuple[Config, Secrets]:
        config = load_config(path, env)
        return config, load_secrets(config, env)

    config, secrets = reload()
    return config, secrets, reload


def serve_command(args: argparse.Namespace) -> int:
    try:
        config, secrets, reload = load(args)
    except ConfigError as exc:
        print(f"staticipd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    logs.configure_logging(config.logging.level, config.logging.format)
    logs.register_secrets(secrets.values())
    for warning in secrets.warnings:
        log.warning("daemon.secret_file", detail=warning)
    if (refusal := _unrunnable(config)) is not None:
        print(f"staticipd: {refusal}", file=sys.stderr)
        return exitcodes.USAGE
    uvloop = config.http.event_loop == "uvloop"
    daemon = Daemon(config, secrets, reload=reload)
    try:
        anyio.run(daemon.run, backend_options={"use_uvloop": uvloop})
    except BaseException as exc:
        if daemon.leadership is not None and daemon.leadership.lost:
            # Whichever part noticed first: systemd restarts it, and it comes back a standby.
            log.error("daemon.leadership_lost", reason=daemon.leadership.lost_reason)
            return exitcodes.LEADERSHIP_LOST
        if isinstance(exc, EventStoreError):
            log.error("daemon.storage_failed", error=str(exc))
        elif isinstance(exc, OSError):  # e.g. the listen address is taken
            log.error("daemon.start_failed", error=str(exc))
        elif isinstance(exc, BaseExceptionGroup):
            log.error("daemon.failed", errors=[repr(e) for e in exc.exceptions])
        else:
            raise
        return exitcodes.PROBLEM
    return exitcodes.OK


def _unrunnable(config: Config) -> str | None:
    """Why `serve` cannot run this valid configuration on this host (None: it can)."""
    if config.http.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return (
            "http.event_loop = uvloop, but uvloop is not installed (pip install 'staticipd[fast]')"
        )
    return None


def check_config_command(args: argparse.Namespace) -> int:
    try:
        config, secrets, _ = load(args)
    except ConfigError as exc:
        print(f"staticipd: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    for warning in secrets.warnings:  # what `serve` logs as `daemon.secret_file`
        print(f"staticipd: warning: {warning}", file=sys.stderr)
    if (refusal := _unrunnable(config)) is not None:
        print(f"staticipd: {refusal}", file=sys.stderr)
        return exitcodes.USAGE
    print(render_effective(config, secrets))
    return exitcodes.OK


__all__ = ["Daemon", "check_config_command", "migration_settings", "serve_command"]
