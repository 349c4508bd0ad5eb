"""Simulated users and app backend against the sandbox and a tiny fake daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.provider.sandbox import SandboxProvider, SandboxSettings, SimulatedUsers, UsersSettings
from daemon.provider.standardwebhooks import generate_secret, sign

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

TOKEN = "auth-events-token"
SECRET = generate_secret()


class FakeDaemon:
    """Records auth events (checking the bearer token), answering 503 the first N times."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        if self.fail_first:
            self.fail_first -= 1
            return web.Response(status=503)
        self.events.append(await request.json())
        return web.json_response({"ok": True}, status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/auth-events", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def world() -> AsyncIterator[tuple[SandboxProvider, FakeDaemon, SimulatedUsers]]:
    sandbox = SandboxProvider(SandboxSettings.compressed(0.1 / 1800, static_ips_enabled=True))
    await sandbox.start()
    daemon = FakeDaemon(fail_first=2)
    await daemon.start()
    settings = UsersSettings(
        seed=7,
        time_scale=0.001,
        auth_window=100,
        human_delay=(10, 50),
        never_answer=0.0,
        report_retry=0.01,
    )
    users = SimulatedUsers(sandbox.base_url, daemon.url, TOKEN, SECRET, settings)
    await users.start()
    yield sandbox, daemon, users
    await users.stop()
    await daemon.stop()
    await sandbox.stop()


def notify(account_id: str, msg_id: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "type": "staticipd.reauth_requested",
            "data": {
                "account_id": account_id,
                "email": "",
                "stage": "second_step_due",
                "due_at": "2024-01-01T00:00:00Z",
                "reminder": 0,
            },
        }
    ).encode()
    headers = sign(secret, msg_id, int(time.time()), body)
    return body, headers | {"Content-Type": "application/json"}


async def test_first_auths_are_reported(world: Any) -> None:
    """Every user authenticates in the sandbox and each auth reaches the daemon, despite 503s."""
    sandbox, daemon, users = world
    await users.create_accounts(5)
    await users.authenticate_all()
    assert users.counters.authenticated == 5
    assert {e["account_id"] for e in daemon.events} == set(users.accounts)
    event = daemon.events[0]
    assert set(event) == {"account_id", "occurred_at", "event_id", "email", "provider"}
    assert event["occurred_at"].endswith("Z")
    assert sandbox.stats()["states"]["env.staging"] == 5


async def test_signed_notify_leads_to_second_auth(world: Any) -> None:
    """A signed re-auth request makes the user re-authenticate later; duplicates and bad
    signatures do not."""
    sandbox, daemon, users = world
    (acct,) = await users.create_accounts(1)
    await users.authenticate(acct["id"])
    await asyncio.sleep(0.12)
    async with aiohttp.ClientSession() as http:
        body, headers = notify(acct["id"], "msg_1")
        for _ in range(2):
            async with http.post(users.notify_url, data=body, headers=headers) as resp:
                assert resp.status == 200
        bad_body, bad_headers = notify(acct["id"], "msg_2", secret=generate_secret())
        async with http.post(users.notify_url, data=bad_body, headers=bad_headers) as resp:
            assert resp.status == 401
    for _ in range(200):
        if users.counters.answered:
            break
        await asyncio.sleep(0.01)
    assert users.counters.reminded == 1
    assert users.counters.answered == 1
    assert len(daemon.events) == 2
    assert sandbox.book.accounts[acct["id"]].env == "static"


async def test_silent_users_never_answer(world: Any) -> None:
    """Users drawn as never answering count as ignored and do not re-authenticate."""
    _sandbox, daemon, users = world
    users.settings.never_answer = 1.0
    (acct,) = await users.create_accounts(1)
    async with aiohttp.ClientSession() as http:
        body, headers = notify(acct["id"], "msg_9")
        async with http.post(users.notify_url, data=body, headers=headers) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.1)
    assert (users.counters.reminded, users.counters.ignored, users.counters.answered) == (1, 1, 0)
    assert daemon.events == []
