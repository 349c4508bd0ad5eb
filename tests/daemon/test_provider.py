"""The provider management-API client against a tiny scripted aiohttp server."""

from __future__ import annotations

import base64
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from daemon import __version__
from daemon.provider.client import (
    AuthRejected,
    NotFound,
    ProviderAccount,
    ProviderClient,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

API_KEY = "super-secret-client-secret"
CID = "cid"


def account(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"acc{i}",
        "account_id": f"acc{i}",
        "email": f"u{i}@example.com",
        "provider": "gmail",
        "billing_state": "paid",
        "sync_state": "running",
        "authentication_type": "oauth",
        "trial": False,
        "metadata": {},
        "namespace_id": f"acc{i}",
        **extra,
    }


class FakeProvider:
    """Answers each path from a queue of scripted responses, then from a default."""

    def __init__(self) -> None:
        self.script: dict[str, list[web.StreamResponse]] = defaultdict(list)
        self.default: dict[str, Any] = {}
        self.requests: list[web.Request] = []
        self.accounts = [account(i) for i in range(5)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        queue = self.script[request.path]
        if queue:
            return queue.pop(0)
        if (
            request.headers.get("Authorization")
            != "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()
        ):
            return web.json_response({"message": "bad key", "type": "api_error"}, status=401)
        if request.path == f"/a/{CID}/accounts":
            limit, offset = int(request.query["limit"]), int(request.query["offset"])
            return web.json_response(self.accounts[offset : offset + limit])
        if request.path in self.default:
            return web.json_response(self.default[request.path])
        return web.json_response({"message": "no such thing", "type": "not_found"}, status=404)


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[tuple[FakeProvider, str]]:
    provider = FakeProvider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield provider, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def session(anyio_backend: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(url: str, session: aiohttp.ClientSession, **kw: Any) -> ProviderClient:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_max", 0.01)
    return ProviderClient(url, CID, kw.pop("api_key", API_KEY), session, rng=random.Random(1), **kw)


async def test_list_accounts_pages_through_everything(fake, session) -> None:
    """All accounts are listed across limit/offset pages, and paging stops at an empty page."""
    provider, url = fake
    accounts = [a async for a in client(url, session, page_size=2).list_accounts()]
    assert [a.id for a in accounts] == [f"acc{i}" for i in range(5)]
    assert accounts[0] == ProviderAccount(
        **{k: v for k, v in account(0).items() if k != "namespace_id"}
    )
    assert accounts[0].sync_state == "running"
    offsets = [r.query["offset"] for r in provider.requests]
    assert offsets == ["0", "2", "4", "5"]


async def test_a_short_page_is_not_taken_as_the_last(fake, session) -> None:
    """A provider that caps its pages below the size asked for still has every account listed."""
    provider, url = fake
    provider.accounts = [account(i) for i in range(7)]
    capped = [web.json_response(provider.accounts[i : i + 3]) for i in (0, 3, 6)]
    provider.script[f"/a/{CID}/accounts"] = [*capped, web.json_response([])]
    accounts = [a async for a in client(url, session, page_size=100).list_accounts()]
    assert [a.id for a in accounts] == [f"acc{i}" for i in range(7)]
    assert [r.query["offset"] for r in provider.requests] == ["0", "3", "6", "7"]


async def test_a_provider_ignoring_the_offset_cannot_keep_paging_for_ever(fake, session) -> None:
    """If every page repeats accounts already seen, the listing ends instead of looping."""
    provider, url = fake
    same = [web.json_response(provider.accounts[:2]) for _ in range(3)]
    provider.script[f"/a/{CID}/accounts"] = same
    with capture_logs() as logs:
        accounts = [a async for a in client(url, session, page_size=2).list_accounts()]
    assert [a.id for a in accounts] == ["acc0", "acc1"]
    assert len(provider.requests) == 2
    assert [e["event"] for e in logs] == ["provider.paging_stuck"]


async def test_requests_send_the_sdks_api_version_and_name_staticipd(fake, session) -> None:
    """Every call carries the v2 SDK's API-version and client-id headers and a User-Agent
    naming staticipd and its version."""
    provider, url = fake
    c = client(url, session)
    await c.get_account("acc1")
    [a async for a in c.list_accounts()]
    provider.default[f"/a/{CID}/accounts/acc1/upgrade"] = {"success": True}
    await c.upgrade("acc1")
    for request in provider.requests:
        assert request.headers["Nylas-API-Version"] == "2.5"
        assert request.headers["X-Nylas-Client-Id"] == CID
        assert request.headers["User-Agent"] == f"staticipd/{__version__}"


async def test_requests_use_basic_auth_with_empty_password(fake, session) -> None:
    """Every call authenticates as the secret with an empty password, as the provider expects."""
    provider, url = fake
    await client(url, session).get_account("acc1")
    header = provider.requests[0].headers["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"{API_KEY}:"


async def test_get_account_known_and_unknown(fake, session) -> None:
    """A known account is returned typed (unknown states kept); an unknown one is None."""
    provider, url = fake
    provider.default[f"/a/{CID}/accounts/acc1"] = account(1, sync_state="teleporting", x=1)
    c = client(url, session)
    got = await c.get_account("acc1")
    assert got is not None
    assert got.sync_state == "teleporting"
    assert got.email == "u1@example.com"
    assert await c.get_account("nobody") is None


@pytest.mark.parametrize(
    ("answer", "note"),
    [
        ({"success": True}, ""),
        ({"success": "true"}, 'body {"success":"true"}'),
        ({"success": True, "request_id": "r-1", "account_id": "acc1"}, ""),
        (account(1, billing_state="cancelled"), ""),
        ({"success": False}, 'body {"success":false}'),
        ([], "body []"),
    ],
    ids=["success-true", "success-string", "extra-fields", "account-object", "false", "list"],
)
async def test_any_2xx_answer_to_an_action_is_success(fake, session, answer, note) -> None:
    """Downgrade succeeds on any 2xx, whatever the JSON body says; what is odd is noted."""
    provider, url = fake
    provider.default[f"/a/{CID}/accounts/acc1/downgrade"] = answer
    result = await client(url, session).downgrade("acc1")
    assert result.status == 200
    assert result.note == note
    assert (result.account is not None) == ("id" in answer)


@pytest.mark.parametrize(
    ("response", "note"),
    [
        (web.Response(status=200), "empty body"),
        (web.Response(status=204), "empty body"),
        (web.Response(status=200, text="OK"), "body is not JSON"),
        (web.Response(status=202, text="<html>accepted</html>"), "body is not JSON"),
    ],
    ids=["empty-200", "no-content", "plain-text", "html"],
)
async def test_an_action_answer_without_json_is_still_success(
    fake, session, response, note
) -> None:
    """An empty or non-JSON 2xx body to upgrade is success, the oddity noted, called once."""
    provider, url = fake
    provider.script[f"/a/{CID}/accounts/acc1/upgrade"] = [response]
    result = await client(url, session).upgrade("acc1")
    assert result.note == note
    assert len(provider.requests) == 1


async def test_an_unreadable_body_after_2xx_is_noted_not_a_failure(session) -> None:
    """A 2xx whose body breaks off mid-way still counts as done, with the breakage noted."""

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 100
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"succ')
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/a/cid/accounts/acc1/downgrade", truncated)
    async with TestServer(app, host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        result = await client(base, session).downgrade("acc1")
    assert result.status == 200
    assert result.note.startswith("body unreadable")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_an_action_the_provider_may_have_done_is_not_repeated(fake, session, status) -> None:
    """A 5xx to downgrade raises at once: repeating it blindly could downgrade twice."""
    provider, url = fake
    provider.script[f"/a/{CID}/accounts/acc1/downgrade"] = [web.Response(status=status)]
    with pytest.raises(ProviderUnavailable, match="may have acted"):
        await client(url, session).downgrade("acc1")
    assert len(provider.requests) == 1


async def test_an_action_that_timed_out_is_not_repeated(fake, session) -> None:
    """A downgrade without an answer in time is not sent again by the client."""
    provider, url = fake

    class Slow(web.Response):
        async def prepare(self, request):  # type: ignore[override]
            await anyio.sleep(1)
            return await super().prepare(request)

    provider.script[f"/a/{CID}/accounts/acc1/downgrade"] = [Slow(status=200)]
    with pytest.raises(ProviderUnavailable, match="may have acted"):
        await client(url, session, timeout=0.2).downgrade("acc1")
    assert len(provider.requests) == 1


async def test_a_rate_limited_action_is_retried(fake, session) -> None:
    """A 429 to upgrade was not acted on, so the client waits and sends it again."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1/upgrade"
    provider.script[path] = [web.Response(status=429, headers={"Retry-After": "0"})]
    provider.default[path] = {"success": True}
    result = await client(url, session).upgrade("acc1")
    assert result.status == 200
    assert len(provider.requests) == 2


async def test_action_on_unknown_account_is_not_found(fake, session) -> None:
    """Stopping an account the provider does not know raises NotFound."""
    _, url = fake
    with pytest.raises(NotFound):
        await client(url, session).downgrade("nobody")


async def test_dynamic_and_static_ip_lists(fake, session) -> None:
    """The dynamic list comes from the documented path; the static one from the configured path."""
    provider, url = fake
    provider.default[f"/a/{CID}/ip_addresses"] = {"ip_addresses": ["1.2.3.4"], "updated_at": 10}
    provider.default[f"/a/{CID}/static"] = {"ip_addresses": ["5.6.7.8", "::1"], "updated_at": 20}
    c = client(url, session, static_ip_path="/a/{client_id}/static")
    dynamic = await c.ip_addresses("dynamic")
    static = await c.ip_addresses("static")
    assert dynamic.addresses == ("1.2.3.4",)
    assert dynamic.updated_at == datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert static.addresses == ("5.6.7.8", "::1")


@pytest.mark.parametrize("updated_at", [10**20, -(10**20), 1e300, "soon", True, None])
async def test_unreadable_ip_list_time_is_unknown_not_a_crash(fake, session, updated_at) -> None:
    """A garbage or out-of-range `updated_at` still yields the addresses, with an unknown time."""
    provider, url = fake
    body = {"ip_addresses": ["1.2.3.4"], "updated_at": updated_at}
    provider.default[f"/a/{CID}/ip_addresses"] = body
    ip_list = await client(url, session).ip_addresses("dynamic")
    assert ip_list.addresses == ("1.2.3.4",)
    assert ip_list.updated_at is None


async def test_ip_list_without_addresses_is_a_provider_error(fake, session) -> None:
    """A list answer whose addresses are missing is a ProviderError the watcher can log."""
    provider, url = fake
    provider.default[f"/a/{CID}/ip_addresses"] = {"updated_at": 10}
    with pytest.raises(ProviderError, match="unexpected response"):
        await client(url, session).ip_addresses("dynamic")


async def test_static_ip_list_without_configured_path_is_an_error(fake, session) -> None:
    """Asking for the static list when its path is not configured fails clearly, offline."""
    provider, url = fake
    with pytest.raises(ProviderError, match="not configured"):
        await client(url, session).ip_addresses("static")
    assert provider.requests == []


async def test_an_ip_list_fetch_is_tried_once(fake, session) -> None:
    """The IP endpoint allows about 10 calls an hour: a failed poll is not retried at once."""
    provider, url = fake
    path = f"/a/{CID}/ip_addresses"
    provider.script[path] = [web.Response(status=503)]
    provider.default[path] = {"ip_addresses": ["1.2.3.4"], "updated_at": 10}
    with pytest.raises(ProviderUnavailable):
        await client(url, session).ip_addresses("dynamic")
    assert len(provider.requests) == 1


async def test_server_errors_are_retried_then_succeed(fake, session) -> None:
    """Transient 5xx answers are retried with backoff until the call succeeds."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [web.Response(status=503), web.Response(status=502)]
    provider.default[path] = account(1)
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    got = await client(url, session, sleep=sleep).get_account("acc1")
    assert got is not None
    assert len(provider.requests) == 3
    assert len(delays) == 2
    assert all(0 <= d <= 0.01 for d in delays)


async def test_every_request_is_reported_with_its_operation_and_status(fake, session) -> None:
    """The observer hears each HTTP request (retries too) by operation and status, 0 for none."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [web.Response(status=503)]
    provider.default[path] = account(1)
    provider.default[f"{path}/upgrade"] = {"success": True}
    provider.default[f"/a/{CID}/ip_addresses"] = {"ip_addresses": ["1.2.3.4"], "updated_at": 10}
    heard: list[tuple[str, int]] = []

    def observe(operation: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        heard.append((operation, status))

    provider_client = client(url, session, observe=observe)
    assert await provider_client.get_account("acc1") is not None
    await provider_client.upgrade("acc1")
    await provider_client.ip_addresses("dynamic")
    assert heard == [
        ("get_account", 503),
        ("get_account", 200),
        ("upgrade", 200),
        ("ip_addresses_dynamic", 200),
    ]
    closed = client("http://127.0.0.1:9", session, observe=observe, max_attempts=1)
    with pytest.raises(ProviderUnavailable):
        await closed.get_account("acc1")
    assert heard[-1] == ("get_account", 0)


async def test_persistent_server_errors_give_up_as_unavailable(fake, session) -> None:
    """After the maximum attempts of 5xx answers the call raises ProviderUnavailable."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [web.Response(status=500) for _ in range(3)]
    with pytest.raises(ProviderUnavailable, match="3 attempts"):
        await client(url, session, max_attempts=3).get_account("acc1")
    assert len(provider.requests) == 3


async def test_connection_refused_is_unavailable(session) -> None:
    """A provider that cannot be reached at all ends in ProviderUnavailable, not a raw error."""
    with pytest.raises(ProviderUnavailable, match="Client"):
        await client("http://127.0.0.1:9", session, max_attempts=2).get_account("acc1")


async def test_timeout_is_retried(fake, session) -> None:
    """A request that does not answer within the timeout counts as a failed attempt."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"

    class Slow(web.Response):
        async def prepare(self, request):  # type: ignore[override]
            await anyio.sleep(1)
            return await super().prepare(request)

    provider.script[path] = [Slow(status=200)]
    provider.default[path] = account(1)
    got = await client(url, session, timeout=0.2).get_account("acc1")
    assert got is not None
    assert len(provider.requests) == 2


async def test_429_honours_retry_after(fake, session) -> None:
    """A 429 with Retry-After waits exactly that long before retrying."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [web.Response(status=429, headers={"Retry-After": "2"})]
    provider.default[path] = account(1)
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    await client(url, session, sleep=sleep, backoff_max=30).get_account("acc1")
    assert delays == [2.0]


async def test_429_falls_back_to_rate_limit_reset(fake, session) -> None:
    """Without Retry-After the v2 X-RateLimit-Reset header (epoch or delay) sets the wait."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [
        web.Response(status=429, headers={"X-RateLimit-Reset": "1700000005"}),
        web.Response(status=429, headers={"X-RateLimit-Reset": "3"}),
    ]
    provider.default[path] = account(1)
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    c = client(url, session, sleep=sleep, backoff_max=30, clock=lambda: 1700000000.0)
    await c.get_account("acc1")
    assert delays == [5.0, 3.0]


async def test_long_rate_limit_is_raised_for_the_caller_to_reschedule(fake, session) -> None:
    """A 429 asking for a longer wait than the backoff cap raises RateLimited at once."""
    provider, url = fake
    path = f"/a/{CID}/ip_addresses"
    provider.script[path] = [web.Response(status=429, headers={"Retry-After": "3600"})]
    with pytest.raises(RateLimited) as info:
        await client(url, session).ip_addresses("dynamic")
    assert info.value.retry_after == 3600
    assert len(provider.requests) == 1


async def test_bad_key_is_auth_rejected_and_not_retried(fake, session) -> None:
    """A refused API key raises AuthRejected after one request, with the provider's message."""
    provider, url = fake
    with pytest.raises(AuthRejected, match="bad key") as info:
        await client(url, session, api_key="wrong-key").get_account("acc1")
    assert info.value.status == 401
    assert len(provider.requests) == 1


async def test_other_client_errors_are_not_retried(fake, session) -> None:
    """A 403 (e.g. a stopped account) is raised with its type, not retried."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1/upgrade"
    body = {"message": "sync has been stopped", "type": "invalid_request_error"}
    provider.script[path] = [web.json_response(body, status=403)]
    with pytest.raises(ProviderError) as info:
        await client(url, session).upgrade("acc1")
    assert info.value.status == 403
    assert info.value.error_type == "invalid_request_error"
    assert len(provider.requests) == 1


async def test_garbage_response_is_a_provider_error(fake, session) -> None:
    """An answer that is not the documented JSON raises ProviderError, not a decode crash."""
    provider, url = fake
    provider.script[f"/a/{CID}/ip_addresses"] = [web.Response(text="<html>oops</html>")]
    with pytest.raises(ProviderError, match="unexpected response"):
        await client(url, session).ip_addresses("dynamic")


async def test_the_key_never_reaches_logs_or_errors(fake, session) -> None:
    """Retries are logged and errors raised without the API key or its Basic-auth form."""
    provider, url = fake
    path = f"/a/{CID}/accounts/acc1"
    provider.script[path] = [web.Response(status=500) for _ in range(2)]
    c = client(url, session, max_attempts=2)
    with capture_logs() as logs, pytest.raises(ProviderUnavailable) as info:
        await c.get_account("acc1")
    encoded = base64.b64encode(f"{API_KEY}:".encode()).decode()
    text = repr(logs) + str(info.value) + repr(info.value) + repr(c)
    assert logs, "the retry should have been logged"
    assert API_KEY not in text
    assert encoded not in text


def test_v3_is_refused_up_front() -> None:
    """Constructing a management client for API v3 fails: v3 has no stop/start of sync."""
    with pytest.raises(ValueError, match="v2"):
        ProviderClient("http://x", CID, API_KEY, None, api_version=3)  # type: ignore[arg-type]
