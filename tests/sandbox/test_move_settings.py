"""The sandbox settings for what the provider leaves open about the move: an early second
step (`early_second_auth`), the webhooks after the move (`connected_on_move`) and after a
downgrade (`stopped_on_downgrade`). Each is driven as the daemon would, over the management API
where it has a route."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest

from daemon.provider.sandbox import Account, SandboxProvider, SandboxSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

MOVE_DELAY = 0.3  # real seconds for the nominal 30 minutes


def fast(**overrides: Any) -> SandboxSettings:
    """The move delay is 0.3 s, a restart runs as soon as it is asked for, no connected hooks."""
    overrides.setdefault("connected_on_create", False)
    overrides.setdefault("upgrade_delay", 0.0)
    return SandboxSettings.compressed(MOVE_DELAY / 1800, static_ips_enabled=True, **overrides)


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(b"sandbox-client-secret:").decode()}


class Clock:
    """A hand-moved clock, so the move delay passes (or not) without sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def restart_over_http(sandbox: SandboxProvider, account: Account) -> str:
    """Downgrade then upgrade (the daemon's restart) and wait for the queued restart's outcome."""
    base = f"{sandbox.api_base}/accounts/{account.id}"
    async with aiohttp.ClientSession() as http:
        for action in ("downgrade", "upgrade"):
            async with http.post(f"{base}/{action}", headers=basic()) as resp:
                assert (resp.status, await resp.json()) == (200, {"success": True})
    for _ in range(400):
        done = [k for k in sandbox.outcomes if k.startswith("restart_")]
        if done:
            return done[0].removeprefix("restart_")
        await asyncio.sleep(0.005)
    raise AssertionError("the restart never ran")


@pytest.mark.parametrize(
    ("setting", "outcome", "env", "triggers"),
    [
        ("ignore", "early_ignored", "staging", ["account.stopped"]),
        ("move", "moved", "static", ["account.stopped", "account.running"]),
    ],
)
async def test_early_second_auth_is_ignored_or_moves(
    hook: Any, setting: str, outcome: str, env: str, triggers: list[str]
) -> None:
    """A second auth before the delay leaves the account parked, or with "move" moves it."""
    clock = Clock()
    async with SandboxProvider(fast(early_second_auth=setting), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        assert sandbox.authenticate(acct.id) == "staged"
        clock.now += MOVE_DELAY / 2
        assert sandbox.authenticate(acct.id) == outcome
        assert acct.env == env
        await sandbox.sender.wait_idle()
    assert hook.types() == triggers


@pytest.mark.parametrize(
    ("setting", "outcome", "env", "sync_state"),
    [
        ("ignore", "early_ignored", "staging", "stopped"),
        ("move", "moved", "static", "running"),
    ],
)
async def test_early_restart_is_ignored_or_moves(
    setting: str, outcome: str, env: str, sync_state: str
) -> None:
    """A downgrade+upgrade before the delay is an early second step too: the same setting rules."""
    clock = Clock()
    async with SandboxProvider(fast(early_second_auth=setting), clock=clock) as sandbox:
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        clock.now += MOVE_DELAY / 2
        assert await restart_over_http(sandbox, acct) == outcome
        assert (acct.env, acct.sync_state, acct.billing_state) == (env, sync_state, "paid")


async def test_early_restart_with_restart_clock_starts_the_wait_over() -> None:
    """With restart_clock an early restart counts the delay again from the restart."""
    clock = Clock()
    async with SandboxProvider(fast(early_second_auth="restart_clock"), clock=clock) as sandbox:
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        clock.now += MOVE_DELAY / 2
        assert await restart_over_http(sandbox, acct) == "early_restarted"
        clock.now += MOVE_DELAY * 0.9  # past the first auth's delay, not the restart's
        assert sandbox.authenticate(acct.id) == "early_restarted"
        clock.now += MOVE_DELAY + 0.01
        assert sandbox.authenticate(acct.id) == "moved"


@pytest.mark.parametrize(
    ("connected_on_move", "after_move"),
    [(False, ["account.running"]), (True, ["account.running", "account.connected"])],
)
@pytest.mark.parametrize("step", ["auth", "restart"])
async def test_connected_on_move_adds_account_connected(
    hook: Any, step: str, connected_on_move: bool, after_move: list[str]
) -> None:
    """The move always sends account.running; with connected_on_move account.connected too."""
    clock = Clock()
    settings = fast(connected_on_move=connected_on_move)
    async with SandboxProvider(settings, clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        clock.now += MOVE_DELAY + 0.01
        if step == "auth":
            assert sandbox.authenticate(acct.id) == "moved"
        else:
            assert await restart_over_http(sandbox, acct) == "moved"
        await sandbox.sender.wait_idle()
    assert hook.types() == ["account.stopped", *after_move]


@pytest.mark.parametrize(
    ("stopped_on_downgrade", "sent"), [(True, ["account.stopped"]), (False, [])]
)
async def test_stopped_on_downgrade_decides_the_webhook_only(
    hook: Any, stopped_on_downgrade: bool, sent: list[str]
) -> None:
    """A downgrade stops sync and billing either way; only the account.stopped webhook differs."""
    async with SandboxProvider(fast(stopped_on_downgrade=stopped_on_downgrade)) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        url = f"{sandbox.api_base}/accounts/{acct.id}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/downgrade", headers=basic()) as resp:
                assert resp.status == 200
            async with http.get(url, headers=basic()) as resp:
                body = await resp.json()
        assert (body["sync_state"], body["billing_state"]) == ("stopped", "cancelled")
        await sandbox.sender.wait_idle()
    assert hook.types() == sent


async def test_a_cancelled_account_moves_but_syncs_only_after_the_upgrade(hook: Any) -> None:
    """A second auth moves a downgraded account; it stays stopped until the upgrade restarts it."""
    clock = Clock()
    async with SandboxProvider(fast(), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        sandbox.downgrade(acct.id)
        clock.now += MOVE_DELAY + 0.01
        assert sandbox.authenticate(acct.id) == "moved"
        assert (acct.env, acct.sync_state, acct.billing_state) == ("static", "stopped", "cancelled")
        assert await restart_over_http(sandbox, acct) == "running"
        assert (acct.sync_state, acct.billing_state) == ("running", "paid")
        await sandbox.sender.wait_idle()
    assert hook.types() == ["account.stopped", "account.running"]
