"""Webhook signature verification and v2/v3 body parsing (daemon.provider.webhooks)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.provider.webhooks import (
    MalformedWebhook,
    parse_delivery,
    parse_notifications,
    verify_signature,
)

SECRET = b"client-secret-1"
OLD_SECRET = b"client-secret-0"

V2_STOPPED = {
    "deltas": [
        {
            "date": 1717430400,
            "object": "account",
            "type": "account.stopped",
            "object_data": {
                "namespace_id": "5x8d2qkq0h7m1w3n9r4t6y2ab",
                "account_id": "5x8d2qkq0h7m1w3n9r4t6y2ab",
                "object": "account",
                "attributes": None,
                "id": "5x8d2qkq0h7m1w3n9r4t6y2ab",
                "metadata": None,
            },
        }
    ]
}

V3_UPDATED = {
    "specversion": "1.0",
    "type": "grant.updated",
    "source": "/nylas/system",
    "id": "d6a1b2c3-0f4e-4b7a-9c1d-2e3f4a5b6c7d",
    "time": 1739223251,
    "webhook_delivery_attempt": 2,
    "data": {
        "application_id": "app-1",
        "object": {
            "code": 25027,
            "grant_id": "grant-1",
            "provider": "microsoft",
            "email": "user@example.com",
            "reauthentication_flag": True,
        },
    },
}


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def delta(account: str, trigger: str = "account.running", date: int = 1717430400) -> dict:
    return {
        "date": date,
        "object": "account",
        "type": trigger,
        "object_data": {"account_id": account, "id": account, "object": "account"},
    }


# --- signatures ---


def test_correct_signature_is_accepted() -> None:
    """A body signed with the configured secret verifies."""
    body = json.dumps(V2_STOPPED).encode()
    assert verify_signature(body, sign(body), [SECRET])


def test_either_secret_is_accepted_during_rotation() -> None:
    """While a secret is rotated, signatures made with the old or the new secret both verify."""
    body = b'{"deltas": []}'
    assert verify_signature(body, sign(body, OLD_SECRET), [SECRET, OLD_SECRET])
    assert verify_signature(body, sign(body, SECRET), [SECRET, OLD_SECRET])


@pytest.mark.parametrize(
    "header",
    [None, "", "abc", "0" * 64, "z" * 64, "é" * 64],
    ids=["missing", "empty", "short", "zeros", "non-hex", "non-ascii"],
)
def test_wrong_or_missing_signature_is_refused(header: str | None) -> None:
    """A missing, truncated, wrong or non-ASCII signature header never verifies."""
    assert not verify_signature(b"{}", header, [SECRET])


def test_signature_of_other_bytes_is_refused() -> None:
    """A signature of a re-serialised body does not verify the raw bytes that were sent."""
    raw = b'{"deltas":  []}'
    assert not verify_signature(raw, sign(b'{"deltas": []}'), [SECRET])


def test_empty_secret_list_and_empty_secret_never_verify() -> None:
    """With no secret configured (or an empty one) nothing verifies, not even an empty-key HMAC."""
    body = b"{}"
    assert not verify_signature(body, sign(body), [])
    assert not verify_signature(body, sign(body, b""), [b""])


def test_upper_case_hex_and_whitespace_are_tolerated() -> None:
    """A signature header with surrounding spaces or upper-case hex still verifies."""
    body = b"{}"
    assert verify_signature(body, f"  {sign(body).upper()} ", [SECRET])


# --- v2 parsing ---


def test_v2_account_stopped_parses_to_one_notification() -> None:
    """The provider's documented account.stopped body becomes one v2 notification in UTC."""
    [n] = parse_notifications(json.dumps(V2_STOPPED).encode())
    assert n.api_version == 2
    assert n.trigger == "account.stopped"
    assert n.account_id == "5x8d2qkq0h7m1w3n9r4t6y2ab"
    assert n.occurred_at == datetime(2024, 6, 3, 16, 0, tzinfo=UTC)
    assert n.input_id.startswith("v2:")
    assert len(n.input_id) == 3 + 64
    assert n.details == {"object": "account"}


