"""The sandbox provider: management API, the static-IP move, signed webhooks, retries, faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.provider.sandbox import SandboxProvider, SandboxSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class Receiver:
    """A tiny webhook endpoint that answers the challenge and records POSTs."""

    def __init__(self, statuses: list[int] | None = None, echo: bool = True) -> None:
        self.statuses = list(statuses or [])
        self.echo = echo
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            value = request.query.get("challenge", "")
            return web.Response(text=value if self.echo else "nope")
        self.posts.append((await request.read(), dict(request.headers)))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        return self.url

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def deltas(self) -> list[dict[str, Any]]:
        return [d for body, _ in self.posts for d in json.loads(body)["deltas"]]


def fast(**overrides: Any) -> SandboxSettings:
    """Settings where the 30-minute delay is 0.3 s and retries take milliseconds."""
    return SandboxSettings.compressed(0.3 / 1800, static_ips_enabled=True, **overrides)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(secret: str = "sandbox-client-secret") -> dict[str, str]:  # noqa: S107
    """Basic auth headers: client secret as user, empty password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}


async def test_signature_covers_exact_bytes(receiver: Receiver) -> None:
    """Every webhook's X-Nylas-Signature is the hex HMAC of the raw body with the client secret."""
    async with SandboxProvider(fast(connected_on_create=True)) as sandbox:
        await sandbox.register_webhook(receiver.url)
        sandbox.create_accounts(3)
        await sandbox.sender.wait_idle()
    assert len(receiver.posts) == 3
    for body, headers in receiver.posts:
        expected = hmac.new(b"sandbox-client-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Nylas-Signature"] == expected
        assert headers["Content-Type"] == "application/json"
        delta = json.loads(body)["deltas"][0]
        assert delta["type"] == "account.connected"
        assert delta["object_data"]["id"] == delta["object_data"]["account_id"]


async def test_challenge_good_and_bad_receivers() -> None:
    """A destination that echoes the challenge is active; one that does not stays inactive."""
    good, bad = Receiver(), Receiver(echo=False)
    await good.start()
    await bad.start()
    try:
        async with SandboxProvider(fast()) as sandbox:
            assert (await sandbox.register_webhook(good.url)).state == "active"
            assert (await sandbox.register_webhook(bad.url)).state == "inactive"
            sandbox.create_accounts(1)
            await sandbox.sender.wait_idle()
        assert len(good.posts) == 1
        assert bad.posts == []
    finally:
        await good.stop()
        await bad.stop()


async def test_two_auth_move(receiver: Receiver) -> None:
    """First auth stops the account, an early second auth is ignored, a later one moves it."""
    async with SandboxProvider(fast(connected_on_create=False)) as sandbox:
        await sandbox.register_webhook(receiver.url)
        (acct,) = sandbox.create_accounts(1)
        assert sandbox.authenticate(acct.id) == "staged"
        assert acct.sync_state == "stopped"
        assert sandbox.authenticate(acct.id) == "early_ignored"
        await asyncio.sleep(0.35)
        assert sandbox.authenticate(acct.id) == "moved"
        assert (acct.env, acct.sync_state) == ("static", "running")
        assert sandbox.authenticate(acct.id) == "normal"
        await sandbox.sender.wait_idle()
    assert [d["type"] for d in receiver.deltas()] == ["account.stopped", "account.running"]


async def test_early_second_auth_restart_clock() -> None:
    """With restart_clock an early second auth starts the waiting over."""
    clock = [1000.0]
    sandbox = SandboxProvider(fast(early_second_auth="restart_clock"), clock=lambda: clock[0])
    (acct,) = sandbox.create_accounts(1)
    sandbox.authenticate(acct.id)
    clock[0] += 0.2
    assert sandbox.authenticate(acct.id) == "early_restarted"
    clock[0] += 0.2
    assert sandbox.authenticate(acct.id) == "early_restarted"
    clock[0] += 0.31
    assert sandbox.authenticate(acct.id) == "moved"


