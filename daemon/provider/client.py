"""Client of the provider's v2 management API: accounts, stop/start sync, IP lists.

Retries transient failures (5xx, timeouts, connection errors) with exponential backoff and full
jitter, honours 429 (`Retry-After`, else `X-RateLimit-Reset`), and turns everything else into
typed `ProviderError`s. The API key is only ever put in the Authorization header, never logged.
A call that changes an account (downgrade, upgrade) is repeated only when the provider surely did
not act on it (429, no connection made); after anything else the caller reads the account first
(docs/provider.md#the-management-api).
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import anyio
import msgspec
import structlog

from daemon import __version__

__all__ = [
    "API_VERSION",
    "USER_AGENT",
    "ActionAnswer",
    "AuthRejected",
    "IpList",
    "NotFound",
    "ProviderAccount",
    "ProviderClient",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "retry_after_seconds",
]

log = structlog.get_logger(__name__)

Observer = Callable[[str, int, float], None]
"""Told of each HTTP request to the API: `(operation, status or 0 for no answer, seconds)`."""

_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})

# What the official v2 SDK sends with every call that the API may act on: the API version it
# was written against, and a User-Agent naming the client (docs/provider.md#the-management-api).
API_VERSION = "2.5"
USER_AGENT = f"staticipd/{__version__}"


class ProviderError(Exception):
    """The provider refused or could not answer a request."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class RateLimited(ProviderError):
    """429 with a wait longer than the client is willing to sleep; retry after `retry_after` s."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message}; retry after {retry_after:g} s", status=429)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """Still failing (5xx, timeout, connection error) after every attempt."""


class AuthRejected(ProviderError):
    """401: the API key (client secret) was refused."""


class NotFound(ProviderError):
    """404: no such account (or endpoint)."""


class ProviderAccount(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the management API shows it; unknown states are kept as strings."""

    id: str
    account_id: str | None = None
    email: str | None = None
    provider: str | None = None
    billing_state: str | None = None
    sync_state: str | None = None
    authentication_type: str | None = None
    trial: bool | None = None
    metadata: dict[str, Any] | None = None


class IpList(msgspec.Struct, frozen=True):
    """One of the provider's IP lists and when the provider says it last changed (None: unknown)."""

    addresses: tuple[str, ...]
    updated_at: datetime | None


class _IpAddresses(msgspec.Struct):
    ip_addresses: list[str]
    # Any JSON: an odd time stamp must not cost us the addresses (see `_epoch_to_utc`).
    updated_at: Any = None


class ActionAnswer(msgspec.Struct, frozen=True):
    """A 2xx answer to downgrade or upgrade: the call was done, whatever the body says.

    `account` is the account object when the provider sent one; `note` says what was odd about
    the body (empty: nothing), for the effect's recorded detail.
    """

    status: int
    account: ProviderAccount | None = None
    note: str = ""


class _ErrorBody(msgspec.Struct):
    message: str = ""
    type: str = ""


_decode_accounts = msgspec.json.Decoder(list[ProviderAccount])
_decode_account = msgspec.json.Decoder(ProviderAccount)
_decode_ips = msgspec.json.Decoder(_IpAddresses)


