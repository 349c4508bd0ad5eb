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
from daemon.provider.client import ProviderClient
from daemon.provider.sandbox import Account, SandboxProvider, SandboxSettings
from daemon.runtime.pollers import IpListWatcher, Reconciler
from daemon.runtime.projections import Projection

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
        watcher = IpListWatcher(client, d.daemon.submit_ip_lists, interval=3600, clock=clock.utc)
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
            client, d.daemon.submit_ip_lists, interval=3600,
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
            client, d.daemon.submit_ip_lists, interval=3600,
            environments=("dynamic", "static"), clock=clock.utc,
        )  # fmt: skip
        await watcher.poll_once()
    dynamic, _ = sandbox.ip_list("dynamic")
    expected = {f"{ip}/32" for ip in [*dynamic, *sandbox.settings.static_ips]}
    assert set(out.read_text().splitlines()) == expected


async def test_allowlist_file_follows_the_recorded_lists(
    setup, start_daemon, sandbox, client, clock
) -> None:
    """The daemon writes the allowlist file when a list is first seen and replaces it (a new
    file renamed into place) when the list rotates; a daemon started later rewrites a lost one."""
    path = setup.workdir / "allowlist.txt"  # the default: next to the log
    async with start_daemon(setup) as d:
        assert not path.exists()  # no list recorded yet, no file
        watcher = IpListWatcher(client, d.daemon.submit_ip_lists, interval=3600, clock=clock.utc)
        await watcher.poll_once()
        before, _ = sandbox.ip_list("dynamic")
        first = path.read_text()
        inode = path.stat().st_ino
        clock.now += ROTATION + 1
        after, _ = sandbox.ip_list("dynamic")
        await watcher.poll_once()
        second = path.read_text()
        assert path.stat().st_ino != inode
    assert first.startswith("# staticipd allowlist: provider IP lists dynamic\n# changed_at: ")
    networks = [line for line in second.splitlines() if not line.startswith("#")]
    assert set(networks) == {f"{ip}/32" for ip in after} != {f"{ip}/32" for ip in before}
    assert len(networks) == len(set(networks))
    path.unlink()
    async with start_daemon(setup):
        assert path.read_text() == second


# --- the reconciler ----------------------------------------------------------------------------


def projection_with(flags: Sequence[str] = (), **states: str) -> Projection:
    """A projection holding these accounts in these states (account id -> state), flagged."""
    projection = Projection()
    for account_id, state in states.items():
        # Placed directly: the reconciler only reads states and flags, and building `static`
        # through the domain would take the whole two-step flow.
        projection.put_account(
            AccountState(account_id=account_id, state=state, flags=frozenset(flags))
        )
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


# What the provider shows of one account, set up through the sandbox's own operations.


def _stopped(sandbox: SandboxProvider, account: Account) -> None:
    assert sandbox.authenticate(account.id) == "staged"  # parked stopped by the provider


def _running(sandbox: SandboxProvider, account: Account) -> None:
    assert account.sync_state == "running"  # a new account syncs


def _invalid(sandbox: SandboxProvider, account: Account) -> None:
    sandbox.break_account(account.id, "invalid")


def _sync_error(sandbox: SandboxProvider, account: Account) -> None:
    sandbox.break_account(account.id, "sync_error")


def _gone(sandbox: SandboxProvider, account: Account) -> None:
    sandbox.delete(account.id)


def _billing_deleted(sandbox: SandboxProvider, account: Account) -> None:
    # `billing_state` may say `deleted` while the account is still listed (here a parked, stopped
    # one: docs/provider.md#the-trigger-table); the sandbox itself deletes outright, so the test
    # sets the field.
    _stopped(sandbox, account)
    account.billing_state = "deleted"


def _unrecognised(sandbox: SandboxProvider, account: Account) -> None:
    account.sync_state = "initializing"  # the set is open: docs/provider.md#the-trigger-table


