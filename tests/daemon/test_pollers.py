"""The pollers against the sandbox provider: IP-list watching and account reconciliation.

The sandbox runs on 127.0.0.1 on a fake clock, so its dynamic list rotates exactly when a test
moves time on; IP-list results go through a real in-process daemon (no provider configured, so
its own pollers are off) to show what the log records and what the change command receives.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.domain import AccountObserved, AccountState, Input
from daemon.pollers import IpListWatcher, Reconciler
from daemon.projections import Projection
from daemon.provider import ProviderClient
from daemon.sandbox import SandboxProvider, SandboxSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SCALE = 0.01  # nominal provider seconds -> fake seconds: the 900 s rotation takes 9 s
ROTATION = 900 * SCALE
STATIC_PATH = "/a/{client_id}/ip_addresses?environment=static"


class FakeClock:
    """Unix time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[SandboxProvider]:
    """A sandbox provider on loopback, compressed in time, with static IPs on."""
    settings = SandboxSettings.compressed(SCALE, ip_rate_limit=4, static_ips_enabled=True)
    async with SandboxProvider(settings, clock=clock) as provider:
        yield provider


@pytest.fixture
async def client(sandbox: SandboxProvider) -> AsyncIterator[ProviderClient]:
    """The daemon's provider client pointed at the sandbox, with quick retries."""
    async with aiohttp.ClientSession() as session:
        yield ProviderClient(
            sandbox.base_url, sandbox.settings.client_id, sandbox.settings.client_secret,
            session, max_attempts=2, backoff_base=0.001, backoff_max=1,
            static_ip_path=STATIC_PATH,
        )  # fmt: skip


def ip_events(setup: Any, type_: str) -> list[dict[str, Any]]:
    return [e["data"] for e in setup.events() if e["type"] == type_]


async def test_rotation_is_recorded_with_added_and_removed(
    setup, start_daemon, sandbox, client, clock
) -> None:
    """When the dynamic list rotates, the log gets an IpListChanged naming what came and went."""
    async with start_daemon(setup) as d:
        watcher = IpListWatcher(client, d.daemon._submit_ip_lists, interval=3600, clock=clock.utc)
        assert await watcher.poll_once() is None
        before, _ = sandbox.ip_list("dynamic")
        clock.now += ROTATION + 1
        after, _ = sandbox.ip_list("dynamic")
        assert await watcher.poll_once() is None
    changes = ip_events(setup, "IpListChanged")
    assert [c["kind"] for c in changes] == ["dynamic", "dynamic"]
    # Sets: the sandbox may draw one address twice, the recorded list holds it once.
    assert set(changes[0]["added"]) == set(before)
    assert set(changes[1]["added"]) == set(after) - set(before)
    assert set(changes[1]["removed"]) == set(before) - set(after)
    assert changes[1]["added"]  # the rotation did replace an address


async def test_unchanged_list_is_recorded_as_unchanged(setup, start_daemon, client, clock) -> None:
    """Polling again before a rotation records IpListUnchanged, not another change."""
    async with start_daemon(setup) as d:
        watcher = IpListWatcher(
            client, d.daemon._submit_ip_lists, interval=3600,
            environments=("dynamic", "static"), clock=clock.utc,
        )  # fmt: skip
        await watcher.poll_once()
        clock.now += 1
        await watcher.poll_once()
    assert sorted(c["kind"] for c in ip_events(setup, "IpListChanged")) == ["dynamic", "static"]
    unchanged = ip_events(setup, "IpListUnchanged")
    assert sorted(u["kind"] for u in unchanged) == ["dynamic", "static"]


async def test_rate_limit_returns_the_providers_wait_to_the_caller(client, clock) -> None:
    """Past the provider's IP-list budget, poll_once returns its Retry-After and records nothing."""
    submitted: list[Sequence[Input]] = []

    async def submit(inputs: Sequence[Input]) -> None:
        submitted.append(inputs)

    watcher = IpListWatcher(client, submit, interval=3600, clock=clock.utc)
    for _ in range(4):  # the sandbox allows 4 calls per (compressed) hour here
        assert await watcher.poll_once() is None
    wait = await watcher.poll_once()
    assert wait == pytest.approx(3600 * SCALE)
    assert len(submitted) == 4