def retry_after_seconds(headers: Any, now: float) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset`."""
    if value := headers.get("Retry-After"):
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    if value := headers.get("X-RateLimit-Reset"):
        try:
            reset = float(value)
        except ValueError:
            return None
        # The v2 SDK reads it as an int without saying whether it is a delay or an epoch
        # instant (docs/provider.md#the-management-api): a value past 2001-09-09 can only be an
        # instant.
        return max(0.0, reset - now) if reset > 1e9 else max(0.0, reset)
    return None


class ProviderClient:
    """The v2 management API (`/a/{client_id}/...`) over a caller-owned aiohttp session."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        api_version: Literal[2, 3] = 2,
        timeout: float = 10,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30,
        rng: random.Random | None = None,
        static_ip_path: str | None = None,
        page_size: int = 100,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.time,
        observe: Observer | None = None,
    ) -> None:
        if api_version != 2:
            # v3 has no accounts, sync jobs, downgrade or upgrade
            # (docs/provider.md#the-management-api).
            raise ValueError("the management client speaks the provider's v2 API only")
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        # HTTP Basic with the secret as user and an empty password
        # (docs/provider.md#the-management-api).
        token = base64.b64encode(f"{api_key}:".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Accept": "application/json",
            "Nylas-API-Version": API_VERSION,
            "User-Agent": USER_AGENT,
            "X-Nylas-Client-Id": client_id,
        }
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._static_ip_path = static_ip_path
        self._page_size = page_size
        self._sleep = sleep
        self._clock = clock
        self._observe = observe

    def __repr__(self) -> str:
        return f"ProviderClient({self._base!r}, client_id={self._client_id!r})"

    def _path(self, suffix: str) -> str:
        return f"/a/{self._client_id}{suffix}"

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)] (AWS architecture blog)."""
        return self._rng.uniform(0, min(self._backoff_max, self._backoff_base * 2**attempt))

    @property
    def max_attempts(self) -> int:
        """How many times one logical call is tried."""
        return self._max_attempts

    async def pause(self, attempt: int) -> None:
        """Wait the backoff before try `attempt + 1` of a call the caller repeats itself."""
        await self._sleep(self._backoff(attempt))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: dict[str, int] | None = None,
        attempts: int | None = None,
        changes_account: bool = False,
    ) -> _Answer:
        """One logical call with retries; returns a 2xx or 404 answer.

        With `changes_account`, only a 429 or a connection never made is tried again (the
        provider cannot have acted), and a 2xx whose body cannot be read is still an answer.
        """
        url = self._base + path
        reason = "no attempt made"
        attempts = attempts or self._max_attempts
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            started, status = time.perf_counter(), 0
            try:
                async with self._session.request(
                    method, url, params=params, headers=self._headers, timeout=self._timeout
                ) as response:
                    status = response.status
                    headers = response.headers
                    try:
                        body = await response.read()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        if not (changes_account and 200 <= status < 300):
                            raise
                        self._observed(operation, status, started)
                        return _Answer(status, b"", f"body unreadable ({type(exc).__name__})")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._observed(operation, status, started)
                reason = f"{type(exc).__name__}"
                if changes_account and not isinstance(exc, aiohttp.ClientConnectorError):
                    raise ProviderUnavailable(
                        f"{method} {path}: {reason}; the provider may have acted on it"
                    ) from None
                delay = self._backoff(attempt)
            else:
                self._observed(operation, status, started)
                if status < 300 or status == 404:
                    return _Answer(status, body)
                if status == 429:
                    wait = retry_after_seconds(headers, self._clock())
                    if wait is None:
                        wait = self._backoff(attempt)
                    elif wait > self._backoff_max:
                        raise RateLimited(wait)  # too long to hold a caller: let it reschedule
                    if last:
                        raise RateLimited(wait)
                    reason, delay = "HTTP 429", wait
                elif status in _RETRYABLE_STATUS and not changes_account:
                    reason, delay = f"HTTP {status}", self._backoff(attempt)
                elif status in _RETRYABLE_STATUS:
                    raise ProviderUnavailable(
                        f"{method} {path}: HTTP {status}; the provider may have acted on it",
                        status=status,
                    )
                else:
                    raise _error_for(status, body)
            if last:
                break
            log.info("provider.retry", method=method, path=path, reason=reason, attempt=attempt + 1)
            await self._sleep(delay)
        raise ProviderUnavailable(f"{method} {path} failed after {attempts} attempts: {reason}")

    def _observed(self, operation: str, status: int, started: float) -> None:
        """Tell the observer about one HTTP request: its status (0: no answer) and duration."""
        if self._observe is not None:
            self._observe(operation, status, time.perf_counter() - started)

    async def list_accounts(self) -> AsyncIterator[ProviderAccount]:
        """Every account of the application, page by page (limit/offset) until an empty page.

        A page shorter than asked for is not taken as the last: the provider may cap its pages
        (docs/provider.md#the-management-api). A page with no account not already seen ends the
        walk too, so a provider that ignores `offset` cannot keep it going for ever.
        """
        offset = 0
        seen: set[str] = set()
        while True:
            params = {"limit": self._page_size, "offset": offset}
            answer = await self._request(
                "GET", self._path("/accounts"), operation="list_accounts", params=params
            )
            if answer.status == 404:
                raise NotFound("account list endpoint not found", status=404)
            page: list[ProviderAccount] = _decode(_decode_accounts, answer.body)
            if not page:
                return
            fresh = [account for account in page if account.id not in seen]
            if not fresh:
                log.warning("provider.paging_stuck", offset=offset, page=len(page))
                return
            for account in fresh:
                seen.add(account.id)
                yield account
            offset += len(page)

    async def get_account(self, account_id: str) -> ProviderAccount | None:
        """One account, or None if the provider does not know it."""
        answer = await self._request(
            "GET", self._path(f"/accounts/{account_id}"), operation="get_account"
        )
        return None if answer.status == 404 else _decode(_decode_account, answer.body)

    async def _account_action(self, account_id: str, action: str) -> ActionAnswer:
        answer = await self._request(
            "POST",
            self._path(f"/accounts/{account_id}/{action}"),
            operation=action,
            changes_account=True,
        )
        if answer.status == 404:
            raise NotFound(f"account {account_id} not found", status=404)
        if answer.unreadable:
            return ActionAnswer(answer.status, note=answer.unreadable)
        # Any 2xx is success, whatever the body: the SDKs disagree (`{"success": true}`, the
        # account object, `{"success": "true"}` in one SDK's own tests), and an empty body is
        # possible (docs/provider.md#the-management-api). The body only adds to the detail.
        return _action_answer(answer.status, answer.body)

    async def downgrade(self, account_id: str) -> ActionAnswer:
        """Stop the account's sync (and billing); any 2xx answer means it was done."""
        return await self._account_action(account_id, "downgrade")

    async def upgrade(self, account_id: str) -> ActionAnswer:
        """Re-queue the account's sync; any 2xx answer means it was done."""
        return await self._account_action(account_id, "upgrade")

    async def ip_addresses(self, environment: Literal["dynamic", "static"]) -> IpList:
        """The dynamic list (`/a/{client_id}/ip_addresses`) or the configured static list path."""
        if environment == "dynamic":
            path = self._path("/ip_addresses")
        elif self._static_ip_path:
            path = self._static_ip_path.format(client_id=self._client_id)
        else:
            raise ProviderError("the static IP list path is not configured")
        # One attempt: the endpoint allows about 10 calls an hour, and the watcher's next poll
        # is the retry (retrying here would spend the hour's budget on one outage).
        operation = f"ip_addresses_{environment}"
        answer = await self._request("GET", path, operation=operation, attempts=1)
        if answer.status == 404:
            raise NotFound(f"{environment} IP list not found at {path}", status=404)
        decoded = _decode(_decode_ips, answer.body)
        updated_at = _epoch_to_utc(decoded.updated_at)
        if updated_at is None and decoded.updated_at is not None:
            log.warning("provider.ip_list_bad_updated_at", environment=environment)
        return IpList(tuple(decoded.ip_addresses), updated_at)


def _epoch_to_utc(value: Any) -> datetime | None:
    """Unix seconds as a UTC instant; None for anything else (garbage, bool, out of range).

    The addresses are what matters: a time stamp we cannot read becomes "unknown" rather than
    an exception that would stop the IP-list watcher, and with it the daemon.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    unreadable: str = ""  # why a 2xx body could not be read (account-changing calls only)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(f"unexpected response from the provider: {exc}") from None


def _action_answer(status: int, body: bytes) -> ActionAnswer:
    """What a 2xx answer to downgrade/upgrade said, noted rather than judged."""
    if not body.strip():
        return ActionAnswer(status, note="empty body")
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ActionAnswer(status, note="body is not JSON")
    if isinstance(raw, dict) and "id" in raw:
        try:
            return ActionAnswer(status, msgspec.convert(raw, ProviderAccount))
        except msgspec.ValidationError:
            return ActionAnswer(status, note="account object not readable")
    if isinstance(raw, dict) and raw.get("success") is True:
        return ActionAnswer(status)
    shown = msgspec.json.encode(raw)[:120].decode(errors="replace")
    return ActionAnswer(status, note=f"body {shown}")


def _error_for(status: int, body: bytes) -> ProviderError:
    try:
        error = msgspec.json.decode(body, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        error = _ErrorBody()
    message = f"HTTP {status}" + (f": {error.message}" if error.message else "")
    kind: type[ProviderError] = AuthRejected if status == 401 else ProviderError
    return kind(message, status=status, error_type=error.type)
