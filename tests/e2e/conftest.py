"""End-to-end harness: the sandbox provider, simulated users and a real `Daemon` on loopback.

The wiring is the demo's own `SandboxWorld` (same settings, compressed times); the harness keeps
hold of each part so a test can inject faults, stop the daemon and start a new one on the same
log and port while the users keep going, and read the log afterwards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from anyio.abc import TaskGroup

from daemon.cli.demo import DONE_STATES, REMINDERS, SandboxWorld
from daemon.provider.sandbox import SandboxProvider
from daemon.provider.sandbox.users import SimulatedUsers
from daemon.runtime import audit
from daemon.runtime.audit import TimelineEntry
from daemon.service import Daemon
from eventstore import EventStore, RecordedEvent

# Retries under injected 429/5xx settle well inside a test's timeout with a shorter cap than
# the demo's.
DAEMON_OVERRIDES = {"STATICIPD_OUTBOX__BACKOFF_MAX_SECONDS": "1"}


@dataclass
class Migration:
    """One migration run: a `SandboxWorld` and its current daemon, all on 127.0.0.1."""

    workdir: Path
    accounts: int = 40
    time_scale: float = 2000.0
    policy: str = "mixed"
    seed: int = 11
    never_answer: float = 0.15
    # More `STATICIPD_*` settings for every daemon of the run (on top of DAEMON_OVERRIDES).
    daemon_overrides: dict[str, str] = field(default_factory=dict)
    world: SandboxWorld = field(init=False)
    daemon: Daemon | None = field(init=False, default=None)
    account_ids: list[str] = field(init=False, default_factory=list)
    policies: dict[str, str] = field(init=False, default_factory=dict)
    daemons_started: int = field(init=False, default=0)
    _tg: TaskGroup | None = field(init=False, default=None)
    _daemon_done: anyio.Event | None = field(init=False, default=None)
    _port: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.world = SandboxWorld(
            self.workdir,
            time_scale=self.time_scale,
            seed=self.seed,
            never_answer=self.never_answer,
        )

    @property
    def sandbox(self) -> SandboxProvider:
        return self.world.sandbox

    @property
    def users(self) -> SimulatedUsers:
        return self.world.users

    @property
    def database(self) -> Path:
        return self.world.database

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self, tg: TaskGroup) -> None:
        """Start the sandbox, the users' backend and a first daemon; nothing is enrolled yet."""
        self._tg = tg
        await self.world.start()
        await self.start_daemon()

    async def start_daemon(self) -> Daemon:
        """A new Daemon on the same log and, after the first, on the same port."""
        assert self._tg is not None
        daemon = self.world.daemon(self._port, **{**DAEMON_OVERRIDES, **self.daemon_overrides})
        done = anyio.Event()

        async def run() -> None:
            try:
                await daemon.run()
            finally:
                done.set()

        self._tg.start_soon(run)
        with anyio.fail_after(20):
            await daemon.ready.wait()
        assert daemon.bound_port is not None
        if self.daemons_started == 0:
            await self.world.daemon_listening(daemon)
            self._port = daemon.bound_port
        else:
            # Same port: users and the webhook destination already point here, and registering
            # again would add a second destination (every webhook delivered twice).
            assert daemon.bound_port == self._port
        self.daemon, self._daemon_done = daemon, done
        self.daemons_started += 1
        return daemon

    async def stop_daemon(self) -> None:
        """Stop the current daemon as SIGTERM would, and wait until it has exited."""
        assert self.daemon is not None
        assert self._daemon_done is not None
        self.daemon.stopped.set()
        with anyio.fail_after(20):
            await self._daemon_done.wait()
        self.daemon = None

    async def enrol(self) -> None:
        """Create the accounts, enable static IPs and enrol them through the operator API."""
        accounts = await self.users.create_accounts(self.accounts)
        self.account_ids = [a["id"] for a in accounts]
        self.sandbox.enable_static_ips()
        headers = {"Authorization": f"Bearer {self.world.values['operator_token']}"}
        ids = self.account_ids
        if self.policy == "mixed":
            half = len(ids) // 2
            waves = [("wave-1", "notify", ids[:half]), ("wave-2", "restart", ids[half:])]
        else:
            waves = [("wave-1", self.policy, ids)]
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{self.url}/v1/migration/enable", json={"reason": "e2e"}) as r:
                r.raise_for_status()
            for wave, policy, members in waves:
                body: dict[str, Any] = {"account_ids": members, "wave": wave, "policy": policy}
                async with http.post(f"{self.url}/v1/enrollments", json=body) as r:
                    r.raise_for_status()
                self.policies.update(dict.fromkeys(members, policy))

    def funnel(self) -> dict[str, int]:
        assert self.daemon is not None
        return dict(self.daemon.live.projection.funnel())

    def done(self) -> bool:
        if self.daemon is None:
            return False
        counts = self.funnel()
        finished = sum(counts.get(s, 0) for s in DONE_STATES) >= len(self.account_ids)
        # A stalled account may still have a restart being retried: not finished until none is.
        return finished and not self.daemon.live.projection.pending_effects()

    async def wait_done(self, timeout: float) -> dict[str, int]:
        """Wait until every account is static or stalled; fail with the funnel if not in time."""
        with anyio.move_on_after(timeout):
            while not self.done():
                await anyio.sleep(0.1)
        counts = self.funnel()
        assert self.done(), f"migration did not finish in {timeout}s: {counts}"
        return counts

    async def wait_quiet(self, timeout: float = 10.0) -> None:
        """Let in-flight effects and webhooks settle so the log stops growing."""
        assert self.daemon is not None
        with anyio.move_on_after(timeout):
            while len(self.daemon.outbox) or self.sandbox.sender.pending > 0:
                await anyio.sleep(0.05)

    def final_states(self) -> dict[str, str]:
        assert self.daemon is not None
        projection = self.daemon.live.projection
        out = {}
        for account_id in self.account_ids:
            state = projection.account(account_id)
            out[account_id] = state.state if state else "unknown"
        return out

    async def close(self) -> None:
        if self.daemon is not None:
            await self.stop_daemon()
        # A world that failed part-way through `start` still has its sandbox to stop.
        if hasattr(self.world, "users"):
            await self.world.stop()
        elif hasattr(self.world, "sandbox"):
            await self.world.sandbox.stop()