async def test_downgrade_upgrade_counts_as_stop_start(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Downgrade+upgrade after the delay moves a staged account to static and sends running."""
    async with SandboxProvider(fast(connected_on_create=False, upgrade_delay=0.0)) as sandbox:
        await sandbox.register_webhook(receiver.url)
        (acct,) = sandbox.create_accounts(1)
        sandbox.authenticate(acct.id)
        await asyncio.sleep(0.35)
        base = f"{sandbox.api_base}/accounts/{acct.id}"
        async with http.post(f"{base}/downgrade", headers=auth()) as resp:
            assert await resp.json() == {"success": True}
        async with http.get(base, headers=auth()) as resp:
            assert (await resp.json())["billing_state"] == "cancelled"
        async with http.post(f"{base}/upgrade", headers=auth()) as resp:
            assert await resp.json() == {"success": True}
        for _ in range(100):
            if acct.env == "static":
                break
            await asyncio.sleep(0.01)
        async with http.get(base, headers=auth()) as resp:
            body = await resp.json()
        assert (body["billing_state"], body["sync_state"]) == ("paid", "running")
        await sandbox.sender.wait_idle()
    assert [d["type"] for d in receiver.deltas()][-1] == "account.running"


async def test_retries_on_non_200_count_attempts() -> None:
    """A receiver answering 500 twice gets the same bytes again until it answers 200."""
    rec = Receiver(statuses=[500, 202])
    await rec.start()
    try:
        async with SandboxProvider(fast()) as sandbox:
            await sandbox.register_webhook(rec.url)
            sandbox.create_accounts(1)
            await sandbox.sender.wait_idle()
            attempts = [(a.attempt, a.status, a.ok) for a in sandbox.sender.attempts]
        assert attempts == [(1, 500, False), (2, 202, False), (3, 200, True)]
        assert len({body for body, _ in rec.posts}) == 1
    finally:
        await rec.stop()


async def test_retries_give_up_after_five_attempts_v2() -> None:
    """In v2 mode a delivery that always fails is tried five times, then counted failed."""
    rec = Receiver(statuses=[503] * 10)
    await rec.start()
    try:
        async with SandboxProvider(fast()) as sandbox:
            await sandbox.register_webhook(rec.url)
            sandbox.create_accounts(1)
            await sandbox.sender.wait_idle()
            assert [a.attempt for a in sandbox.sender.attempts] == [1, 2, 3, 4, 5]
            assert sandbox.sender.stats.failed == 1
    finally:
        await rec.stop()


async def test_v3_envelope_and_attempt_counter() -> None:
    """v3 deliveries use the destination secret, grant triggers and webhook_delivery_attempt."""
    rec = Receiver(statuses=[500])
    await rec.start()
    try:
        async with SandboxProvider(fast(api_version=3)) as sandbox:
            dest = await sandbox.register_webhook(rec.url)
            assert dest.webhook_secret
            (acct,) = sandbox.create_accounts(1)
            sandbox.authenticate(acct.id)
            await sandbox.sender.wait_idle()
        bodies = [json.loads(b) for b, _ in rec.posts]
        assert sorted((b["type"], b["webhook_delivery_attempt"]) for b in bodies) == [
            ("grant.created", 1),
            ("grant.created", 2),
            ("grant.updated", 1),
        ]
        for body, headers in rec.posts:
            key = dest.webhook_secret.encode()
            assert headers["X-Nylas-Signature"] == hmac.new(key, body, hashlib.sha256).hexdigest()
        updated = next(b for b in bodies if b["type"] == "grant.updated")
        assert updated["data"]["object"]["reauthentication_flag"] is True
    finally:
        await rec.stop()


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("webhook_drop", lambda rec, st: len(rec.posts) == 0 and st.dropped == 4),
        ("webhook_duplicate", lambda rec, st: len(rec.posts) == 8 and st.duplicated == 4),
        ("webhook_delay", lambda rec, st: len(rec.posts) == 4 and st.delayed == 4),
        ("webhook_bad_signature", lambda rec, st: len(rec.posts) == 4 and st.bad_signatures == 4),
    ],
)
async def test_webhook_faults(fault: str, check: Any, receiver: Receiver) -> None:
    """Each webhook fault, at probability 1, visibly drops, duplicates, delays or mis-signs."""
    async with SandboxProvider(fast()) as sandbox:
        await sandbox.register_webhook(receiver.url)
        sandbox.set_faults(**{fault: 1.0})
        sandbox.create_accounts(4)
        await sandbox.sender.wait_idle()
        assert check(receiver, sandbox.sender.stats)
        if fault == "webhook_bad_signature":
            for body, headers in receiver.posts:
                good = hmac.new(b"sandbox-client-secret", body, hashlib.sha256).hexdigest()
                assert headers["X-Nylas-Signature"] != good


async def test_reorder_fault_swaps_deliveries(receiver: Receiver) -> None:
    """A reordered delivery arrives after the one queued behind it."""
    async with SandboxProvider(fast(connected_on_create=False)) as sandbox:
        await sandbox.register_webhook(receiver.url)
        a, b = sandbox.create_accounts(2)
        # Hold for up to 600 nominal s (0.1 s here) unless a later delivery overtakes it first.
        sandbox.set_faults(webhook_reorder=1.0, webhook_delay_range=(600, 900))
        sandbox.authenticate(a.id)
        await asyncio.sleep(0.02)
        sandbox.set_faults(webhook_reorder=0.0)
        sandbox.authenticate(b.id)
        await sandbox.sender.wait_idle()
    assert [d["object_data"]["id"] for d in receiver.deltas()] == [b.id, a.id]


async def test_several_deltas_per_post(receiver: Receiver) -> None:
    """With batching on, one v2 POST can carry several deltas."""
    async with SandboxProvider(fast(batch_probability=1.0)) as sandbox:
        await sandbox.register_webhook(receiver.url)
        sandbox.create_accounts(3)
        await sandbox.sender.wait_idle()
    assert len(receiver.posts) == 1
    assert len(receiver.deltas()) == 3


async def test_api_auth_404_and_listing(http: aiohttp.ClientSession) -> None:
    """Bad secret is 401, unknown account 404, and accounts page by limit/offset."""
    async with SandboxProvider(fast()) as sandbox:
        sandbox.create_accounts(5)
        async with http.get(f"{sandbox.api_base}/accounts", headers=auth("wrong")) as resp:
            assert resp.status == 401
            assert set(await resp.json()) == {"message", "type"}
        async with http.get(f"{sandbox.api_base}/accounts/nope", headers=auth()) as resp:
            assert resp.status == 404
        async with http.get(
            f"{sandbox.api_base}/accounts?limit=2&offset=4", headers=auth()
        ) as resp:
            page = await resp.json()
        assert len(page) == 1
        assert {"sync_state", "billing_state", "email", "id"} <= set(page[0])
        async with http.put(
            f"{sandbox.api_base}/accounts/{page[0]['id']}",
            json={"metadata": {"k": "v"}},
            headers=auth(),
        ) as resp:
            assert (await resp.json())["metadata"] == {"k": "v"}
        async with http.delete(f"{sandbox.api_base}/accounts/{page[0]['id']}", headers=auth()) as r:
            assert await r.json() == {"success": True}
        assert len(sandbox.book.accounts) == 4


async def test_ip_addresses_rate_limit_and_static_list(http: aiohttp.ClientSession) -> None:
    """The 11th ip_addresses call in the window is 429 with rate headers, whichever list."""
    async with SandboxProvider(fast()) as sandbox:
        url = f"{sandbox.api_base}/ip_addresses"
        for _ in range(5):
            async with http.get(url, headers=auth()) as resp:
                body = await resp.json()
                assert resp.status == 200
            async with http.get(url, params={"environment": "static"}, headers=auth()) as resp:
                assert (await resp.json())["ip_addresses"] == sandbox.settings.static_ips
        assert body["ip_addresses"]
        assert isinstance(body["updated_at"], int)
        # The static list is served on the same endpoint: it spends the same per-app budget.
        for params in ({}, {"environment": "static"}):
            async with http.get(url, params=params, headers=auth()) as resp:
                assert resp.status == 429
                assert resp.headers["X-RateLimit-Limit"] == "10"
                assert int(resp.headers["X-RateLimit-Reset"]) >= 1


async def test_dynamic_ip_list_changes_over_time() -> None:
    """The dynamic list rotates addresses as time passes and updated_at moves."""
    clock = [0.0]
    sandbox = SandboxProvider(SandboxSettings(dynamic_ip_rotation=60), clock=lambda: clock[0])
    first, t1 = sandbox.ip_list("dynamic")
    clock[0] = 600
    later, t2 = sandbox.ip_list("dynamic")
    assert first != later
    assert t2 > t1


@pytest.mark.parametrize(("fault", "status"), [("api_429", 429), ("api_5xx", 503)])
async def test_api_faults(fault: str, status: int, http: aiohttp.ClientSession) -> None:
    """Injected API faults answer 429 (with rate headers) or 5xx, set at runtime over HTTP."""
    async with SandboxProvider(fast()) as sandbox:
        async with http.put(f"{sandbox.base_url}/sandbox/faults", json={fault: 1.0}) as resp:
            assert resp.status == 200
        async with http.get(f"{sandbox.api_base}/accounts", headers=auth()) as resp:
            assert resp.status == status
            if status == 429:
                assert "X-RateLimit-Reset" in resp.headers


async def test_api_timeout_fault(http: aiohttp.ClientSession) -> None:
    """A slow-API fault makes the call outlast the client's timeout."""
    async with SandboxProvider(fast()) as sandbox:
        sandbox.set_faults(api_timeout=1.0, api_timeout_seconds=0.5)
        with pytest.raises(TimeoutError):
            async with http.get(
                f"{sandbox.api_base}/accounts",
                headers=auth(),
                timeout=aiohttp.ClientTimeout(total=0.2),
            ):
                pass


async def test_control_endpoints_over_http(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    """Accounts, auth, static flag, webhook registration and stats work through /sandbox/."""
    async with SandboxProvider(SandboxSettings.compressed(0.001)) as sandbox:
        base = sandbox.base_url
        async with http.post(f"{base}/sandbox/webhooks", json={"url": receiver.url}) as resp:
            assert (await resp.json())["state"] == "active"
        async with http.post(f"{base}/sandbox/accounts", json={"count": 2}) as resp:
            accounts = await resp.json()
        async with http.post(f"{base}/sandbox/static-ips", json={"enabled": True}) as resp:
            assert (await resp.json())["static_ips_enabled"] is True
        async with http.post(f"{base}/sandbox/accounts/{accounts[0]['id']}/auth") as resp:
            assert (await resp.json())["outcome"] == "staged"
        async with http.get(f"{base}/sandbox/stats") as resp:
            stats = await resp.json()
        assert stats["accounts"] == 2
        assert stats["states"]["env.staging"] == 1
        async with http.put(f"{base}/sandbox/faults", json={"bogus": 1}) as resp:
            assert resp.status == 400


async def test_destination_disabled_after_long_failure() -> None:
    """A v3 destination failing longer than disable_after becomes failed and gets no more POSTs."""
    rec = Receiver(statuses=[500] * 20)
    await rec.start()
    try:
        async with SandboxProvider(fast(api_version=3, disable_after=0.0)) as sandbox:
            dest = await sandbox.register_webhook(rec.url)
            sandbox.create_accounts(1)
            await sandbox.sender.wait_idle()
            assert dest.state == "failed"
            sent = len(rec.posts)
            sandbox.create_accounts(1)
            await sandbox.sender.wait_idle()
        assert sent == 1
        assert len(rec.posts) == 1
    finally:
        await rec.stop()