def test_v2_several_deltas_become_several_notifications() -> None:
    """Each delta of a batched v2 delivery is its own notification, in order."""
    body = {"deltas": [delta("a1", "account.stopped"), delta("a2", "account.running")]}
    ns = parse_notifications(json.dumps(body).encode())
    assert [(n.account_id, n.trigger) for n in ns] == [
        ("a1", "account.stopped"),
        ("a2", "account.running"),
    ]
    assert ns[0].input_id != ns[1].input_id


def test_v2_redelivery_with_other_key_order_has_the_same_dedupe_key() -> None:
    """A redelivered delta keeps its dedupe key even if keys are reordered or re-spaced."""
    one = json.dumps(V2_STOPPED).encode()
    reordered = json.dumps(
        {"deltas": [dict(reversed(list(V2_STOPPED["deltas"][0].items())))]}, indent=2
    ).encode()
    assert parse_notifications(one)[0].input_id == parse_notifications(reordered)[0].input_id


def test_v2_same_account_different_date_is_a_different_delivery() -> None:
    """Two stops of one account at different times are not mistaken for a duplicate."""
    a = parse_notifications(json.dumps({"deltas": [delta("a", date=1)]}).encode())[0]
    b = parse_notifications(json.dumps({"deltas": [delta("a", date=2)]}).encode())[0]
    assert a.input_id != b.input_id


def test_v2_unknown_account_trigger_parses_and_message_delta_is_skipped() -> None:
    """An unknown account trigger is a notification; a message delta is counted and skipped."""
    body = {
        "deltas": [
            delta("a", "account.teleported"),
            {
                "date": 1,
                "object": "message",
                "type": "message.created",
                "object_data": {
                    "account_id": "a",
                    "id": "msg-9",
                    "object": "message",
                    "attributes": {"thread_id": "t"},
                    "metadata": None,
                },
            },
        ]
    }
    delivery = parse_delivery(json.dumps(body).encode())
    [unknown] = delivery.notifications
    assert unknown.trigger == "account.teleported"
    assert delivery.skipped == ["message/message.created"]
    assert delivery.malformed == []


def test_v2_empty_deltas_is_no_notification() -> None:
    """A v2 body with an empty deltas list yields nothing rather than an error."""
    assert parse_notifications(b'{"deltas": []}') == []


# --- v3 parsing ---


def test_v3_grant_updated_parses_with_details() -> None:
    """A v3 grant.updated maps grant_id to the account and keeps the re-auth code and flag."""
    [n] = parse_notifications(json.dumps(V3_UPDATED).encode())
    assert n.api_version == 3
    assert n.trigger == "grant.updated"
    assert n.account_id == "grant-1"
    assert n.input_id == "v3:d6a1b2c3-0f4e-4b7a-9c1d-2e3f4a5b6c7d"
    assert n.occurred_at == datetime.fromtimestamp(1739223251, UTC)
    assert n.details["object"] == "grant"
    assert n.details["code"] == 25027
    assert n.details["reauthentication_flag"] is True
    assert n.details["email"] == "user@example.com"
    assert n.details["delivery_attempt"] == 2
    assert "grant_id" not in n.details


def test_v3_redelivery_keeps_the_dedupe_key() -> None:
    """A v3 retry (higher delivery attempt) has the same dedupe key as the first try."""
    retry = {**V3_UPDATED, "webhook_delivery_attempt": 3}
    first = parse_notifications(json.dumps(V3_UPDATED).encode())[0]
    again = parse_notifications(json.dumps(retry).encode())[0]
    assert first.input_id == again.input_id


# --- malformed bodies ---


def _v2_with(**changes: object) -> bytes:
    d = {**delta("a"), **changes}
    return json.dumps({"deltas": [d]}).encode()