PROVIDER_SIDE = {
    "stopped": _stopped,
    "running": _running,
    "invalid": _invalid,
    "sync_error": _sync_error,
    "gone": _gone,
    "billing_deleted": _billing_deleted,
    "unrecognised": _unrecognised,
}

# (state, flags, provider side, recorded (sync_state, billing_state, exists) or None)
RULES = [
    # A stop moves first_auth on; in the later waiting states it changes nothing.
    ("first_auth", (), "stopped", ("stopped", "paid", True)),
    ("stopped_waiting", (), "stopped", None),
    ("second_step_due", (), "stopped", None),
    ("stalled", (), "stopped", None),
    # After the second step a stop is the provider not moving the account (recorded even
    # within `running_grace`, where the domain only notes it: the reconciler has no settings).
    ("second_auth", (), "stopped", ("stopped", "paid", True)),
    # Running is the move done after the second step...
    ("second_auth", (), "running", ("running", "paid", True)),
    # ...and elsewhere changes nothing, unless it clears a flag only a running or auth clears.
    ("first_auth", (), "running", None),
    ("stopped_waiting", (), "running", None),
    ("second_step_due", (), "running", None),
    ("stalled", (), "running", None),
    ("first_auth", ("invalid",), "running", ("running", "paid", True)),
    ("stopped_waiting", ("sync_error",), "running", ("running", "paid", True)),
    ("stalled", ("running_overdue",), "running", None),
    # Broken accounts are flagged once; the other kind of break is new.
    ("first_auth", (), "invalid", ("invalid", "paid", True)),
    ("second_step_due", (), "sync_error", ("sync-error", "paid", True)),
    ("stalled", (), "invalid", ("invalid", "paid", True)),
    ("second_auth", ("invalid",), "invalid", None),
    ("second_auth", ("invalid",), "sync_error", ("sync-error", "paid", True)),
    # A vanished account, or one billed as deleted, is deleted; flagged once.
    ("first_auth", (), "gone", (None, None, False)),
    ("stopped_waiting", (), "gone", (None, None, False)),
    ("stopped_waiting", ("deleted",), "gone", None),
    ("stopped_waiting", (), "billing_deleted", ("stopped", "deleted", True)),
    ("first_auth", ("deleted",), "billing_deleted", None),
    # A deleted account comes back only by an auth: what the provider shows meanwhile is moot.
    ("second_auth", ("deleted",), "running", None),
    ("first_auth", ("deleted",), "stopped", None),
    ("stalled", ("deleted",), "invalid", None),
    # A sync state the domain does not know moves nothing.
    ("first_auth", (), "unrecognised", None),
    ("second_auth", (), "unrecognised", None),
]


@pytest.mark.parametrize(
    ("state", "flags", "provider_side", "expected"),
    RULES,
    ids=[f"{r[0]}-{'+'.join(r[1]) or 'unflagged'}-{r[2]}" for r in RULES],
)
async def test_reconciler_records_only_what_can_move_the_account(
    sandbox: SandboxProvider,
    client: ProviderClient,
    state: str,
    flags: tuple[str, ...],
    provider_side: str,
    expected: tuple[str | None, str | None, bool] | None,
) -> None:
    """Each disagreement is recorded exactly when the domain would act on it, with what was seen."""
    (account,) = sandbox.create_accounts(1)
    PROVIDER_SIDE[provider_side](sandbox, account)
    projection = projection_with(flags, **{account.id: state})
    recorded: list[Input] = []

    async def submit(inputs: Sequence[Input]) -> None:
        recorded.extend(inputs)

    reconciler = Reconciler(client, lambda: projection, submit, interval=3600)
    assert await reconciler.reconcile_once() == len(recorded)
    seen = [
        (o.sync_state, o.billing_state, o.exists)
        for o in recorded
        if isinstance(o, AccountObserved) and o.account_id == account.id
    ]
    assert seen == ([] if expected is None else [expected])