async def test_list_fetched_before_a_rate_limit_is_still_recorded(client, clock) -> None:
    """If the static list hits the budget, the dynamic list fetched just before is recorded."""
    submitted: list[Input] = []

    async def submit(inputs: Sequence[Input]) -> None:
        submitted.extend(inputs)

    dynamic_only = IpListWatcher(client, submit, interval=3600, clock=clock.utc)
    for _ in range(3):
        await dynamic_only.poll_once()
    both = IpListWatcher(
        client, submit, interval=3600, environments=("dynamic", "static"), clock=clock.utc
    )
    submitted.clear()
    assert await both.poll_once() == pytest.approx(3600 * SCALE)
    assert [i.kind for i in submitted] == ["dynamic"]  # type: ignore[attr-defined]


async def test_change_command_receives_the_plain_allowlist(
    setup, start_daemon, sandbox, client, clock, tmp_path: Path
) -> None:
    """On a change the operator's command gets the allowlist, one network a line, on stdin."""
    out = tmp_path / "allowlist.txt"
    command = ["sh", "-c", f"cat > {shlex.quote(str(out))}"]
    setup.env["STATICIPD_POLLERS__IP_CHANGE_COMMAND"] = json.dumps(command)
    async with start_daemon(setup) as d:
        watcher = IpListWatcher(
            client, d.daemon._submit_ip_lists, interval=3600,
            environments=("dynamic", "static"), clock=clock.utc,
        )  # fmt: skip
        await watcher.poll_once()
    dynamic, _ = sandbox.ip_list("dynamic")
    expected = {f"{ip}/32" for ip in [*dynamic, *sandbox.settings.static_ips]}
    assert set(out.read_text().splitlines()) == expected


# --- the reconciler ----------------------------------------------------------------------------


def projection_with(**states: str) -> Projection:
    """A projection holding these accounts in these states (account id -> state)."""
    projection = Projection()
    for account_id, state in states.items():
        # Placed directly: the reconciler only reads states, and building `static` through
        # the domain would take the whole two-step flow.
        projection._put(AccountState(account_id=account_id, state=state))
    return projection


async def test_reconciler_records_a_stop_the_webhook_never_told(sandbox, client) -> None:
    """An account in first_auth that the provider shows stopped is recorded as observed."""
    waiting, done = sandbox.create_accounts(2)
    assert sandbox.authenticate(waiting.id) == "staged"  # parked stopped by the provider
    sandbox.downgrade(done.id)  # stopped too, but we consider it finished
    projection = projection_with(**{waiting.id: "first_auth", done.id: "static"})
    recorded: list[Input] = []

    async def submit(inputs: Sequence[Input]) -> None:
        recorded.extend(inputs)

    reconciler = Reconciler(client, lambda: projection, submit, interval=3600)
    assert await reconciler.reconcile_once() == 1
    [observed] = recorded
    assert isinstance(observed, AccountObserved)
    assert (observed.account_id, observed.sync_state, observed.exists) == (
        waiting.id, "stopped", True,
    )  # fmt: skip


async def test_reconciler_leaves_a_static_account_alone(sandbox, client) -> None:
    """An account already static is not observed: nothing is recorded, however it looks."""
    (done,) = sandbox.create_accounts(1)
    sandbox.downgrade(done.id)
    projection = projection_with(**{done.id: "static"})
    recorded: list[Input] = []

    async def submit(inputs: Sequence[Input]) -> None:
        recorded.extend(inputs)

    reconciler = Reconciler(client, lambda: projection, submit, interval=3600)
    assert await reconciler.reconcile_once() == 0
    assert recorded == []
    assert reconciler.rounds == 1