@pytest.mark.parametrize(
    ("body", "field", "reason_part"),
    [
        (b"\xff\xfe{}", "$", "UTF-8"),
        (b"{not json", "$", "JSON"),
        (b"[1, 2]", "$", "object"),
        (b'{"hello": 1}', "$", "deltas"),
        (b'{"deltas": {}}', "$.deltas", "array"),
        (_v2_with(date="yesterday"), "$.deltas[0].date", "int"),
        (_v2_with(date=-5), "$.deltas[0].date", ">= 0"),
        (_v2_with(date=10**15), "$.deltas[0].date", "<="),
        (_v2_with(type=""), "$.deltas[0].type", "length"),
        (_v2_with(object_data={"id": "x"}), "$.deltas[0].object_data.account_id", "missing"),
        (_v2_with(object_data=None), "$.deltas[0].object_data", "object"),
    ],
    ids=[
        "bad-utf8",
        "not-json",
        "array",
        "no-version",
        "deltas-object",
        "date-string",
        "date-negative",
        "date-huge",
        "type-empty",
        "account-missing",
        "object-data-null",
    ],
)
def test_malformed_v2_body_names_the_field(body: bytes, field: str, reason_part: str) -> None:
    """A body that is not a readable webhook raises an error naming the field and the reason."""
    with pytest.raises(MalformedWebhook) as info:
        parse_notifications(body)
    assert info.value.field == field
    assert reason_part.lower() in info.value.reason.lower()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("id"), "$.id"),
        (lambda b: b.update(time="now"), "$.time"),
        (lambda b: b["data"]["object"].pop("grant_id"), "$.data.object.grant_id"),
        (lambda b: b["data"].update(object=[]), "$.data.object"),
    ],
    ids=["id-missing", "time-string", "grant-missing", "object-array"],
)
def test_malformed_v3_body_names_the_field(mutate, field: str) -> None:
    """A v3 body missing its id, time or grant names exactly that field."""
    body = json.loads(json.dumps(V3_UPDATED))
    mutate(body)
    with pytest.raises(MalformedWebhook) as info:
        parse_notifications(json.dumps(body).encode())
    assert info.value.field == field


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(body: bytes) -> None:
    """Whatever bytes arrive, parsing returns notifications or raises MalformedWebhook."""
    try:
        result = parse_notifications(body)
    except MalformedWebhook:
        return
    assert isinstance(result, list)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )
)
def test_arbitrary_json_never_crashes_the_parser(value: object) -> None:
    """Any JSON value, including odd shapes of deltas, ends in notifications or MalformedWebhook."""
    for body in (value, {"deltas": value}, {"specversion": "1.0", "data": value}):
        with contextlib.suppress(MalformedWebhook):
            parse_notifications(json.dumps(body).encode())


# --- one delta at a time ---

CALENDAR_DELTA = {  # the provider's docs: a calendar delta has `time` and `source`, no `date`
    "object": "calendar",
    "type": "calendar.updated",
    "source": "/google/events/realtime",
    "id": "FUuYVEHL5gJxB85oKoNxt74890",
    "time": 1602623196,
    "object_data": {"account_id": "a", "object": "calendar", "id": "cal-1"},
}


def test_one_malformed_account_delta_never_costs_its_neighbours() -> None:
    """A batch with a good delta, a calendar delta and an account delta without date gives one
    notification, one skipped delta and one malformed delta named by its index."""
    broken = delta("c", "account.invalid")
    del broken["date"]
    body = {"deltas": [delta("b", "account.running"), CALENDAR_DELTA, broken]}
    delivery = parse_delivery(json.dumps(body).encode())
    assert [(n.account_id, n.trigger) for n in delivery.notifications] == [("b", "account.running")]
    assert delivery.skipped == ["calendar/calendar.updated"]
    [bad] = delivery.malformed
    assert (bad.index, bad.field) == (2, "$.deltas[2].date")
    assert json.loads(bad.raw) == broken


