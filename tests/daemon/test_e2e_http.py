"""End-to-end tests of the daemon's HTTP listener: real server on 127.0.0.1, real SQLite, real HMAC.

Each test talks to a `Daemon` started in-process (see `conftest.py`) and checks what the sender
sees (status, body, headers) and what the log holds afterwards, read with a fresh connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook
from structlog.testing import LogCapture

from daemon import logs
from daemon.domain import account_stream
from daemon.provider import standardwebhooks
from eventstore import NotLeader, StorageUnavailable, StoreClosed, WriterBusy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

V2 = Callable[..., bytes]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def no_stack_trace(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text and ".py" not in text


@contextmanager
def captured_lines() -> Iterator[list[dict[str, Any]]]:
    """Like structlog's `capture_logs`, with the request context merged as the daemon does."""
    capture = LogCapture()
    processors = structlog.get_config()["processors"]
    saved = list(processors)
    # Edited in place: loggers already handed out hold a reference to this very list.
    processors[:] = [structlog.contextvars.merge_contextvars, capture]
    level = logs.current_level()
    logs.set_level("debug")  # per-request lines are debug lines, built only when kept
    try:
        yield capture.entries
    finally:
        processors[:] = saved
        logs.set_level(level)


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
    assert (await resp.json()) == {"recorded": 1, "duplicates": 0, "skipped": 0, "quarantined": 0}


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


async def test_event_id_reused_for_another_account_is_409_and_records_nothing(running) -> None:
    """Reusing an `event_id` for a different account is 409 naming `$.event_id`, not a duplicate."""
    now = iso(datetime.now(UTC))
    first = await running.auth_event({"account_id": "acc-x", "occurred_at": now, "event_id": "e"})
    assert first[0] == 200
    before = running.setup.events()
    status, body = await running.auth_event(
        {"account_id": "acc-y", "occurred_at": now, "event_id": "e"}
    )
    assert status == 409
    assert body["error"]["code"] == "event_id_conflict"
    assert body["error"]["field"] == "$.event_id"
    assert "acc-x" not in json.dumps(body)  # another account's id is not disclosed
    assert running.setup.events() == before
    assert running.account("acc-y") is None
    again = await running.auth_event({"account_id": "acc-x", "occurred_at": now, "event_id": "e"})
    assert (again[0], again[1]["duplicate"]) == (200, True)


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


async def test_auth_events_and_operator_bodies_over_the_limit_are_413(setup, start_daemon) -> None:
    """The body limit holds on the auth-event and operator APIs too, and nothing is recorded."""
    setup.env["STATICIPD_HTTP__MAX_BODY_BYTES"] = "2048"
    async with start_daemon(setup) as d:
        padding = "x" * 4096
        status, body = await d.auth_event(
            {"account_id": "a", "occurred_at": "2026-11-25T10:00:00Z", "email": padding}
        )
        assert status == 413
        assert body["error"]["code"] == "payload_too_large"
        status, body = await d.operator(
            "POST", "/v1/enrollments", {"account_ids": ["a"], "wave": padding}
        )
        assert status == 413
        assert setup.events() == []


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (StorageUnavailable, "10"),
        (WriterBusy, "2"),
        (StoreClosed, "5"),
        # A commit refused by the leadership fence: what a standby says, the lease (10 s here).
        (NotLeader, "10"),
    ],
)
async def test_storage_trouble_is_503_with_retry_after_and_nothing_lost(
    running, v2: V2, monkeypatch: pytest.MonkeyPatch, error: type[Exception], retry_after: str
) -> None:
    """While the log cannot be written the sender gets 503 + Retry-After; its retry then lands."""
    body = v2("acc-503", "account.running")

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise error("disk I/O error (simulated)")

    for write in ("append", "append_many"):
        monkeypatch.setattr(running.daemon.store, write, unavailable)
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

    for write in ("append", "append_many"):
        monkeypatch.setattr(running.daemon.store, write, broken)
    resp = await running.post_webhook(v2("acc-500", "account.running"))
    assert resp.status == 500
    text = await resp.text()
    assert "secret internal detail" not in text
    assert no_stack_trace(text)
    assert resp.headers["X-Request-Id"] in text


