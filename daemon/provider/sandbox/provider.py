"""``SandboxProvider``: the provider emulator as one object that owns its state, its webhook sender
and its own aiohttp runner, usable from async tests and from ``staticipd demo``.

It is a sandbox: nothing here ever talks to the real provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ._tasks import BackgroundTasks
from .accounts import Account, AccountBook, Emission, IpLists
from .api import build_app
from .settings import ActionBody, BreakKind, SandboxSettings
from .webhooks import Destination, WebhookSender


class SandboxProvider:
    """The emulated provider (v2 by default, v3 envelopes with ``api_version=3``)."""

    def __init__(
        self, settings: SandboxSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or SandboxSettings()
        self._clock = clock
        self.rng = random.Random(self.settings.seed)
        self.book = AccountBook(self.settings, random.Random(f"{self.settings.seed}:accounts"))
        self.ips = IpLists(self.settings, self.settings.seed, clock())
        self.sender = WebhookSender(
            self.settings, random.Random(f"{self.settings.seed}:webhooks"), clock
        )
        # One budget for the endpoint, whichever list is asked for: the limit is 10 calls an
        # hour per application (docs/provider.md#the-ip-address-endpoints), and the static list is
        # served on the same path.
        self._ip_calls: deque[float] = deque()
        self._tasks = BackgroundTasks()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.api_requests = 0
        self.api_faults: dict[str, int] = {"429": 0, "5xx": 0, "timeout": 0}
        self.outcomes: dict[str, int] = {}
        self.action_bodies: dict[str, int] = {}  # how often each downgrade/upgrade body was sent
        self._action_turn = 0
        self._static_updated_at = int(clock())

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port) and return the base URL."""
        await self.sender.start()
        self._runner = web.AppRunner(build_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        if self.settings.webhook_url:
            await self.register_webhook(self.settings.webhook_url)
        return self.base_url

    async def stop(self) -> None:
        await self._tasks.cancel_all()
        await self.sender.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SandboxProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        """Base URL of the management API for this application (``.../a/{client_id}``)."""
        return f"{self.base_url}/a/{self.settings.client_id}"

    # -- operations (used by the HTTP routes, and directly by tests and the demo) ---------------

    def _send(self, emissions: list[Emission]) -> None:
        self.sender.send(emissions)

    def create_accounts(self, count: int = 0, emails: list[str] | None = None) -> list[Account]:
        created, emissions = self.book.create(self._clock(), count, emails)
        self._send(emissions)
        return created

    def authenticate(self, account_id: str) -> str:
        """What the end user's OAuth flow does; returns the outcome (see ``AccountBook``)."""
        now = self._clock()
        outcome, emissions = self.book.authenticate(account_id, now)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if self.settings.api_version == 3:
            acct = self.book.accounts[account_id]
            emissions.append(
                Emission("sandbox.reauthenticated", account_id, now, acct.email, acct.provider)
            )
        self._send(emissions)
        self._maybe_break_later(account_id)
        return outcome

    def break_account(self, account_id: str, kind: BreakKind = "invalid") -> None:
        """Break the account now: ``sync_state`` becomes ``invalid`` or ``sync-error`` and
        ``account.invalid`` / ``account.sync_error`` is sent; the user's next auth repairs it.
        """
        emissions = self.book.break_account(account_id, kind, self._clock())
        key = f"broken_{kind}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self._send(emissions)

    def _maybe_break_later(self, account_id: str) -> None:
        faults = self.settings.faults
        if faults.account_break <= 0 or self.rng.random() >= faults.account_break:
            return
        kind: BreakKind = "invalid" if self.rng.random() < 0.5 else "sync_error"
        low, high = faults.account_break_delay_range
        self._tasks.spawn(
            self._break_later(account_id, kind, self.settings.scaled(self.rng.uniform(low, high)))
        )

    async def _break_later(self, account_id: str, kind: BreakKind, wait: float) -> None:
        await asyncio.sleep(wait)
        if account_id in self.book.accounts:
            self.break_account(account_id, kind)

    def refuses(self, call: str, account: Account) -> bool:
        """Whether ``call`` on ``account`` meets the "sync has been stopped" refusal.

        See docs/provider.md#what-is-verified-and-what-is-assumed.
        """
        return call in self.settings.stopped_account_refuses and account.sync_state == "stopped"

    def downgrade(self, account_id: str) -> None:
        self._send(self.book.downgrade(account_id, self._clock()))

    def upgrade(self, account_id: str) -> None:
        started_at = self._clock()
        if self.book.upgrade(account_id, started_at):
            self._tasks.spawn(self._restart_later(account_id, started_at))

    async def _restart_later(self, account_id: str, started_at: float) -> None:
        await asyncio.sleep(self.settings.scaled(self.settings.upgrade_delay))
        outcome, emissions = self.book.restart(account_id, started_at, self._clock())
        key = f"restart_{outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self._send(emissions)

    def delete(self, account_id: str) -> None:
        acct = self.book.delete(account_id)
        self._send([Emission("sandbox.deleted", acct.id, self._clock(), acct.email, acct.provider)])

    def enable_static_ips(self, enabled: bool = True) -> None:
        """The customer-success step: the application is now in the static-IP arrangement."""
        self.settings.static_ips_enabled = enabled
        self._static_updated_at = int(self._clock())

    async def register_webhook(self, url: str, version: int | None = None) -> Destination:
        return await self.sender.register(url, version)

    def set_faults(self, **changes: Any) -> None:
        self.settings.faults.update(changes)

    # -- API helpers ---------------------------------------------------------------------------

    def next_action_body(self) -> ActionBody:
        """The body variant of the next 2xx answer to a downgrade or upgrade (in turn)."""
        bodies = self.settings.action_bodies
        body = bodies[self._action_turn % len(bodies)]
        self._action_turn += 1
        self.action_bodies[body] = self.action_bodies.get(body, 0) + 1
        return body

    def api_fault(self) -> str | None:
        """Draw an injected fault for one provider API call (seeded, so runs repeat)."""
        self.api_requests += 1
        faults = self.settings.faults
        roll = self.rng.random()
        for name, prob in (
            ("429", faults.api_429),
            ("5xx", faults.api_5xx),
            ("timeout", faults.api_timeout),
        ):
            if roll < prob:
                self.api_faults[name] += 1
                return name
            roll -= prob
        return None

    def ip_rate_check(self) -> float | None:
        """Count one ip_addresses call (either list); None if allowed, else real seconds until
        the window frees a slot."""
        now = self._clock()
        window = self.settings.scaled(self.settings.ip_rate_window)
        calls = self._ip_calls
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= self.settings.ip_rate_limit:
            return calls[0] + window - now
        calls.append(now)
        return None

    def ip_list(self, environment: str) -> tuple[list[str], int]:
        if environment == "static":
            return self.ips.static(), self._static_updated_at
        return self.ips.dynamic(self._clock())

    def stats(self) -> dict[str, Any]:
        """Counters for the demo's live view and for tests."""
        return {
            "accounts": len(self.book.accounts),
            "moves": self.book.moves,
            "states": self.book.counts(),
            "auth_outcomes": dict(self.outcomes),
            "api_requests": self.api_requests,
            "api_faults": dict(self.api_faults),
            "action_bodies": dict(self.action_bodies),
            "webhooks": dataclasses.asdict(self.sender.stats),
            "destinations": [
                {k: v for k, v in d.as_json().items() if k != "webhook_secret"}
                for d in self.sender.destinations.values()
            ],
            "static_ips_enabled": self.settings.static_ips_enabled,
        }