@pytest.mark.parametrize(
    ("odd", "field"),
    [(17, "$.deltas[1]"), (None, "$.deltas[1]"), ({"date": 1}, "$.deltas[1].object")],
    ids=["number", "null", "says-nothing"],
)
def test_a_delta_that_is_not_readable_is_malformed_alone(odd: object, field: str) -> None:
    """A delta that is no object, or says neither object nor type, is malformed at its index."""
    body = {"deltas": [delta("a"), odd]}
    delivery = parse_delivery(json.dumps(body).encode())
    assert len(delivery.notifications) == 1
    assert [m.field for m in delivery.malformed] == [field]


def test_the_account_is_the_account_field_never_the_object_id() -> None:
    """A delta whose object id differs from its account id is about `object_data.account_id`."""
    d = delta("acct-1", "account.stopped")
    d["object_data"]["id"] = "something-else"
    [n] = parse_notifications(json.dumps({"deltas": [d]}).encode())
    assert n.account_id == "acct-1"
    assert n.details["object_id"] == "something-else"


@given(
    st.lists(
        st.sampled_from(
            [delta("a"), delta("b", "account.stopped"), CALENDAR_DELTA, {"date": 1}, 3, {}]
        )
        | st.dictionaries(st.sampled_from(["object", "type", "date", "object_data"]), st.text()),
        max_size=8,
    )
)
def test_every_delta_is_recorded_skipped_or_malformed_exactly_once(deltas: list[object]) -> None:
    """Whatever a batch holds, each of its deltas ends in exactly one of the three lists."""
    delivery = parse_delivery(json.dumps({"deltas": deltas}).encode())
    total = len(delivery.notifications) + len(delivery.skipped) + len(delivery.malformed)
    assert total == len(deltas)
    assert [m.index for m in delivery.malformed] == sorted({m.index for m in delivery.malformed})


# --- v3 variety ---


def test_v3_without_time_is_dated_by_receipt_and_says_so() -> None:
    """A v3 body without `time` gets the time of receipt and `time_missing` in its details."""
    body = {k: v for k, v in V3_UPDATED.items() if k != "time"}
    received = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    [n] = parse_notifications(json.dumps(body).encode(), received_at=received)
    assert n.occurred_at == received
    assert n.details["time_missing"] is True
    [dated] = parse_notifications(json.dumps(V3_UPDATED).encode(), received_at=received)
    assert "time_missing" not in dated.details


def test_v3_opaque_ids_and_extra_fields_are_kept() -> None:
    """A v3 id that is no UUID is the dedupe key as given; unknown fields stay in the details."""
    body = json.loads(json.dumps(V3_UPDATED))
    body["id"] = "Kkx2QQB7TWjWM3KXRQQn562394"
    body["data"]["object"]["metric"] = 1934
    body["extra_top_level"] = {"x": 1}
    [n] = parse_notifications(json.dumps(body).encode())
    assert n.input_id == "v3:Kkx2QQB7TWjWM3KXRQQn562394"
    assert n.details["metric"] == 1934


def test_v3_notifications_about_other_objects_are_skipped() -> None:
    """A v3 message or calendar notification is skipped, whatever it lacks."""
    for body in (
        {"specversion": "1.0", "type": "message.created", "id": "m1"},
        {"specversion": "1.0", "type": "calendar.created", "data": None},
    ):
        delivery = parse_delivery(json.dumps(body).encode())
        assert delivery.notifications == []
        assert len(delivery.skipped) == 1


def test_v3_grant_named_beside_the_object_is_the_account() -> None:
    """A v3 body naming the grant in `data.grant_id` rather than the object is still read."""
    body = json.loads(json.dumps(V3_UPDATED))
    del body["data"]["object"]["grant_id"]
    body["data"]["grant_id"] = "grant-9"
    [n] = parse_notifications(json.dumps(body).encode())
    assert n.account_id == "grant-9"