async def test_storage_trouble_on_a_read_is_503_with_retry_after(
    running, v2: V2, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that cannot reach the log (an account's timeline) answers 503 + Retry-After, not
    an internal error, and answers again once the log is back."""
    assert (await running.post_webhook(v2("acc-read", "account.running"))).status == 200

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("disk I/O error (simulated)")

    monkeypatch.setattr(running.daemon.store, "read_stream", unavailable)
    path, headers = "/v1/accounts/acc-read/timeline", running.operator_headers()
    async with running.http.get(path, headers=headers) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "10"
        assert (await resp.json())["error"]["code"] == "unavailable"
    monkeypatch.undo()
    status, body = await running.operator("GET", "/v1/accounts/acc-read/timeline")
    assert status == 200
    assert body["timeline"]


async def test_unknown_trigger_is_acknowledged_and_recorded_as_unrecognised(running, v2) -> None:
    """A trigger not in the table is answered 200 (no endless retries) and kept as unrecognised."""
    resp = await running.post_webhook(v2("acc-u", "account.teleported"))
    assert resp.status == 200
    (recorded,) = running.setup.events_of("ProviderNotificationRecorded", "account-acc-u")
    assert recorded["data"]["meaning"] == "unrecognised"
    assert recorded["data"]["trigger"] == "account.teleported"


async def test_each_notification_is_recorded_with_its_delivery_id_object_and_details(
    running, v3
) -> None:
    """v2 deltas are kept under their digest, v3 under its id, each with its object and details."""
    account = {
        "date": 1_717_430_400,
        "object": "account",
        "type": "account.sync_error",
        "object_data": {
            "account_id": "acc-d",
            "id": "obj-9",
            "object": "account",
            "attributes": {"reason": "t"},
            "metadata": None,
        },
    }
    assert (await running.post_webhook(json.dumps({"deltas": [account]}).encode())).status == 200
    reauth = v3("evt-d", "grant-d", code=25027, email="user@example.com")
    assert (await running.post_webhook(reauth)).status == 200

    digest = hashlib.sha256(json.dumps(account, sort_keys=True, separators=(",", ":")).encode())
    (v2_event,) = running.setup.events_of("ProviderNotificationRecorded", "account-acc-d")
    assert v2_event["event_id"] == f"v2:{digest.hexdigest()}#0"
    assert v2_event["data"]["trigger"] == "account.sync_error"
    assert v2_event["data"]["api_version"] == 2
    assert v2_event["data"]["meaning"] == "sync_error"
    assert v2_event["data"]["occurred_at"].startswith("2024-06-03T16:00:00")
    assert v2_event["data"]["details"] == {
        "object_id": "obj-9",
        "attributes": {"reason": "t"},
        "object": "account",
    }
    (v3_event,) = running.setup.events_of("ProviderNotificationRecorded", "account-grant-d")
    assert v3_event["event_id"] == "v3:evt-d#0"
    assert (v3_event["data"]["api_version"], v3_event["data"]["meaning"]) == (3, "auth")
    assert v3_event["data"]["details"] == {
        "object": "grant",
        "code": 25027,
        "email": "user@example.com",
        "delivery_attempt": 1,
        "application_id": "app-1",
    }
    assert running.setup.events_of("AuthRecorded", "account-grant-d")


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
    running.daemon.reload()  # what SIGHUP calls
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


# --- operator API -------------------------------------------------------------------------------


async def test_operator_api_refuses_requests_without_the_operator_token(running) -> None:
    """Every operator route answers 401 without a token, or with the auth-events token."""
    routes = [
        ("GET", "/v1/summary"),
        ("GET", "/v1/accounts"),
        ("GET", "/v1/accounts/acc-1"),
        ("GET", "/v1/accounts/acc-1/timeline"),
        ("POST", "/v1/migration/enable"),
        ("POST", "/v1/enrollments"),
        ("POST", "/v1/accounts/acc-1/reset"),
        ("POST", "/v1/accounts/acc-1/exclude"),
        ("POST", "/v1/accounts/acc-1/resolve"),
        ("GET", "/v1/ip-addresses"),
    ]
    for method, path in routes:
        for headers in ({}, running.auth_headers(), running.operator_headers("nope-nope")):
            async with running.http.request(method, path, headers=headers, json={}) as resp:
                assert resp.status == 401, (method, path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert running.setup.events() == []


async def test_enable_and_enrol_show_in_the_summary(running) -> None:
    """Enabling the migration and enrolling a wave show in `/v1/summary`; retries are idempotent."""
    status, body = await running.operator("GET", "/v1/summary")
    assert (status, body["migration_enabled"]) == (200, False)
    status, body = await running.operator(
        "POST", "/v1/migration/enable", {"reason": "go"}, headers={"Idempotency-Key": "k1"}
    )
    assert (status, body) == (200, {"duplicate": False, "migration_enabled": True})
    status, body = await running.operator(
        "POST", "/v1/migration/enable", {"reason": "go"}, headers={"Idempotency-Key": "k1"}
    )
    assert body["duplicate"] is True
    enrol = {"account_ids": ["a1", "a2", "a2"], "wave": "wave-1", "policy": "notify"}
    status, body = await running.operator("POST", "/v1/enrollments", enrol)
    assert (status, body["enrolled"]) == (201, 2)
    status, summary = await running.operator("GET", "/v1/summary")
    assert summary["migration_enabled"] is True
    assert summary["waves"] == {"wave-1": 2}
    assert summary["position"] == len(running.setup.events())


async def test_operator_body_errors_name_the_field(running) -> None:
    """Enrolment without accounts or a reset without a reason is 400 naming the field."""
    status, body = await running.operator("POST", "/v1/enrollments", {"wave": "w"})
    assert (status, body["error"]["field"]) == (400, "$.account_ids")
    status, body = await running.operator(
        "POST", "/v1/enrollments", {"account_ids": [], "wave": "w"}
    )
    assert (status, body["error"]["field"]) == (400, "$.account_ids")
    status, body = await running.operator("POST", "/v1/accounts/a/reset", {})
    assert (status, body["error"]["field"]) == (400, "$.reason")
    status, body = await running.operator("GET", "/v1/ip-addresses?format=pdf")
    assert (status, body["error"]["field"]) == (400, "format")
    assert running.setup.events() == []


async def test_account_and_timeline_of_a_migrating_account(running) -> None:
    """An account's state and its audit timeline are served; an unknown account is 404."""
    await enable_and_enroll(running, ["acc-t"])
    await running.auth_event({"account_id": "acc-t", "occurred_at": iso(datetime.now(UTC))})
    status, account = await running.operator("GET", "/v1/accounts/acc-t")
    assert (status, account["state"], account["wave"]) == (200, "first_auth", "w1")
    assert len(account["pending_timers"]) == 1  # the stop-grace timer
    times = [account["first_auth_at"], account["next_due"], *account["pending_timers"].values()]
    assert all(t.endswith("Z") for t in times), times  # one format for every time
    status, body = await running.operator("GET", "/v1/accounts/acc-t/timeline")
    assert status == 200
    assert body["account_id"] == "acc-t"
    assert body["timeline"]
    assert "first_auth" in json.dumps(body["timeline"])
    for path in ("/v1/accounts/ghost", "/v1/accounts/ghost/timeline"):
        status, body = await running.operator("GET", path)
        assert (status, body["error"]["code"]) == (404, "unknown_account")


async def test_account_listing_pages_with_a_cursor_and_filters(running) -> None:
    """`/v1/accounts` pages through every account once, and filters by state and wave."""
    ids = [f"acc-{i:02d}" for i in range(7)]
    await enable_and_enroll(running, ids[:3])
    for account_id in ids:
        await running.auth_event({"account_id": account_id, "occurred_at": iso(datetime.now(UTC))})
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = f"/v1/accounts?limit=3{f'&cursor={cursor}' if cursor else ''}"
        status, page = await running.operator("GET", query)
        assert status == 200
        assert len(page["accounts"]) <= 3
        seen += [a["account_id"] for a in page["accounts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    _, page = await running.operator("GET", "/v1/accounts?state=first_auth")
    assert [a["account_id"] for a in page["accounts"]] == ids[:3]
    _, page = await running.operator("GET", "/v1/accounts?state=dynamic&wave=w1")
    assert page["accounts"] == []
    status, _ = await running.operator("GET", "/v1/accounts?limit=5000")
    assert status == 400


@pytest.mark.parametrize("command", ["reset", "exclude", "resolve"])
async def test_command_for_an_unknown_account_is_404_and_records_nothing(
    running, command: str
) -> None:
    """A reset, exclude or resolve of an account not in the log is 404 and invents no account."""
    status, body = await running.operator(
        "POST", f"/v1/accounts/nope/{command}", {"reason": "typo"}
    )
    assert (status, body["error"]["code"]) == (404, "unknown_account")
    assert running.setup.events() == []
    assert running.account("nope") is None
    _, summary = await running.operator("GET", "/v1/summary")
    assert sum(summary["funnel"].values()) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=bogus", "state"),
        ("state=STATIC", "state"),
        ("cursor=%ff%fe", "cursor"),
        ("cursor=a%00b", "cursor"),
        ("cursor=" + "x" * 600, "cursor"),
        ("cursor=acc-a", "cursor"),
    ],
)
async def test_account_listing_refuses_an_unknown_state_or_garbage_cursor(
    running, query: str, field: str
) -> None:
    """An unknown `state`, or a cursor the daemon did not hand out (a bare account id too), is a
    400 naming it, not an empty page; the cursors it hands out page on."""
    await enable_and_enroll(running, ["acc-a", "acc-l"])
    status, body = await running.operator("GET", f"/v1/accounts?{query}")
    assert status == 400
    assert body["error"]["field"] == field
    _, first = await running.operator("GET", "/v1/accounts?limit=1")
    status, body = await running.operator(
        "GET", f"/v1/accounts?state=dynamic&cursor={first['next_cursor']}"
    )
    assert (status, [a["account_id"] for a in body["accounts"]]) == (200, ["acc-l"])


async def test_log_lines_of_a_request_carry_its_account_and_delivery_ids(
    running, v2: V2, v3
) -> None:
    """Lines logged for a webhook, auth event or command name its account and delivery."""
    deltas = [json.loads(v2(a, "account.running"))["deltas"][0] for a in ("acc-l1", "acc-l2")]
    with captured_lines() as logs:
        assert (await running.post_webhook(json.dumps({"deltas": deltas}).encode())).status == 200
        assert (await running.post_webhook(v3("evt-77", "grant-7"))).status == 200
        await running.auth_event({"account_id": "acc-l3", "occurred_at": iso(datetime.now(UTC))})
        await running.operator("POST", "/v1/accounts/ghost/reset", {"reason": "x"})
        await running.operator("GET", "/v1/accounts/acc-l1")
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in logs:
        by_event.setdefault(line["event"], []).append(line)
    v2_line, v3_line = by_event["webhook.accepted"]
    assert v2_line["account_id"] == "acc-l1"
    assert v2_line["delivery_count"] == 2
    assert v2_line["delivery_id"]
    assert v2_line["request_id"]
    assert (v3_line["account_id"], v3_line["delivery_count"]) == ("grant-7", 1)
    assert "evt-77" in v3_line["delivery_id"]
    [auth] = by_event["auth_event.accepted"]
    assert auth["account_id"] == "acc-l3"
    assert "delivery_id" not in auth  # a request's ids do not leak into the next one
    [refused] = by_event["http.error"]
    assert (refused["account_id"], refused["status"]) == ("ghost", 404)


async def test_reset_exclude_and_resolve_commands_change_the_account(running) -> None:
    """Exclude takes an account out of the migration, reset puts it back, resolve is recorded."""
    await enable_and_enroll(running, ["acc-c"])
    await running.auth_event({"account_id": "acc-c", "occurred_at": iso(datetime.now(UTC))})
    status, body = await running.operator("POST", "/v1/accounts/acc-c/exclude", {"reason": "vip"})
    assert (status, body["account"]["state"]) == (200, "excluded")
    assert body["account"]["pending_timers"] == {}
    status, body = await running.operator("POST", "/v1/accounts/acc-c/reset", {"reason": "again"})
    assert (status, body["account"]["state"]) == (200, "dynamic")
    status, body = await running.operator(
        "POST", "/v1/accounts/acc-c/resolve", {"reason": "checked by hand", "actor": "ana"}
    )
    assert status == 200
    commands = running.setup.events_of("OperatorCommandRecorded", "account-acc-c")
    assert [(e["data"]["command"], e["data"]["actor"]) for e in commands][-1][1] == "ana"
    assert len(commands) == 3


async def test_ip_addresses_are_served_in_every_format(running) -> None:
    """The recorded IP lists are served as JSON, plain, nftables and iptables allowlists."""
    from daemon.domain import IpListObserved

    now = datetime.now(UTC)
    await running.daemon.engine.submit(
        [
            IpListObserved(
                input_id="ip:1", kind="dynamic", addresses=("203.0.113.7", "2001:db8::/64"),
                observed_at=now,
            )
        ],
        source="ip-list-watcher",
    )  # fmt: skip
    expected_type = {"json": "application/json"}
    for fmt in ("json", "plain", "nftables", "iptables"):
        async with running.http.get(
            f"/v1/ip-addresses?format={fmt}", headers=running.operator_headers()
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == expected_type.get(fmt, "text/plain")
            text = await resp.text()
            assert "203.0.113.7" in text, fmt
    async with running.http.get("/v1/ip-addresses", headers=running.operator_headers()) as resp:
        lists = (await resp.json())["lists"]
    assert lists == {"dynamic": ["203.0.113.7/32", "2001:db8::/64"]}


# --- probes, metrics and the status page -------------------------------------------------------


async def test_healthz_and_readyz_when_serving(running) -> None:
    """`/healthz` says alive and `/readyz` says ready while the daemon serves."""
    async with running.http.get("/healthz") as resp:
        assert (resp.status, (await resp.json())["status"]) == (200, "alive")
    async with running.http.get("/readyz") as resp:
        body = await resp.json()
        assert (resp.status, body["ready"]) == (200, True)


async def test_readyz_is_503_when_not_ready(running) -> None:
    """`/readyz` answers 503 naming the failed check while the daemon is not accepting."""
    running.daemon.runtime.stopping = True  # what the daemon sets as it begins to stop
    async with running.http.get("/readyz") as resp:
        body = await resp.json()
        assert resp.status == 503
        assert body["checks"]["accepting"] is False
    async with running.http.get("/healthz") as resp:
        assert resp.status == 200
    running.daemon.runtime.stopping = False


async def test_metrics_expose_the_funnel_gauge(running, v2: V2) -> None:
    """`/metrics` is Prometheus text with accounts per state and webhook counters."""
    await running.post_webhook(v2("acc-m", "account.running"))
    await running.post_webhook(b"{}", "00" * 32)
    async with running.http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert "# TYPE staticipd_accounts gauge" in text
    assert 'staticipd_accounts{state="dynamic"} 1' in text
    assert 'staticipd_accounts{state="static"} 0' in text
    assert 'staticipd_webhooks_total{result="accepted"} 1' in text
    assert 'staticipd_webhooks_total{result="bad_signature"} 1' in text


async def test_webhook_counters_are_shown_from_zero(running, v2: V2) -> None:
    """Every result of the webhook counters is a series from the start, and a delivery counts
    only what it had: one recorded delta adds nothing to duplicates or skipped."""
    async with running.http.get("/metrics") as resp:
        text = await resp.text()
    for result in ("accepted", "bad_signature", "malformed"):
        assert f'staticipd_webhooks_total{{result="{result}"}} 0.0' in text
    for result in ("recorded", "duplicate", "skipped", "quarantined"):
        assert f'staticipd_webhook_deltas_total{{result="{result}"}} 0.0' in text
    await running.post_webhook(v2("acc-z", "account.running"))
    async with running.http.get("/metrics") as resp:
        text = await resp.text()
    assert 'staticipd_webhook_deltas_total{result="recorded"} 1.0' in text
    assert 'staticipd_webhook_deltas_total{result="duplicate"} 0.0' in text
    assert 'staticipd_webhook_deltas_total{result="skipped"} 0.0' in text


async def test_metrics_count_the_events_appended_by_source_not_the_duplicates(
    running, v2: V2
) -> None:
    """`staticipd_events_appended_total` counts the events written, not redeliveries."""
    body = v2("acc-n", "account.running")
    for _ in range(2):
        assert (await running.post_webhook(body)).status == 200
    await running.auth_event({"account_id": "acc-n", "occurred_at": iso(datetime.now(UTC))})
    by_source: dict[str, int] = {}
    for event in running.setup.events():
        source = json.loads(event["metadata"])["source"]
        by_source[source] = by_source.get(source, 0) + 1
    async with running.http.get("/metrics") as resp:
        text = await resp.text()
    assert by_source["webhook"] >= 1
    for source, count in by_source.items():
        assert f'staticipd_events_appended_total{{source="{source}"}} {count}' in text


async def test_flagged_accounts_are_counted_on_metrics_and_the_status_page(running, v2: V2) -> None:
    """An account.invalid webhook shows as a flagged account in /metrics and on the status page."""
    await running.post_webhook(v2("acc-bad", "account.invalid"))
    async with running.http.get("/metrics") as resp:
        text = await resp.text()
    assert 'staticipd_accounts_flagged{flag="invalid"} 1' in text
    assert 'staticipd_accounts_flagged{flag="sync_error"} 0' in text
    async with running.http.get("/") as resp:
        page = await resp.text()
    assert "Flagged accounts: invalid 1" in page


async def test_status_page_shows_the_funnel_without_account_ids(running) -> None:
    """The status page is HTML with counts per state, and never an account id or email."""
    await enable_and_enroll(running, ["secret-account-42"])
    await running.auth_event(
        {
            "account_id": "secret-account-42",
            "occurred_at": iso(datetime.now(UTC)),
            "email": "person@example.com",
        }
    )
    async with running.http.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert '<div class="tile" data-state="first_auth">' in page
    assert re.search(r'data-state="first_auth"><i [^>]*></i><b>1</b>', page)
    assert "secret-account-42" not in page
    assert "person@example.com" not in page


# --- timers ---------------------------------------------------------------------------------------


async def drive_to_stopped_waiting(d: Any, account_id: str, v2: V2) -> None:
    """Enable, enrol, first auth, then `account.stopped`: the second-step timer is pending."""
    await enable_and_enroll(d, [account_id])
    status, _ = await d.auth_event(
        {"account_id": account_id, "occurred_at": iso(datetime.now(UTC))}
    )
    assert status == 200
    # v2 dates are whole seconds: round up so the stop is not before the first auth.
    resp = await d.post_webhook(v2(account_id, "account.stopped", date=int(time.time()) + 1))
    assert resp.status == 200
    assert d.account(account_id).state == "stopped_waiting"


def second_step_firings(setup: Any, account_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in setup.events_of("TimerFired", account_stream(account_id))
        if e["data"]["purpose"] == "second_step"
    ]


async def test_second_step_timer_fires_on_time_over_http(setup, start_daemon, v2: V2) -> None:
    """With a 1.5 s delay the second step comes due by itself, and never before its due time."""
    setup.env["STATICIPD_MIGRATION__DELAY_SECONDS"] = "1.5"
    setup.env["STATICIPD_PROVIDER__SANDBOX"] = "true"  # a delay below 30 minutes
    async with start_daemon(setup) as d:
        await drive_to_stopped_waiting(d, "acc-timer", v2)
        await d.wait_until(lambda: d.account("acc-timer").state == "second_step_due", timeout=10)
        (fired,) = second_step_firings(setup, "acc-timer")
        due = datetime.fromisoformat(fired["data"]["due_at"])
        fired_at = datetime.fromisoformat(fired["data"]["fired_at"])
        # How late it fires depends on this shared machine; that it fires, and never early,
        # does not (the wait_until above bounds the test).
        assert due <= fired_at
        assert setup.events_of("ReauthRequested", "account-acc-timer")


async def test_timer_due_while_stopped_fires_once_at_start_up(setup, start_daemon, v2) -> None:
    """A timer that came due while the daemon was down fires once at start-up, saying how late."""
    setup.env["STATICIPD_MIGRATION__DELAY_SECONDS"] = "1"
    setup.env["STATICIPD_PROVIDER__SANDBOX"] = "true"  # a delay below 30 minutes
    async with start_daemon(setup) as d:
        await drive_to_stopped_waiting(d, "acc-late", v2)
        due = d.account("acc-late").second_step_due_at
    assert second_step_firings(setup, "acc-late") == []
    await anyio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.3)
    async with start_daemon(setup) as d:
        await d.wait_until(lambda: d.account("acc-late").state == "second_step_due", timeout=10)
    async with start_daemon(setup) as d:  # a further restart does not fire it again
        assert d.account("acc-late").state == "second_step_due"
    (fired,) = second_step_firings(setup, "acc-late")
    assert fired["data"]["lateness"] not in (0, "PT0S", "P0D")


# --- effects: the signed re-authentication request ----------------------------------------------


class Receiver:
    """The application's notify endpoint: records each request, answers the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.Response(status=status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/reauth", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/reauth"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def outcome_types(setup: Any, account_id: str) -> list[str]:
    wanted = ("EffectSucceeded", "EffectAttemptFailed", "EffectAbandoned")
    return [
        e["type"]
        for e in setup.events()
        if e["stream"] == account_stream(account_id) and e["type"] in wanted
    ]


def verify_both_ways(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Check a request with our verifier and with the reference `standardwebhooks` library."""
    msg_id = standardwebhooks.verify(secret, headers, body, now=time.time())
    Webhook(secret).verify(body, headers)
    return msg_id


async def test_reauth_request_is_signed_and_keeps_its_id_across_retries(
    setup, start_daemon, v2: V2
) -> None:
    """The app receives a verifiable signed request; after two 500s the retry has the same id."""
    setup.env["STATICIPD_MIGRATION__DELAY_SECONDS"] = "0.5"
    setup.env["STATICIPD_PROVIDER__SANDBOX"] = "true"  # a delay below 30 minutes
    secret = setup.secret("notify_secret")
    async with Receiver([500, 500, 200]) as receiver:
        setup.env["STATICIPD_NOTIFY__URL"] = receiver.url
        async with start_daemon(setup) as d:
            await drive_to_stopped_waiting(d, "acc-n", v2)
            await d.wait_until(
                lambda: "EffectSucceeded" in outcome_types(setup, "acc-n"), timeout=15
            )
    assert len(receiver.requests) == 3
    ids = {verify_both_ways(secret, headers, body) for headers, body in receiver.requests}
    assert len(ids) == 1
    message = json.loads(receiver.requests[0][1])
    assert message["type"] == "staticipd.reauth_requested"
    assert message["data"]["account_id"] == "acc-n"
    assert message["data"]["reminder"] == 0
    assert outcome_types(setup, "acc-n") == [
        "EffectAttemptFailed", "EffectAttemptFailed", "EffectSucceeded",
    ]  # fmt: skip


async def test_pending_effect_resumes_after_a_restart(setup, start_daemon, v2: V2) -> None:
    """An effect that failed before a restart is retried after it, with the same webhook-id."""
    setup.env["STATICIPD_MIGRATION__DELAY_SECONDS"] = "0.5"
    setup.env["STATICIPD_PROVIDER__SANDBOX"] = "true"  # a delay below 30 minutes
    setup.env["STATICIPD_OUTBOX__BACKOFF_BASE_SECONDS"] = "1"
    setup.env["STATICIPD_OUTBOX__BACKOFF_MAX_SECONDS"] = "1"
    secret = setup.secret("notify_secret")
    async with Receiver([500]) as receiver:
        setup.env["STATICIPD_NOTIFY__URL"] = receiver.url
        async with start_daemon(setup) as d:
            await drive_to_stopped_waiting(d, "acc-r", v2)
            await d.wait_until(lambda: bool(outcome_types(setup, "acc-r")), timeout=15)
        assert outcome_types(setup, "acc-r")[-1] == "EffectAttemptFailed"
        before = len(receiver.requests)
        receiver.statuses = [200]
        async with start_daemon(setup) as d:
            await d.wait_until(
                lambda: "EffectSucceeded" in outcome_types(setup, "acc-r"), timeout=15
            )
    assert len(receiver.requests) > before
    ids = {verify_both_ways(secret, headers, body) for headers, body in receiver.requests}
    assert len(ids) == 1


# --- invariant 2: the log is the only truth ----------------------------------------------------


async def everything(d: Any) -> tuple[Any, dict[str, Any]]:
    """The summary and every account as the operator API serves them."""
    _, summary = await d.operator("GET", "/v1/summary")
    accounts: dict[str, Any] = {}
    _, page = await d.operator("GET", "/v1/accounts?limit=1000")
    for listed in page["accounts"]:
        status, account = await d.operator("GET", f"/v1/accounts/{listed['account_id']}")
        assert status == 200
        accounts[listed["account_id"]] = (listed, account)
    return summary, accounts


async def test_state_is_identical_after_deleting_the_snapshot(setup, start_daemon, v2, v3) -> None:
    """Delete the snapshots and restart: the summary and every account are exactly as before."""
    async with start_daemon(setup) as d:
        await drive_to_stopped_waiting(d, "acc-1", v2)
        await enable_and_enroll(d, ["acc-2", "acc-3"], policy="restart")
        await d.auth_event({"account_id": "acc-2", "occurred_at": iso(datetime.now(UTC))})
        await d.operator("POST", "/v1/accounts/acc-3/exclude", {"reason": "vip"})
        await d.post_webhook(v2("acc-4", "account.invalid"))
        await d.post_webhook(v3("evt-9", "grant-5", reauthentication_flag=True))
        await d.post_webhook(b"{broken", None)
        before = await everything(d)
    assert len(before[1]) == 5
    with sqlite3.connect(setup.database) as conn:
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1
        conn.execute("DELETE FROM snapshots")
    conn.close()
    async with start_daemon(setup) as d:
        after = await everything(d)
    assert after == before
    async with start_daemon(setup) as d:  # and from the snapshot written at that stop
        assert await everything(d) == before
