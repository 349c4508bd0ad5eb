"""The sandbox's broken accounts (account.invalid / account.sync_error and their repair), the
stopped-account refusal setting, and the v3 notification bodies."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import aiohttp
import pytest

from daemon.provider.sandbox import SandboxProvider, SandboxSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

STOPPED_BODY = {
    "message": "This action can't be performed because the account's sync has been stopped. "
    "Please contact support@nylas.com to resume sync.",
    "type": "invalid_request_error",
}


def fast(**overrides: Any) -> SandboxSettings:
    """The 30-minute move delay is 0.3 s; no connected webhooks to keep the lists short."""
    overrides.setdefault("connected_on_create", False)
    return SandboxSettings.compressed(0.3 / 1800, static_ips_enabled=True, **overrides)


def basic(secret: str = "sandbox-client-secret") -> dict[str, str]:  # noqa: S107
    return {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}


class Clock:
    """A hand-moved clock, so the move delay passes without sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_broken_staged_account_repaired_by_the_users_auths(hook: Any) -> None:
    """A parked account gone invalid says so; the user's later auths repair and move it."""
    clock = Clock()
    async with SandboxProvider(fast(), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        assert sandbox.authenticate(acct.id) == "staged"
        sandbox.break_account(acct.id, "invalid")
        assert (acct.sync_state, acct.broken) == ("invalid", "invalid")
        # An early auth mends the credentials but the account stays parked until the delay.
        assert sandbox.authenticate(acct.id) == "early_ignored"
        assert (acct.sync_state, acct.broken, acct.env) == ("stopped", None, "staging")
        clock.now += 0.31
        assert sandbox.authenticate(acct.id) == "moved"
        assert (acct.env, acct.sync_state) == ("static", "running")
        await sandbox.sender.wait_idle()
    assert hook.types() == ["account.stopped", "account.invalid", "account.running"]


async def test_sync_error_on_a_static_account_until_the_next_auth(hook: Any) -> None:
    """A static account with a sync error shows sync-error until the user's next auth runs it."""
    clock = Clock()
    async with SandboxProvider(fast(), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        clock.now += 0.31
        sandbox.authenticate(acct.id)
        sandbox.break_account(acct.id, "sync_error")
        assert acct.as_json()["sync_state"] == "sync-error"
        assert sandbox.authenticate(acct.id) == "normal"
        assert acct.sync_state == "running"
        await sandbox.sender.wait_idle()
        assert sandbox.stats()["auth_outcomes"]["broken_sync_error"] == 1
    assert hook.types() == [
        "account.stopped",
        "account.running",
        "account.sync_error",
        "account.running",
    ]


async def test_restart_cannot_repair_a_broken_account(hook: Any) -> None:
    """Downgrade+upgrade after the delay moves a broken account; it stays broken until re-auth."""
    clock = Clock()
    async with SandboxProvider(fast(upgrade_delay=0.0), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        sandbox.break_account(acct.id, "invalid")
        clock.now += 0.31
        sandbox.downgrade(acct.id)
        sandbox.upgrade(acct.id)
        for _ in range(200):
            if acct.env == "static":
                break
            await asyncio.sleep(0.005)
        assert (acct.env, acct.sync_state, acct.billing_state) == ("static", "invalid", "paid")
        assert sandbox.authenticate(acct.id) == "normal"
        assert acct.sync_state == "running"
        await sandbox.sender.wait_idle()
    assert hook.types() == [
        "account.stopped",
        "account.invalid",
        "account.invalid",
        "account.running",
    ]


async def test_account_break_fault_breaks_accounts_after_auths() -> None:
    """With account_break at 1 every authenticated account soon reports invalid or sync_error."""
    settings = fast(seed=3)
    settings.faults.update({"account_break": 1.0, "account_break_delay_range": (0.0, 6.0)})
    async with SandboxProvider(settings) as sandbox:
        accounts = sandbox.create_accounts(8)
        for acct in accounts:
            sandbox.authenticate(acct.id)
        for _ in range(200):
            if all(a.broken for a in accounts):
                break
            await asyncio.sleep(0.005)
        assert {a.sync_state for a in accounts} == {"invalid", "sync-error"}
        outcomes = sandbox.stats()["auth_outcomes"]
        assert outcomes["broken_invalid"] + outcomes["broken_sync_error"] == 8


async def test_break_over_http_and_bad_kind() -> None:
    """POST /sandbox/accounts/{id}/break breaks the account; an unknown kind is 400."""
    async with SandboxProvider(fast()) as sandbox, aiohttp.ClientSession() as http:
        (acct,) = sandbox.create_accounts(1)
        url = f"{sandbox.base_url}/sandbox/accounts/{acct.id}/break"
        async with http.post(url, json={"kind": "sync_error"}) as resp:
            body = await resp.json()
        assert (body["broken"], body["account"]["sync_state"]) == ("sync_error", "sync-error")
        async with http.post(url, json={"kind": "expired"}) as resp:
            assert resp.status == 400
        async with http.get(f"{sandbox.api_base}/accounts/{acct.id}", headers=basic()) as resp:
            assert (await resp.json())["sync_state"] == "sync-error"


async def test_stopped_account_refusal_is_a_setting() -> None:
    """Modifying a stopped account succeeds by default and gets the provider's refusal when set."""
    async with SandboxProvider(fast()) as sandbox, aiohttp.ClientSession() as http:
        stopped, running = sandbox.create_accounts(2)
        sandbox.authenticate(stopped.id)
        base = f"{sandbox.api_base}/accounts"
        async with http.put(f"{base}/{stopped.id}", json={"metadata": {}}, headers=basic()) as r:
            assert r.status == 200
        sandbox.settings.stopped_account_refuses = frozenset({"update", "downgrade"})
        async with http.put(f"{base}/{stopped.id}", json={"metadata": {}}, headers=basic()) as r:
            assert (r.status, await r.json()) == (403, STOPPED_BODY)
        async with http.post(f"{base}/{stopped.id}/downgrade", headers=basic()) as r:
            assert (r.status, await r.json()) == (403, STOPPED_BODY)
        assert stopped.billing_state == "paid"
        async with http.post(f"{base}/{running.id}/downgrade", headers=basic()) as r:
            assert r.status == 200
        # Upgrade was not listed: the cancelled (stopped) account can still be reactivated.
        async with http.post(f"{base}/{running.id}/upgrade", headers=basic()) as r:
            assert r.status == 200
    with pytest.raises(ValueError, match="unknown calls"):
        SandboxSettings(stopped_account_refuses=frozenset({"delete"}))


async def test_v3_bodies_codes_and_ids(hook: Any) -> None:
    """v3 notifications carry each trigger's code, opaque ids shaped like the published ones
    (not UUIDs), grant_updated_at on expired only."""
    clock = Clock()
    async with SandboxProvider(fast(api_version=3), clock=clock) as sandbox:
        await sandbox.register_webhook(hook.url)
        sandbox.settings.connected_on_create = True
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        auth_at = clock.now
        clock.now += 100
        sandbox.break_account(acct.id, "invalid")
        sandbox.break_account(acct.id, "sync_error")  # v3 has no such trigger: not sent
        sandbox.delete(acct.id)
        await sandbox.sender.wait_idle()
    by_type = {b["type"]: b for b in hook.bodies}
    assert sorted(by_type) == ["grant.created", "grant.deleted", "grant.expired", "grant.updated"]
    codes = {t: b["data"]["object"]["code"] for t, b in by_type.items()}
    assert codes == {
        "grant.created": 25012,
        "grant.updated": 25027,
        "grant.deleted": 25013,
        "grant.expired": 25009,
    }
    assert by_type["grant.updated"]["data"]["object"]["reauthentication_flag"] is True
    assert by_type["grant.expired"]["data"]["object"]["grant_updated_at"] == int(auth_at)
    assert [t for t, b in by_type.items() if "grant_updated_at" in b["data"]["object"]] == [
        "grant.expired"
    ]
    ids = [b["id"] for b in hook.bodies]
    assert len(set(ids)) == len(ids)
    # Like the official Java SDK's signed sample id `Kkx2QQB7TWjWM3KXRQQn562394`.
    assert all(re.fullmatch(r"[A-Za-z0-9]{20}[0-9]{6}", i) for i in ids), ids
