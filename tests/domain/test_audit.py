"""The audit timeline and the funnel at a past moment, over store-shaped records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from daemon.domain import encode_event
from daemon.runtime.audit import (
    MoveCheck,
    render_timeline,
    replay,
    timeline,
    timeline_as_json,
    transitions,
)
from eventstore import RecordedEvent

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def records(flow, metadata: bytes = b"{}") -> list[RecordedEvent]:
    out = []
    for logged in flow.h.log:
        encoded = encode_event(logged.event)
        out.append(
            RecordedEvent(
                logged.position,
                logged.stream,
                logged.version,
                encoded.type,
                encoded.schema,
                encoded.data,
                metadata,
                logged.event_id,
                logged.event.occurred_at or flow.now,
                "",
            )
        )
    return out


def test_timeline_shows_every_step_with_states_and_reasons(flow):
    """An account's timeline lists enrolment, inputs, transitions and effects with reasons."""
    flow.setup("a", "b")
    flow.auth(1, account="b")
    flow.to_second_step_due()
    flow.auth(35)
    flow.hook("account.running", 36)
    entries = timeline(records(flow), "a")
    assert entries[0].type == "AccountsEnrolled"
    assert all(e.type != "AuthRecorded" or e.data["account_id"] == "a" for e in entries)
    moves = [(e.state_before, e.state_after) for e in transitions(entries)]
    assert moves == [
        ("dynamic", "first_auth"),
        ("first_auth", "stopped_waiting"),
        ("stopped_waiting", "second_step_due"),
        ("second_step_due", "second_auth"),
        ("second_auth", "static"),
    ]
    assert any("second auth after the second step came due" in e.reason for e in entries)
    assert entries[-1].source.startswith("hook-")  # from the event id when no metadata


def test_timeline_source_comes_from_metadata(flow):
    """When the store's metadata names a source, the timeline shows it."""
    flow.setup()
    flow.auth(1)
    entries = timeline(records(flow, b'{"source": "webhook:v2"}'), "a")
    assert {e.source for e in entries} == {"webhook:v2"}


def test_timeline_text_and_json_forms(flow):
    """The timeline renders as one text line per event and as JSON-serialisable dicts."""
    flow.to_second_step_due()
    entries = timeline(records(flow), "a")
    text = render_timeline(entries)
    assert len(text.splitlines()) == len(entries)
    assert "stopped_waiting -> second_step_due" in text
    as_json = json.dumps(timeline_as_json(entries))
    assert '"state_after": "second_step_due"' in as_json


def test_funnel_at_a_position_and_a_time(flow):
    """The funnel can be read as it was at an earlier position or recording time."""
    flow.setup("a", "b")
    flow.auth(1, account="a")
    cut = len(flow.h.log)
    flow.auth(5, account="b")
    recs = records(flow)
    assert replay(recs, until_position=cut).funnel()["first_auth"] == 1
    assert replay(recs).funnel()["first_auth"] == 2
    assert replay(recs, until_time=flow.at(1) + timedelta(seconds=1)).funnel()["first_auth"] == 1
    assert replay(recs).position == len(recs)


def check_moves(rows) -> MoveCheck:
    check = MoveCheck()
    for r in rows:
        check(r.position, r.stream, r.type, r.schema, r.data.decode(), r.event_id)
    return check


def test_move_check_finds_nothing_wrong_in_a_log_the_rules_wrote(flow):
    """Every move of a whole migration, and of a reset after it, is one the table allows."""
    flow.to_second_step_due()
    flow.auth(35)
    flow.hook("account.running", 36)
    flow.operator("reset")
    check = check_moves(records(flow))
    assert check.findings == []
    assert check.moves_checked == 6


def _move(position: int, event_id: str, from_state: str, to_state: str) -> RecordedEvent:
    data = json.dumps(
        {"type": "StateChanged", "occurred_at": "2025-03-01T12:00:00Z", "account_id": "a",
         "from_state": from_state, "to_state": to_state, "at": "2025-03-01T12:00:00Z",
         "reason": "", "cycle": 1}
    ).encode()  # fmt: skip
    return RecordedEvent(position, "account-a", position, "StateChanged", 1, data, b"{}",
                         event_id, T0, "")  # fmt: skip


def test_move_check_without_the_input_record_allows_a_move_some_input_allows():
    """A move whose input record is not in the log is checked against every kind of input:
    allowed if any allows it, reported (with no kind of input) if none does."""
    check = check_moves(
        [_move(1, "x", "dynamic", "first_auth"), _move(2, "y", "first_auth", "dynamic")]
    )
    assert check.findings == []
    check = check_moves([_move(1, "x#1", "dynamic", "static"), _move(2, "y#1", "static", "paused")])
    assert [(f.position, f.kind, f.on) for f in check.findings] == [
        (1, "illegal_move", None),
        (2, "illegal_move", None),
    ]
    assert "not allowed on any input" in check.findings[0].detail


def test_move_check_names_an_unreadable_move():
    """A StateChanged without its states is reported, not skipped."""
    bad = RecordedEvent(3, "account-a", 3, "StateChanged", 1, b'{"to_state": 1}', b"{}", "z#1",
                        T0, "")  # fmt: skip
    [finding] = check_moves([bad]).findings
    assert (finding.position, finding.kind, finding.account_id) == (3, "unreadable_move", "a")
