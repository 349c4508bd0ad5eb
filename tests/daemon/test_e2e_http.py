"""End-to-end tests of the daemon's HTTP listener: real server on 127.0.0.1, real SQLite, real HMAC.

Each test talks to a `Daemon` started in-process (see `conftest.py`) and checks what the sender
sees (status, body, headers) and what the log holds afterwards, read with a fresh connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from eventstore import StorageUnavailable, WriterBusy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

V2 = Callable[..., bytes]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def no_stack_trace(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text and ".py" not in text


async def enable_and_enroll(d: Any, account_ids: list[str], policy: str = "notify") -> None:
    status, _ = await d.operator("POST", "/v1/migration/enable", {"reason": "test"})
    assert status == 200
    status, body = await d.operator(
        "POST", "/v1/enrollments", {"account_ids": account_ids, "wave": "w1", "policy": policy}
    )
    assert status == 201, body


# --- invariant 1: acknowledged => durable -----------------------------------------------------


async def test_webhook_acknowledged_only_after_its_events_are_in_the_log(running, v2: V2) -> None:
    """A 200 for a webhook means its event can already be read back from the database file."""
    body = v2("acc-1", "account.running")
    resp = await running.post_webhook(body)
    assert resp.status == 200
    recorded = running.setup.events_of("ProviderNotificationRecorded", "account-acc-1")
    assert [e["data"]["trigger"] for e in recorded] == ["account.running"]
    assert (await resp.json()) == {"recorded": 1, "duplicates": 0}


async def test_all_deltas_of_one_delivery_are_recorded(running, v2: V2) -> None:
    """A v2 delivery with several deltas is answered once every delta is recorded."""
    deltas = [
        json.loads(v2(account, trigger))["deltas"][0]
        for account, trigger in (("acc-a", "account.running"), ("acc-b", "account.invalid"))
    ]
    body = json.dumps({"deltas": deltas}).encode()
    resp = await running.post_webhook(body)
    assert resp.status == 200
    streams = {e["stream"] for e in running.setup.events_of("ProviderNotificationRecorded")}
    assert streams == {"account-acc-a", "account-acc-b"}


# --- invariant 5: duplicates recorded once --------------------------------------------------------


async def test_redelivered_v2_webhook_is_acknowledged_and_recorded_once(running, v2: V2) -> None:
    """The same v2 delta delivered three times is answered 200 each time and recorded once."""
    body = v2("acc-dup", "account.stopped", date=1_717_430_400)
    answers = [await running.post_webhook(body) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert [(await a.json())["duplicates"] for a in answers] == [0, 1, 1]
    # A retry with other spacing and key order is the same delta (canonical digest).
    delta = json.loads(body)["deltas"][0]
    respaced = json.dumps({"deltas": [dict(reversed(list(delta.items())))]}, indent=2).encode()
    assert (await running.post_webhook(respaced)).status == 200
    assert len(running.setup.events_of("ProviderNotificationRecorded", "account-acc-dup")) == 1


async def test_redelivered_v3_notification_with_same_id_is_recorded_once(running, v3) -> None:
    """A v3 notification redelivered with the same `id` is answered 200 and recorded once."""
    first = await running.post_webhook(v3("evt-1", "grant-1"))
    again = await running.post_webhook(v3("evt-1", "grant-1"))
    assert (first.status, again.status) == (200, 200)
    assert len(running.setup.events_of("ProviderNotificationRecorded", "account-grant-1")) == 1


async def test_auth_event_with_same_event_id_is_recorded_once(running) -> None:
    """An auth event sent twice with the same `event_id` is recorded once; the retry says so."""
    body = {"account_id": "acc-9", "occurred_at": iso(datetime.now(UTC)), "event_id": "e-1"}
    first = await running.auth_event(body)
    second = await running.auth_event(body)
    assert (first[0], second[0]) == (200, 200)
    assert (first[1]["duplicate"], second[1]["duplicate"]) == (False, True)
    assert len(running.setup.events_of("AuthRecorded", "account-acc-9")) == 1


# --- invariant 7: bad input gets a clear error and changes nothing -------------------------------


async def test_wrong_or_missing_signature_is_401_and_appends_nothing(running, v2: V2) -> None:
    """Unsigned, wrongly signed and other-key-signed webhooks are refused with 401."""
    body = v2("acc-x", "account.running")
    missing = await running.post_webhook(body, signed=False)
    wrong = await running.post_webhook(body, "0" * 64)
    other_key = await running.post_webhook(body, running.setup.sign(body, "not-the-secret"))
    truncated = await running.post_webhook(body, running.setup.sign(body)[:-2])
    for resp in (missing, wrong, other_key, truncated):
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "bad_signature"
    assert running.setup.events() == []


async def test_undecodable_bytes_with_a_bad_signature_are_401_not_400(running) -> None:
    """Garbage that is not even UTF-8 gets 401 when unsigned: the signature is checked first."""
    garbage = b"\xff\xfe\x00not json at all\x80"
    resp = await running.post_webhook(garbage, "ab" * 32)
    assert resp.status == 401
    assert running.setup.events() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "$"),
        (b"\xff\xfe garbage", "$"),
        (b'{"deltas": [{"date": "yesterday", "object": "account", "type": "account.running",'
         b' "object_data": {"account_id": "a"}}]}', "$.deltas[0].date"),
        (b'{"deltas": [{"date": 1, "object": "account", "type": "account.running",'
         b' "object_data": {}}]}', "$.deltas[0].object_data.account_id"),
        (b'{"hello": "world"}', "$"),
    ],
)  # fmt: skip
async def test_signed_malformed_body_is_400_naming_the_field_and_quarantined_once(
    running, body: bytes, field: str
) -> None:
    """A correctly signed unreadable body is 400 with the field, kept once however redelivered."""
    answers = [await running.post_webhook(body) for _ in range(3)]
    for resp in answers:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["field"] == field
        assert error["message"]
        assert no_stack_trace(json.dumps(error))
    quarantined = running.setup.events_of("InputQuarantined")
    assert len(quarantined) == 1
    assert quarantined[0]["data"]["field"] == field
    assert running.setup.events_of("ProviderNotificationRecorded") == []


async def test_body_over_the_limit_is_413_and_appends_nothing(setup, start_daemon, v2) -> None:
    """A webhook body over the configured limit is answered 413 before it is read."""
    setup.env["STATICIPD_HTTP__MAX_BODY_BYTES"] = "2048"
    async with start_daemon(setup) as d:
        big = json.dumps({"deltas": [], "padding": "x" * 4096}).encode()
        resp = await d.post_webhook(big)
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
        small = await d.post_webhook(v2("acc-1", "account.running"))
        assert small.status == 200
        assert len(setup.events()) == 1


@pytest.mark.parametrize(("error", "retry_after"), [(StorageUnavailable, "10"), (WriterBusy, "2")])
async def test_storage_trouble_is_503_with_retry_after_and_nothing_lost(
    running, v2: V2, monkeypatch: pytest.MonkeyPatch, error: type[Exception], retry_after: str
) -> None:
    """While the log cannot be written the sender gets 503 + Retry-After; its retry then lands."""
    body = v2("acc-503", "account.running")

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise error("disk I/O error (simulated)")

    monkeypatch.setattr(running.daemon.store, "append", unavailable)
    resp = await running.post_webhook(body)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == retry_after
    text = json.dumps(await resp.json())
    assert no_stack_trace(text)
    auth = await running.auth_event(
        {"account_id": "acc-503", "occurred_at": iso(datetime.now(UTC))}
    )
    assert auth[0] == 503
    status, _ = await running.operator("POST", "/v1/migration/enable", {})
    assert status == 503
    assert running.setup.events() == []
    monkeypatch.undo()
    assert (await running.post_webhook(body)).status == 200
    assert len(running.setup.events_of("ProviderNotificationRecorded")) == 1


async def test_unexpected_failure_is_a_bare_500_without_stack_trace(
    running, v2: V2, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the daemon answers 500 quoting a request id, never the exception text."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /srv/app/x.py line 3")

    monkeypatch.setattr(running.daemon.store, "append", broken)
    resp = await running.post_webhook(v2("acc-500", "account.running"))
    assert resp.status == 500
    text = await resp.text()
    assert "secret internal detail" not in text
    assert no_stack_trace(text)
    assert resp.headers["X-Request-Id"] in text


async def test_unknown_trigger_is_acknowledged_and_recorded_as_unrecognised(running, v2) -> None:
    """A trigger not in the table is answered 200 (no endless retries) and kept as unrecognised."""
    resp = await running.post_webhook(v2("acc-u", "account.teleported"))
    assert resp.status == 200
    (recorded,) = running.setup.events_of("ProviderNotificationRecorded", "account-acc-u")
    assert recorded["data"]["meaning"] == "unrecognised"
    assert recorded["data"]["trigger"] == "account.teleported"


async def test_error_bodies_never_contain_a_stack_trace(running) -> None:
    """Every error answer (404, 405, 400, 401) is the JSON error shape without internals."""
    checks = [
        await running.http.get("/nope"),
        await running.http.put("/webhooks/nylas"),
        await running.http.get("/webhooks/nylas"),
        await running.http.post("/v1/auth-events", data=b"\x00"),
        await running.http.post("/v1/auth-events", data=b"{]", headers=running.auth_headers()),
        await running.http.get("/v1/accounts?limit=zero", headers=running.operator_headers()),
    ]
    for resp in checks:
        async with resp:
            assert resp.status >= 400
            text = await resp.text()
            assert "error" in json.loads(text)
            assert no_stack_trace(text)


# --- secrets rotation and reload ---------------------------------------------------------------


async def test_two_webhook_secrets_are_accepted_during_rotation(setup, start_daemon, v2) -> None:
    """With an old and a new secret configured, webhooks signed with either are accepted."""
    setup.write_secret("webhook_secret", "new-secret-0123456789", "old-secret-9876543210")
    async with start_daemon(setup) as d:
        for key in ("new-secret-0123456789", "old-secret-9876543210"):
            body = v2(f"acc-{key[:3]}", "account.running")
            assert (await d.post_webhook(body, setup.sign(body, key))).status == 200
        body = v2("acc-z", "account.running")
        assert (await d.post_webhook(body, setup.sign(body, "third-secret-xxxxxx"))).status == 401


async def test_reload_swaps_secrets_and_tokens_without_restart(running, v2: V2) -> None:
    """After the SIGHUP reload path, only the new webhook secret and tokens are accepted."""
    setup = running.setup
    old_secret, old_token = setup.secret("webhook_secret"), setup.secret("operator_token")
    setup.write_secret("webhook_secret", "rotated-webhook-secret")
    setup.write_secret("operator_token", "rotated-operator-token")
    running.daemon._reload_secrets(running.daemon.runtime)  # what SIGHUP calls
    body = v2("acc-r", "account.running")
    assert (await running.post_webhook(body, setup.sign(body, old_secret))).status == 401
    assert (await running.post_webhook(body)).status == 200
    async with running.http.get("/v1/summary", headers=running.operator_headers(old_token)) as r:
        assert r.status == 401
    status, _ = await running.operator("GET", "/v1/summary")
    assert status == 200


# --- the provider's challenge and the auth-event API --------------------------------------------


async def test_challenge_is_echoed_exactly_as_text_plain(running) -> None:
    """`GET /webhooks/nylas?challenge=X` answers exactly X, as text/plain."""
    challenge = 'a1b2-c3 d4/"é'
    async with running.http.get("/webhooks/nylas", params={"challenge": challenge}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        assert await resp.text() == challenge


async def test_auth_events_need_the_bearer_token(running) -> None:
    """Auth events without a token or with a wrong one are 401 and record nothing."""
    body = {"account_id": "acc-1", "occurred_at": iso(datetime.now(UTC))}
    async with running.http.post("/v1/auth-events", json=body) as resp:
        assert resp.status == 401
    async with running.http.post(
        "/v1/auth-events", json=body, headers=running.auth_headers("wrong-token")
    ) as resp:
        assert resp.status == 401
    # The operator token is not an auth-events token.
    async with running.http.post(
        "/v1/auth-events", json=body, headers=running.operator_headers()
    ) as resp:
        assert resp.status == 401
    assert running.setup.events() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"account_id": 7, "occurred_at": "2024-01-01T00:00:00Z"}, "$.account_id"),
        ({"account_id": "a", "occurred_at": "2024-01-01T00:00:00"}, "$.occurred_at"),
        ({"account_id": "a", "occurred_at": "yesterday"}, "$.occurred_at"),
        ({"occurred_at": "2024-01-01T00:00:00Z"}, "$.account_id"),
        ({"account_id": "a"}, "$.occurred_at"),
    ],
)
async def test_invalid_auth_event_is_400_naming_the_field(running, body: Any, field: str) -> None:
    """A malformed auth event is answered 400 with the offending field, and nothing is recorded."""
    status, answer = await running.auth_event(body)
    assert status == 400
    assert answer["error"]["field"] == field
    assert running.setup.events() == []


async def test_auth_event_answers_the_accounts_resulting_state(running) -> None:
    """The first auth of an enrolled account answers `first_auth` with its wave and policy."""
    await enable_and_enroll(running, ["acc-1"], policy="restart")
    status, body = await running.auth_event(
        {"account_id": "acc-1", "occurred_at": iso(datetime.now(UTC)), "email": "u@example.com"}
    )
    assert status == 200
    account = body["account"]
    assert (account["state"], account["wave"], account["policy"]) == ("first_auth", "w1", "restart")
    assert account["email"] == "u@example.com"
    status, body = await running.auth_event(
        {"account_id": "acc-2", "occurred_at": iso(datetime.now(UTC))}
    )
    assert body["account"]["state"] == "dynamic"  # not enrolled: recorded, no move
