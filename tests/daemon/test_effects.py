"""How an effect's attempt ends: the application's answers to a signed message, and missing setup.

A tiny aiohttp application on loopback answers each message as scripted; the messages it gets
are checked with the reference Standard Webhooks library, as the real application would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from daemon.domain import ReauthRequested, SyncRestartRequested
from daemon.provider.client import ProviderClient, ProviderError, ProviderUnavailable
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


# --- sync restarts: downgrade, recorded step, upgrade, whatever happens in between ---------


class Crash(Exception):
    """The daemon dying at this point (nothing after it runs; what was recorded stays)."""


class Provider:
    """A scripted v2 provider with one account: downgrade cancels it, upgrade makes it paid."""

    def __init__(self, sync_state: str = "stopped") -> None:
        self.account = {"id": "acc-1", "billing_state": "paid", "sync_state": sync_state}
        self.calls: list[str] = []
        self.hang_after: set[str] = set()  # act, then answer too late for the client
        self.bodies: dict[str, web.Response] = {}
        self.act_then_fail: set[str] = set()  # act, then answer the scripted error anyway

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.path.rsplit("/", 1)[1]
        if request.method == "GET":
            self.calls.append("get")
            return web.json_response(self.account)
        self.calls.append(action)
        answer = self.bodies.pop(action, None) or web.json_response({"success": True})
        if answer.status < 300 or action in self.act_then_fail:  # a refusal changes nothing
            self.act_then_fail.discard(action)
            self.account["billing_state"] = "cancelled" if action == "downgrade" else "paid"
        if action in self.hang_after:
            await anyio.sleep(2)
        return answer


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, ProviderClient]]:
    fake = Provider()
    server_app = web.Application()
    server_app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(server_app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        yield fake, ProviderClient(base, "cid", "key", session, timeout=0.5, backoff_max=0.01)
    await server.close()


class Log:
    """What the log holds of one restart effect: the steps recorded as done."""

    def __init__(self, crash_after_step: bool = False, crash_before_step: bool = False) -> None:
        self.steps: list[tuple[str, str]] = []
        self.crash_after_step = crash_after_step
        self.crash_before_step = crash_before_step

    async def progress(self, step: str, detail: str) -> None:
        if self.crash_before_step:
            self.crash_before_step = False
            raise Crash("died before the step was recorded")
        self.steps.append((step, detail))
        if self.crash_after_step:
            self.crash_after_step = False
            raise Crash("died right after the step was recorded")

    def item(self) -> OutboxItem:
        effect = SyncRestartRequested(
            occurred_at=T0, account_id="acc-1", idempotency_key="acc-1:restart:1:0",
            due_at=T0, reminder=0, reason="r",
        )  # fmt: skip
        steps = tuple(step for step, _ in self.steps)
        return OutboxItem(effect.idempotency_key, "acc-1", effect, steps=steps)


async def attempt(provider: ProviderClient, log: Log) -> str:
    async with aiohttp.ClientSession() as session:
        perform = performer(session, "", provider=provider)
        return await perform(log.item(), log.progress)


async def test_a_restart_downgrades_records_the_step_then_upgrades(provider) -> None:
    """A restart reads the account, downgrades, records the downgrade, then upgrades."""
    fake, client = provider
    log = Log()
    detail = await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "upgrade"]
    assert [step for step, _ in log.steps] == ["downgraded"]
    assert "upgrade answered 200" in detail
    assert fake.account["billing_state"] == "paid"


async def test_a_crash_before_the_downgrade_starts_afresh(provider) -> None:
    """Nothing done before the crash: the next attempt restarts the account once."""
    fake, client = provider
    log = Log()
    fake.calls.clear()  # the attempt that died had called nothing
    await attempt(client, log)
    assert fake.calls.count("downgrade") == 1
    assert fake.calls.count("upgrade") == 1


async def test_a_crash_after_the_downgrade_answered_but_before_it_was_recorded(provider) -> None:
    """The next attempt sees the account cancelled, records the downgrade and only upgrades."""
    fake, client = provider
    log = Log(crash_before_step=True)
    with pytest.raises(Crash):
        await attempt(client, log)
    assert log.steps == []
    detail = await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "get", "upgrade"]
    assert log.steps == [("downgraded", "the provider shows the account cancelled: downgraded")]
    assert "started" in detail


async def test_a_crash_after_the_downgrade_was_recorded_goes_on_with_the_upgrade(provider) -> None:
    """A recorded downgrade is never repeated: the next attempt checks and upgrades."""
    fake, client = provider
    log = Log(crash_after_step=True)
    with pytest.raises(Crash):
        await attempt(client, log)
    await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "get", "upgrade"]
    assert [step for step, _ in log.steps] == ["downgraded"]
    assert fake.account["billing_state"] == "paid"


async def test_a_crash_after_the_upgrade_answered_succeeds_without_calling_again(provider) -> None:
    """The upgrade was done but its success not recorded: the next attempt sees it and stops."""
    fake, client = provider
    log = Log()
    await attempt(client, log)  # its success is lost with the crash; the step was recorded
    detail = await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "upgrade", "get"]
    assert detail.startswith("upgraded before")


async def test_a_downgrade_that_timed_out_is_checked_not_repeated(provider) -> None:
    """A downgrade the provider did but answered too late: the retry reads the account, records
    the downgrade and upgrades, without a second downgrade."""
    fake, client = provider
    fake.hang_after.add("downgrade")
    log = Log()
    with pytest.raises(ProviderUnavailable, match="may have acted"):
        await attempt(client, log)
    assert log.steps == []
    await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "get", "upgrade"]
    assert [step for step, _ in log.steps] == ["downgraded"]


async def test_a_failed_upgrade_is_retried_without_downgrading_again(provider) -> None:
    """An upgrade that failed after a recorded downgrade is tried again on its own."""
    fake, client = provider
    fake.bodies["upgrade"] = web.json_response({"message": "busy", "type": "x"}, status=409)
    log = Log()
    with pytest.raises(ProviderError):
        await attempt(client, log)
    await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "upgrade", "get", "upgrade"]
    assert fake.account["billing_state"] == "paid"


async def test_an_account_already_running_is_not_restarted(provider) -> None:
    """The provider shows the account running: no downgrade, the effect succeeds saying so."""
    fake, client = provider
    fake.account["sync_state"] = "running"
    log = Log()
    detail = await attempt(client, log)
    assert fake.calls == ["get"]
    assert log.steps == []
    assert "running; not restarted" in detail


@pytest.mark.parametrize(
    "body",
    [
        web.json_response({"success": "true"}),
        web.json_response({"success": True, "extra": {"x": 1}}),
        web.Response(status=200),
        web.Response(status=200, text="not json"),
    ],
    ids=["success-string", "extra-fields", "empty", "not-json"],
)
async def test_any_2xx_downgrade_answer_lets_the_restart_go_on(provider, body) -> None:
    """Whatever a 2xx downgrade answer's body, the step is recorded and the upgrade follows."""
    fake, client = provider
    fake.bodies["downgrade"] = body
    log = Log()
    await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "upgrade"]
    assert [step for step, _ in log.steps] == ["downgraded"]


async def test_a_5xx_without_the_action_done_is_called_again_in_the_same_attempt(provider) -> None:
    """A downgrade answered 503 and not done: the account shows it, so it is sent again."""
    fake, client = provider
    fake.bodies["downgrade"] = web.Response(status=503)
    log = Log()
    await attempt(client, log)
    assert fake.calls == ["get", "downgrade", "get", "downgrade", "upgrade"]
    assert [step for step, _ in log.steps] == ["downgraded"]


@pytest.mark.parametrize("action", ["downgrade", "upgrade"])
async def test_a_5xx_after_the_action_was_done_is_not_repeated(provider, action: str) -> None:
    """A call the provider did but answered 500: the account shows it done, so it is not sent
    again and the restart goes on."""
    fake, client = provider
    fake.bodies[action] = web.Response(status=500)
    fake.act_then_fail.add(action)
    log = Log()
    detail = await attempt(client, log)
    assert fake.calls.count("downgrade") == 1
    assert fake.calls.count("upgrade") == 1
    assert [step for step, _ in log.steps] == ["downgraded"]
    said = detail if action == "upgrade" else log.steps[0][1]
    assert said.endswith(f"{action} answered 500, but the provider shows it done")
