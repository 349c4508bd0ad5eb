"""Simulated end users and the application's backend, for the demo and end-to-end tests.

Users authenticate through the sandbox's OAuth stand-in (``POST /sandbox/accounts/{id}/auth``);
the backend then reports each auth to the daemon (``POST {daemon}/v1/auth-events``, Bearer token)
and receives the daemon's re-authentication requests on ``POST /notify`` (Standard Webhooks
signed), answering each after a random human delay, except for users who never answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from daemon.provider.standardwebhooks import WebhookVerificationError, verify

from ._tasks import BackgroundTasks


@dataclass
class UsersSettings:
    """How the simulated population behaves; durations are nominal seconds, scaled."""

    seed: int = 0
    time_scale: float = 1.0
    # First auths happen at uniform random times within this window.
    auth_window: float = 3600.0
    # A user answers a re-authentication request after a delay drawn from this range.
    human_delay: tuple[float, float] = (60.0, 900.0)
    # Fraction of users who never answer a request.
    never_answer: float = 0.05
    notify_tolerance: float = 300.0
    # Real seconds between tries to report an auth event while the daemon is away.
    report_retry: float = 0.2
    report_timeout: float = 60.0

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


@dataclass
class UserCounters:
    """What the demo's live view shows about the users."""

    authenticated: int = 0
    reminded: int = 0
    answered: int = 0
    ignored: int = 0
    reports_failed: int = 0


def rfc3339(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class SimulatedUsers:
    """N end users plus the application backend between the sandbox provider and the daemon."""

    def __init__(
        self,
        sandbox_url: str,
        daemon_url: str,
        auth_events_token: str,
        notify_secrets: str | list[str],
        settings: UsersSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sandbox_url = sandbox_url.rstrip("/")
        self.daemon_url = daemon_url.rstrip("/")
        self._token = auth_events_token
        self._secrets = notify_secrets
        self.settings = settings or UsersSettings()
        self._clock = clock
        self._rng = random.Random(self.settings.seed)
        self.counters = UserCounters()
        self.accounts: dict[str, dict[str, Any]] = {}
        self.silent: set[str] = set()
        self._seen_ids: set[str] = set()
        self._answering: set[str] = set()
        self._tasks = BackgroundTasks()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.notify_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the backend's notify receiver; returns its URL (``.../notify``)."""
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/notify", self._on_notify)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.notify_url = f"http://{host}:{self._runner.addresses[0][1]}/notify"
        return self.notify_url

    async def stop(self) -> None:
        await self._tasks.cancel_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- population ----------------------------------------------------------------------------

    async def create_accounts(self, count: int) -> list[dict[str, Any]]:
        """Connect ``count`` accounts in the sandbox and decide, seeded, who never answers."""
        assert self._session is not None, "start() first"
        async with self._session.post(
            f"{self.sandbox_url}/sandbox/accounts", json={"count": count}
        ) as resp:
            resp.raise_for_status()
            created: list[dict[str, Any]] = await resp.json()
        self.adopt(created)
        return created

    def adopt(self, accounts: list[dict[str, Any]]) -> None:
        """Take over accounts created elsewhere (management-API objects)."""
        for acct in accounts:
            self.accounts[acct["id"]] = acct
            if self._rng.random() < self.settings.never_answer:
                self.silent.add(acct["id"])

    async def authenticate_all(self) -> None:
        """Each user authenticates once at a random time within the window; returns when done."""
        window = self.settings.scaled(self.settings.auth_window)
        plan = [(self._rng.uniform(0, window), acct_id) for acct_id in self.accounts]
        tasks = [
            self._tasks.spawn(self._auth_at(delay, acct_id)) for delay, acct_id in sorted(plan)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _auth_at(self, delay: float, account_id: str) -> None:
        await asyncio.sleep(delay)
        await self.authenticate(account_id)

    async def authenticate(self, account_id: str) -> str:
        """One user's OAuth flow through the sandbox, then the backend's report to the daemon."""
        assert self._session is not None, "start() first"
        async with self._session.post(
            f"{self.sandbox_url}/sandbox/accounts/{account_id}/auth"
        ) as resp:
            resp.raise_for_status()
            outcome: str = (await resp.json())["outcome"]
        occurred_at = self._clock()
        self.counters.authenticated += 1
        await self.report(account_id, occurred_at)
        return outcome

    async def report(self, account_id: str, occurred_at: float) -> bool:
        """POST the auth event, retrying while the daemon is down (it may be restarting)."""
        assert self._session is not None
        acct = self.accounts.get(account_id, {})
        event = {
            "account_id": account_id,
            "occurred_at": rfc3339(occurred_at),
            "event_id": str(uuid.UUID(int=self._rng.getrandbits(128))),
            "email": acct.get("email", ""),
            "provider": acct.get("provider", ""),
        }
        headers = {"Authorization": f"Bearer {self._token}"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.report_timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.post(
                    f"{self.daemon_url}/v1/auth-events",
                    json=event,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    if resp.status < 300:
                        return True
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        # Refused for good (bad token or body): retrying cannot help.
                        break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(self.settings.report_retry)
        self.counters.reports_failed += 1
        return False

    # -- the daemon's requests -----------------------------------------------------------------

    async def _on_notify(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            msg_id = verify(
                self._secrets,
                request.headers,
                body,
                self._clock(),
                self.settings.notify_tolerance,
            )
        except WebhookVerificationError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        if msg_id in self._seen_ids:
            return web.json_response({"duplicate": True})
        try:
            message = json.loads(body)
            account_id = message["data"]["account_id"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected data.account_id"}, status=400)
        self._seen_ids.add(msg_id)
        self.counters.reminded += 1
        if account_id in self.silent or account_id not in self.accounts:
            self.counters.ignored += 1
        elif account_id not in self._answering:
            self._answering.add(account_id)
            low, high = self.settings.human_delay
            self._tasks.spawn(
                self._answer(account_id, self.settings.scaled(self._rng.uniform(low, high)))
            )
        return web.json_response({"ok": True})

    async def _answer(self, account_id: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            await self.authenticate(account_id)
            self.counters.answered += 1
        finally:
            self._answering.discard(account_id)
