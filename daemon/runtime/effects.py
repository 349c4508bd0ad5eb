"""How each recorded effect is performed: a signed message to the application, or a provider call.

`notify`: POST a JSON message to the application's configured URL, signed with the Standard
Webhooks scheme so any Standard Webhooks library verifies it. It is signed at send time (their
receivers reject timestamps more than 5 minutes off) and keeps the same `webhook-id` (the
effect's idempotency key) on every retry, so the application can drop repeats.
`restart`: stop then start the account's sync through the provider API, downgrade then upgrade.
The downgrade's success is recorded as its own step before the upgrade, so a later attempt (after
a failure, a crash or a restart of the daemon) goes on with the upgrade and never downgrades
twice; an attempt that does not know what happened before reads the account first
(docs/provider.md#restarting-sync).
A provider check looks the account up and records what it saw as a reconciler observation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal

import aiohttp
import msgspec

from daemon.clock import utc_now
from daemon.domain import (
    AccountObserved,
    AppNotified,
    ProviderCheckRequested,
    ReauthRequested,
    SyncRestartRequested,
)
from daemon.provider import standardwebhooks
from daemon.provider.client import (
    ActionAnswer,
    AuthRejected,
    NotFound,
    ProviderAccount,
    ProviderClient,
    ProviderUnavailable,
    retry_after_seconds,
)
from daemon.runtime.outbox import OutboxItem, PermanentEffectError, Progress

REAUTH_MESSAGE = "staticipd.reauth_requested"

DOWNGRADED = "downgraded"
"""The step a sync restart records once the provider has stopped the account's sync."""

# 4xx answers that may succeed later (timeout, conflict, too early, rate limit); others are final.
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