async def read_log(database: Path) -> list[RecordedEvent]:
    """Every record of the log, read through a fresh store (the daemon has stopped)."""
    async with EventStore.open(str(database)) as store:
        return [r async for r in store.read_all()]


@asynccontextmanager
async def running(workdir: Path, **kwargs: Any) -> AsyncIterator[Migration]:
    """A started `Migration` in `workdir` (created), closed and cleaned up on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = Migration(workdir, **kwargs)
    async with anyio.create_task_group() as tg:
        try:
            await run.start(tg)
            yield run
        finally:
            with anyio.fail_after(30), anyio.CancelScope(shield=True):
                await run.close()
            tg.cancel_scope.cancel()


@dataclass
class Outcome:
    """What the log says after a run, and the checks every run must pass."""

    records: list[RecordedEvent]
    states: dict[str, str]
    silent: set[str]
    policies: dict[str, str]

    def of_type(self, *types: str) -> list[tuple[RecordedEvent, dict[str, Any]]]:
        return [(r, msgspec.json.decode(r.data)) for r in self.records if r.type in types]

    def timeline(self, account_id: str) -> list[TimelineEntry]:
        return audit.timeline(self.records, account_id)

    def check_end_states(self) -> None:
        """Every account is static, or stalled exactly when its user never answers a request."""
        assert set(self.states.values()) <= set(DONE_STATES), Counter(self.states.values())
        for account_id, state in self.states.items():
            expect = (
                "stalled"
                if self.policies[account_id] == "notify" and account_id in self.silent
                else "static"
            )
            assert state == expect, (account_id, self.policies[account_id], state)

    def check_stalled_explained(self) -> None:
        """A stalled account's timeline shows every request delivered and no second auth."""
        for account_id, state in self.states.items():
            if state != "stalled":
                continue
            entries = self.timeline(account_id)
            types = [e.type for e in entries]
            requests = [e for e in entries if e.type == "ReauthRequested"]
            assert len(requests) == 1 + len(REMINDERS), types
            delivered = {e.data["idempotency_key"] for e in entries if e.type == "EffectSucceeded"}
            assert {e.data["idempotency_key"] for e in requests} <= delivered
            auths = [e.data["classification"] for e in entries if e.type == "AuthRecorded"]
            assert auths == ["first_auth"], auths
            last = audit.transitions(entries)[-1]
            assert last.state_after == "stalled"
            assert "no second step after the last reminder" in last.reason
            assert "stalled" in audit.render_timeline(entries)

    def check_static_explained(self) -> None:
        """A static account went first_auth → stopped_waiting → … → second_auth → static."""
        for account_id, state in self.states.items():
            if state != "static":
                continue
            path = [e.state_after for e in audit.transitions(self.timeline(account_id))]
            assert path[0] == "first_auth", path
            assert path[-2:] == ["second_auth", "static"], path
            assert "stopped_waiting" in path, path
            assert "second_step_due" in path, path

    def check_timers_once(self) -> None:
        """No timer fires twice."""
        fired = Counter(d["timer_id"] for _, d in self.of_type("TimerFired"))
        assert not [t for t, n in fired.items() if n > 1]

    def check_effect_chains(self) -> None:
        """Per effect key: one intent, rising attempts, nothing after the one final outcome."""
        intents = Counter(
            d["idempotency_key"]
            for _, d in self.of_type(
                "ReauthRequested", "SyncRestartRequested", "ProviderCheckRequested", "AppNotified"
            )
        )
        assert all(n == 1 for n in intents.values()), intents.most_common(3)
        chains: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for r, d in self.of_type("EffectAttemptFailed", "EffectSucceeded", "EffectAbandoned"):
            chains[d["idempotency_key"]].append((r.type, d["attempt"]))
        for key, chain in chains.items():
            assert key in intents, key
            finals = [i for i, (t, _) in enumerate(chain) if t != "EffectAttemptFailed"]
            assert len(finals) <= 1, (key, chain)
            assert not finals or finals[0] == len(chain) - 1, (key, chain)
            attempts = [a for _, a in chain]
            assert attempts == sorted(set(attempts)), (key, chain)

    def check_notifications_once(self) -> int:
        """Each provider webhook delta (dedupe key) is recorded once; returns how many there are."""
        keys = Counter(
            msgspec.json.decode(r.metadata)["input_id"]
            for r, _ in self.of_type("ProviderNotificationRecorded")
        )
        assert all(n == 1 for n in keys.values()), keys.most_common(3)
        return len(keys)


async def finish(run: Migration, timeout: float) -> Outcome:
    """Wait for the end, stop the daemon, then check the log: verify, replay == live, checks."""
    await run.wait_done(timeout)
    await run.wait_quiet()
    states = run.final_states()
    daemon = run.daemon
    assert daemon is not None
    await run.stop_daemon()
    records = await read_log(run.database)
    async with EventStore.open(str(run.database)) as store:
        report = await store.verify()
    assert report.ok, report.damage[:3]
    assert report.events_checked == len(records)
    live = daemon.live.projection
    assert live.position == records[-1].position
    assert audit.replay(records) == live, "replaying the log differs from the live projection"
    outcome = Outcome(records, states, set(run.users.silent), dict(run.policies))
    outcome.check_end_states()
    outcome.check_stalled_explained()
    outcome.check_static_explained()
    outcome.check_timers_once()
    outcome.check_effect_chains()
    outcome.check_notifications_once()
    return outcome


@pytest.fixture
def e2e() -> SimpleNamespace:
    """The harness for tests: `running(workdir, **kwargs)` and `finish(run, timeout)`."""
    return SimpleNamespace(running=running, finish=finish, read_log=read_log)
