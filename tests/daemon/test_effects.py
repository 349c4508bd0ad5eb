"""How an effect's attempt ends: the application's answers to a signed message, and missing setup.

A tiny aiohttp application on loopback answers each message as scripted; the messages it gets
are checked with the reference Standard Webhooks library, as the real application would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from daemon.domain import ReauthRequested, SyncRestartRequested
from daemon.provider.standardwebhooks import generate_secret
from daemon.runtime.effects import EffectPerformer, NotifyFailed
from daemon.runtime.outbox import OutboxItem, PermanentEffectError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

SECRET = generate_secret()
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class App:
    def __init__(self) -> None:
        self.answers: list[web.Response] = []
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return self.answers.pop(0) if self.answers else web.Response(status=204)


@pytest.fixture
async def app() -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    fake = App()
    server_app = web.Application()
    server_app.router.add_post("/hooks", fake.handle)
    server = TestServer(server_app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield fake, str(server.make_url("/hooks")), session
    await server.close()


def performer(session: aiohttp.ClientSession, url: str, **overrides: Any) -> EffectPerformer:
    async def observe(_: Any) -> None:
        return None

    options: dict[str, Any] = {
        "notify_url": url,
        "notify_secrets": lambda: [SECRET],
        "provider": None,
        "observe": observe,
    }
    return EffectPerformer(session, **{**options, **overrides})


async def no_steps(step: str, detail: str) -> None:
    raise AssertionError(f"no step expected, got {step}")


def reauth(key: str = "acc-1:reauth:1:0") -> OutboxItem:
    effect = ReauthRequested(
        occurred_at=T0, account_id="acc-1", idempotency_key=key, stage="second_step",
        due_at=T0, reminder=0, email="u@example.com",
    )  # fmt: skip
    return OutboxItem(key, "acc-1", effect)


async def test_an_accepted_message_is_signed_for_the_application_with_the_effects_key(app) -> None:
    fake, url, session = app
    detail = await performer(session, url)(reauth(), no_steps)
    assert "accepted" in detail
    [(headers, body)] = fake.received
    message = Webhook(SECRET).verify(body, headers)  # raises unless the signature is right
    assert message["type"] == "staticipd.reauth_requested"
    assert message["data"]["account_id"] == "acc-1"
    assert headers["webhook-id"] == "acc-1:reauth:1:0"  # the same on every retry


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_a_refusal_gives_up(app, status: int) -> None:
    fake, url, session = app
    fake.answers.append(web.Response(status=status))
    with pytest.raises(PermanentEffectError, match=str(status)):
        await performer(session, url)(reauth(), no_steps)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 503])
async def test_a_busy_or_failing_application_is_retried_after_the_time_it_asks(
    app, status: int
) -> None:
    fake, url, session = app
    fake.answers.append(web.Response(status=status, headers={"Retry-After": "7"}))
    with pytest.raises(NotifyFailed) as info:
        await performer(session, url)(reauth(), no_steps)
    assert info.value.retry_after == 7


async def test_without_a_notify_url_or_secret_the_message_gives_up(app) -> None:
    _, url, session = app
    with pytest.raises(PermanentEffectError, match="notify URL"):
        await performer(session, "")(reauth(), no_steps)
    with pytest.raises(PermanentEffectError, match="notify_secret"):
        await performer(session, url, notify_secrets=lambda: [])(reauth(), no_steps)


async def test_a_restart_without_the_provider_api_gives_up(app) -> None:
    _, url, session = app
    effect = SyncRestartRequested(
        occurred_at=T0, account_id="acc-1", idempotency_key="k", due_at=T0, reminder=0, reason="r"
    )
    with pytest.raises(PermanentEffectError, match="provider API is not configured"):
        await performer(session, url)(OutboxItem("k", "acc-1", effect), no_steps)
