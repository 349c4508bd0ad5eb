"""Event encoding, decoding, upcasting and the purity of the domain package."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import daemon.domain as domain
from daemon.domain import (
    EVENT_TYPES,
    AccountsEnrolled,
    AuthRecorded,
    TimerFired,
    UnknownEvent,
    decode_event,
    encode_event,
    meaning_of,
    stream_of,
)
from daemon.runtime.projections import Projection
from eventstore import RecordedEvent

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_every_event_round_trips_through_the_store_format(flow):
    """Each event a full flow produces decodes back to an equal event."""
    flow.to_second_step_due()
    flow.auth(35)
    flow.hook("account.running", 36)
    for logged in flow.h.log:
        encoded = encode_event(logged.event)
        assert encoded.type in EVENT_TYPES
        assert decode_event(encoded.type, encoded.schema, encoded.data) == logged.event


def test_timer_fired_schema_1_is_upcast_with_its_lateness():
    """A TimerFired written before `lateness` existed reads with lateness = fired_at - due_at."""
    old = {
        "type": "TimerFired",
        "occurred_at": "2025-03-01T12:05:00Z",
        "account_id": "a",
        "timer_id": "a:second_step:1",
        "purpose": "second_step",
        "due_at": "2025-03-01T12:00:00Z",
        "fired_at": "2025-03-01T12:05:00Z",
    }
    event = decode_event("TimerFired", 1, msgspec.json.encode(old))
    assert isinstance(event, TimerFired)
    assert event.lateness == timedelta(minutes=5)
    assert encode_event(event).schema == 2


def test_unknown_type_and_newer_schema_decode_to_unknown_event():
    """Replay survives events it cannot read, keeping their account for the stream version."""
    event = decode_event("SomethingNew", 1, b'{"account_id": "a", "x": 1}')
    assert isinstance(event, UnknownEvent)
    assert stream_of(event) == "account-a"
    newer = decode_event("AuthRecorded", 99, b"{}")
    assert isinstance(newer, UnknownEvent)
    assert encode_event(newer).data == b"{}"


def test_a_word_outside_the_vocabulary_reads_as_unknown_and_replay_carries_on(flow):
    """A log holding a state, flag or purpose this version does not know still replays: that
    event is an UnknownEvent of its account, counted in the stream's version, and the rest
    reads as before."""
    flow.setup()
    flow.auth(1)
    odd = [
        (
            "StateChanged",
            1,
            {
                "from_state": "first_auth",
                "to_state": "paused",
                "at": "2025-03-01T12:05:00Z",
                "reason": "",
                "cycle": 1,
            },
        ),
        ("FlagRaised", 1, {"flag": "suspicious", "reason": ""}),
        (
            "TimerFired",
            1,
            {
                "timer_id": "t",
                "purpose": "snooze",
                "due_at": "2025-03-01T12:05:00Z",
                "fired_at": "2025-03-01T12:05:00Z",
            },
        ),
    ]
    projection = Projection()
    position = 0
    for logged in flow.h.log:
        position += 1
        encoded = encode_event(logged.event)
        projection.apply_record(
            _record(position, logged.stream, encoded.type, encoded.schema, encoded.data)
        )
    for type_, schema, fields in odd:
        data = {"type": type_, "occurred_at": "2025-03-01T12:05:00Z", "account_id": "a", **fields}
        position += 1
        event = projection.apply_record(
            _record(position, "account-a", type_, schema, msgspec.json.encode(data))
        )
        assert isinstance(event, UnknownEvent)
        assert (event.event_type, event.account_id) == (type_, "a")
    state = projection.account("a")
    assert state is not None
    assert state.version == flow.state().version + len(odd)
    assert (state.state, state.flags) == ("first_auth", flow.state().flags)


def _record(position: int, stream: str, type_: str, schema: int, data: bytes) -> RecordedEvent:
    return RecordedEvent(position, stream, 0, type_, schema, data, b"{}", f"e{position}", AT, "")


def test_aware_utc_times_are_required():
    """A naive datetime in stored data is rejected rather than silently misread."""
    data = msgspec.json.encode(
        {
            "type": "AuthRecorded",
            "occurred_at": "2025-03-01T12:00:00",
            "account_id": "a",
            "source": "app",
            "classification": "normal",
            "reason": "",
        }
    )
    with pytest.raises(msgspec.ValidationError):
        decode_event("AuthRecorded", 1, data)


def test_streams_of_account_and_application_events():
    """Account events go to account-<id>, application events to `application`."""
    auth = AuthRecorded(
        account_id="x1", occurred_at=AT, source="app", classification="normal", reason=""
    )
    enrolled = AccountsEnrolled(
        occurred_at=AT, account_ids=("x1",), wave="w", policy="notify", actor="op", reason=""
    )
    assert stream_of(auth) == "account-x1"
    assert stream_of(enrolled) == "application"


@pytest.mark.parametrize(
    ("version", "trigger", "details", "meaning"),
    [
        (2, "account.stopped", {}, "stopped"),
        (2, "account.running", {}, "running"),
        (2, "account.connected", {}, "connected"),
        (2, "account.invalid", {}, "invalid"),
        (2, "account.sync_error", {}, "sync_error"),
        (3, "grant.updated", {"reauthentication_flag": True}, "auth"),
        (3, "grant.updated", {"code": 25027}, "auth"),
        (3, "grant.updated", {"code": 25014}, "updated"),
        (3, "grant.expired", {}, "invalid"),
        (3, "grant.deleted", {}, "deleted"),
        (3, "account.stopped", {}, "unrecognised"),
    ],
)
def test_trigger_table(version, trigger, details, meaning):
    """Provider triggers map to domain meanings through the one table."""
    assert meaning_of(version, trigger, details) == meaning


def test_domain_never_reads_the_clock():
    """No `now()`, `utcnow()` or `today()` call appears in the domain package."""
    package = Path(domain.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"now", "utcnow", "today"}, path.name