class NotifyFailed(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


Observe = Callable[[AccountObserved], Awaitable[Any]]


class EffectPerformer:
    """The outbox's `perform`: dispatches on the effect's type."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        notify_url: str,
        notify_secrets: Callable[[], Sequence[str]],
        provider: ProviderClient | None,
        observe: Observe,
        notify_timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._session = session
        self._notify_url = notify_url
        self._notify_secrets = notify_secrets  # a callable: secrets reload on SIGHUP
        self._provider = provider
        self._observe = observe
        self._timeout = aiohttp.ClientTimeout(total=notify_timeout)
        self._clock = clock

    async def __call__(self, pending: OutboxItem, progress: Progress) -> str:
        effect = pending.effect
        match effect:
            case ReauthRequested():
                return await self._notify(
                    effect.idempotency_key,
                    REAUTH_MESSAGE,
                    {
                        "account_id": effect.account_id,
                        "email": effect.email,
                        "stage": effect.stage,
                        "due_at": effect.due_at.isoformat(),
                        "reminder": effect.reminder,
                        "reason": effect.reason,
                    },
                )
            case AppNotified():
                return await self._notify(
                    effect.idempotency_key,
                    f"staticipd.{effect.topic}",
                    {"account_id": effect.account_id, "detail": effect.detail},
                )
            case SyncRestartRequested():
                provider = self._require_provider()
                try:
                    return await _restart(provider, pending, progress)
                except (NotFound, AuthRejected) as exc:
                    raise PermanentEffectError(f"provider refused the restart: {exc}") from exc
            case ProviderCheckRequested():
                provider = self._require_provider()
                account = await provider.get_account(effect.account_id)
                await self._observe(
                    AccountObserved(
                        input_id=f"{effect.idempotency_key}:observed",
                        account_id=effect.account_id,
                        sync_state=account.sync_state if account else None,
                        billing_state=account.billing_state if account else None,
                        exists=account is not None,
                        observed_at=self._clock(),
                    )
                )
                state = account.sync_state if account else "absent"
                return f"provider reports sync_state={state}"
        raise PermanentEffectError(f"no way to perform {type(effect).__name__}")

    def _require_provider(self) -> ProviderClient:
        if self._provider is None:
            raise PermanentEffectError("the provider API is not configured (provider_api_key)")
        return self._provider

    async def _notify(self, msg_id: str, msg_type: str, data: dict[str, Any]) -> str:
        if not self._notify_url:
            raise PermanentEffectError("the application's notify URL is not configured")
        secrets = list(self._notify_secrets())
        if not secrets:
            raise PermanentEffectError("no notify_secret configured to sign the message")
        body = msgspec.json.encode({"type": msg_type, "data": data})
        # Signed now, with the real time: receivers refuse timestamps 5 minutes off.
        headers = standardwebhooks.sign(secrets, msg_id, int(time.time()), body)
        headers["Content-Type"] = "application/json"
        try:
            async with self._session.post(
                self._notify_url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                retry_after = retry_after_seconds(resp.headers, time.time())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyFailed(f"application unreachable: {type(exc).__name__}") from exc
        if 200 <= status < 300:
            return f"application accepted the message ({status})"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentEffectError(f"application refused the message ({status})")
        raise NotifyFailed(f"application answered {status}", retry_after)


async def _restart(provider: ProviderClient, pending: OutboxItem, progress: Progress) -> str:
    """Downgrade then upgrade, resuming after the last recorded step.

    Without a recorded downgrade, any earlier attempt may have been cut short after the provider
    acted (a timeout, a crash before the answer was recorded), so the account is read first: a
    cancelled account was downgraded already; a running one is not restarted at all. With a
    recorded downgrade and an earlier attempt, the account is read before the upgrade: no longer
    cancelled means the upgrade was done.
    """
    account_id = pending.account_id
    if DOWNGRADED not in pending.steps:
        account = await _look_up(provider, account_id)
        if _cancelled(account):
            await progress(DOWNGRADED, "the provider shows the account cancelled: downgraded")
        elif account.sync_state == "running":
            return "the provider shows the account running; not restarted"
        else:
            said = await _act(provider, account_id, "downgrade", done=_cancelled)
            await progress(DOWNGRADED, said)
    else:
        account = await _look_up(provider, account_id)
        if not _cancelled(account):
            return (
                f"upgraded before: the provider shows billing_state={account.billing_state}, "
                f"sync_state={account.sync_state}"
            )
    said = await _act(provider, account_id, "upgrade", done=lambda a: not _cancelled(a))
    return "sync stopped and started at the provider; " + said


async def _act(
    provider: ProviderClient,
    account_id: str,
    action: Literal["downgrade", "upgrade"],
    done: Callable[[ProviderAccount], bool],
) -> str:
    """Downgrade or upgrade; after a 5xx answer, read the account before calling again.

    A 5xx means the provider has finished with the request but may have acted on it: the
    account says whether it did (`done`), and the call is repeated only if it did not. A
    timeout or a dropped connection ends the attempt instead (the provider may still be at
    work); the next attempt reads the account first.
    """
    call = provider.downgrade if action == "downgrade" else provider.upgrade
    for attempt in range(provider.max_attempts):
        try:
            return _said(action, await call(account_id))
        except ProviderUnavailable as exc:
            if exc.status is None or attempt + 1 == provider.max_attempts:
                raise
            failed = exc.status
        await provider.pause(attempt)
        if done(await _look_up(provider, account_id)):
            return f"{action} answered {failed}, but the provider shows it done"
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _look_up(provider: ProviderClient, account_id: str) -> ProviderAccount:
    account = await provider.get_account(account_id)
    if account is None:
        raise NotFound(f"account {account_id} not found", status=404)
    return account


def _cancelled(account: ProviderAccount) -> bool:
    # A downgrade cancels billing; an upgrade makes it paid again
    # (docs/provider.md#the-management-api).
    return account.billing_state == "cancelled"


def _said(action: str, answer: ActionAnswer) -> str:
    return f"{action} answered {answer.status}" + (f" ({answer.note})" if answer.note else "")
