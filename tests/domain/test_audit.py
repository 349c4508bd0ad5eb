"""The audit timeline and the funnel at a past moment, over store-shaped records."""

from __future__ import annotations

import json
from datetime import timedelta

from daemon.domain import encode_event
from daemon.runtime.audit import render_timeline, replay, timeline, timeline_as_json, transitions
from eventstore import RecordedEvent


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
