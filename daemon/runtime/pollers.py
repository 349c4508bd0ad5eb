"""Pollers: the IP-list watcher and the account reconciler.

The watcher fetches the provider's IP lists (no more often than the provider's ~10 calls an
hour allow) and records each result; the domain turns a change into an `IpListChanged` event.
The reconciler compares the provider's account list with the projection and records an
observation for each account whose migration waits on a webhook, when what the provider shows
can move the account, so a webhook that never came (a lost `account.stopped`, say) cannot leave
an account stuck.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import anyio
import anyio.lowlevel
import structlog

from daemon.clock import utc_now
from daemon.domain import (
    AccountObserved,
    AccountState,
    Input,
    IpListObserved,
    sync_state_meaning,
)
from daemon.domain.vocabulary import MIGRATING, IpListKind
from daemon.provider.client import ProviderClient, ProviderError, RateLimited
from daemon.runtime.projections import Projection

log = structlog.get_logger(__name__)

Submit = Callable[[Sequence[Input]], Awaitable[object]]

# States whose next step depends on something the provider reports: a migration under way.
WAITING_ON_PROVIDER = MIGRATING


async def _pause(interval: float, rng: random.Random, retry_after: float | None = None) -> None:
    # ±10 % jitter keeps several daemons (or restarts) from polling in lock-step.
    delay = max(retry_after or 0.0, interval * rng.uniform(0.9, 1.1))
    await anyio.sleep(delay)


class IpListWatcher:
    """Polls the dynamic (and, where configured, static) IP list and records what it sees."""

    def __init__(
        self,
        provider: ProviderClient,
        submit: Submit,
        *,
        interval: float,
        environments: Sequence[IpListKind] = ("dynamic",),
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._provider = provider
        self._submit = submit
        self._interval = interval
        self._environments = tuple(environments)
        self._rng = rng or random.Random()
        self._clock = clock

    async def poll_once(self) -> float | None:
        """Fetch and record each list; returns a Retry-After the provider asked for, if any."""
        inputs: list[Input] = []
        retry_after: float | None = None
        for environment in self._environments:
            try:
                ip_list = await self._provider.ip_addresses(environment)
            except RateLimited as exc:
                # Lists already fetched in this poll are still recorded: that call was paid for.
                log.warning("ip_list.rate_limited", retry_after=exc.retry_after)
                retry_after = exc.retry_after
                break
            except ProviderError as exc:
                log.warning("ip_list.poll_failed", environment=environment, error=str(exc))
                continue
            observed_at = self._clock()
            inputs.append(
                IpListObserved(
                    input_id=f"ip:{environment}:{observed_at.isoformat()}",
                    kind=environment,
                    addresses=tuple(ip_list.addresses),
                    provider_updated_at=ip_list.updated_at,
                    observed_at=observed_at,
                )
            )
        if inputs:
            await self._submit(inputs)
        return retry_after

    async def run(self) -> None:
        while True:
            retry_after = await self.poll_once()
            await _pause(self._interval, self._rng, retry_after)


class Reconciler:
    """Walks the provider's account list and records observations the projection needs."""

    def __init__(
        self,
        provider: ProviderClient,
        projection: Callable[[], Projection],
        submit: Submit,
        *,
        interval: float,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._provider = provider
        self._projection = projection
        self._submit = submit
        self._interval = interval
        self._rng = rng or random.Random()
        self._clock = clock
        self.rounds = 0

    async def reconcile_once(self) -> int:
        """One pass; returns how many observations were recorded."""
        projection = self._projection()
        waiting = {a for state in WAITING_ON_PROVIDER for a in projection.ids_in(state)}
        if not waiting:
            self.rounds += 1
            return 0
        round_at = self._clock()
        seen: dict[str, tuple[str | None, str | None]] = {}
        async for account in self._provider.list_accounts():
            if account.id in waiting:
                seen[account.id] = (account.sync_state, account.billing_state)
        inputs: list[Input] = []
        for n, account_id in enumerate(sorted(waiting), 1):
            if n % 500 == 0:  # an account not in memory is read from the snapshot: let others in
                await anyio.lowlevel.checkpoint()
            sync_state, billing_state = seen.get(account_id, (None, None))
            state = projection.account(account_id)
            if not _informative(state, sync_state, account_id in seen, billing_state):
                continue
            inputs.append(
                AccountObserved(
                    input_id=f"reconcile:{round_at.isoformat()}:{account_id}",
                    account_id=account_id,
                    sync_state=sync_state,
                    billing_state=billing_state,
                    exists=account_id in seen,
                    observed_at=round_at,
                )
            )
        for start in range(0, len(inputs), 200):  # bounded transactions, steady memory
            await self._submit(inputs[start : start + 200])
        self.rounds += 1
        return len(inputs)

    async def run(self) -> None:
        while True:
            retry_after: float | None = None
            try:
                await self.reconcile_once()
            except RateLimited as exc:
                retry_after = exc.retry_after
            except ProviderError as exc:
                log.warning("reconciler.failed", error=str(exc))
            await _pause(self._interval, self._rng, retry_after)


def _informative(
    account: AccountState | None,
    sync_state: str | None,
    exists: bool,
    billing_state: str | None = None,
) -> bool:
    """Only observations that can move an account are recorded: the log is not a poll history."""
    flags = account.flags if account else frozenset()
    if "deleted" in flags:
        # Only an auth brings a deleted account back; the domain merely notes anything else.
        return False
    meaning = sync_state_meaning(sync_state, exists=exists, billing_state=billing_state)
    if meaning in ("deleted", "invalid", "sync_error"):
        # Once flagged, the same state every round would only repeat itself.
        return meaning not in flags
    state = account.state if account else ""
    if meaning == "stopped":
        # The stop first_auth waits for; after the second step, the provider did not move the
        # account (the domain acts once `running_grace` has passed: an early round is a note).
        return state in ("first_auth", "second_auth")
    if meaning == "running":
        # The move is done after the second step; elsewhere a running only clears the flags.
        return state == "second_auth" or any(flag in flags for flag in ("invalid", "sync_error"))
    return False
