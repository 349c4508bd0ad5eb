"""The writer inserts a batch without looking its ids up first, and falls back when one is stored.

Whatever the batch (ids stored already, repeated within it, guards, failing expectations), each
call is answered exactly as when every id was looked up before planning.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import ANY, AppendCall, AppendResult, EventStore, NewEvent, WrongExpectedVersion
from eventstore.chain import GENESIS
from eventstore.planner import PlannedCall, plan_batch, prepare_event, record_from_row
from eventstore.schema import EVENT_COLUMNS, MIGRATIONS
from eventstore.writer import _write_batch

NOW = "2026-01-01T00:00:00.000000Z"
IDS = [f"in{i}#0" for i in range(6)]


def ev(stream: str, event_id: str) -> NewEvent:
    return NewEvent(stream, "T", b'{"n": 1}', event_id=event_id)


@pytest.mark.anyio
async def test_a_batch_mixing_a_stored_id_with_new_events_answers_each_call_as_before(
    store: EventStore,
) -> None:
    """A redelivered event in a batch resolves to its stored record; the batch's new events are
    written once, and a guarded redelivery is skipped."""
    first = await store.append([ev("a", "x#0")])
    outcomes = await store.append_many(
        [
            AppendCall([ev("b", "n1")]),
            AppendCall([ev("a", "x#0"), ev("a", "x#1")]),  # one stored, one new
            AppendCall([ev("a", "x#0")], if_absent="x#0"),  # a redelivery: skipped
            AppendCall([ev("c", "n2")], expected=0),
        ]
    )
    new, mixed, skipped, last = outcomes
    assert isinstance(new, AppendResult)
    assert new.created == (True,)
    assert isinstance(mixed, AppendResult)
    assert mixed.created == (False, True)
    assert mixed.records[0] == first.records[0]
    assert isinstance(skipped, AppendResult)
    assert skipped.skipped
    assert isinstance(last, AppendResult)
    assert last.created == (True,)
    stored = [(r.event_id, r.stream, r.version) async for r in store.read_all()]
    assert stored == [("x#0", "a", 1), ("n1", "b", 1), ("x#1", "a", 2), ("n2", "c", 1)]
    report = await store.verify()
    assert report.ok


@pytest.mark.anyio
async def test_a_stored_id_in_a_call_whose_expectation_fails_still_fails_it(
    store: EventStore,
) -> None:
    """A call repeating a stored event beside a new one with a wrong expectation gets
    WrongExpectedVersion, as it always did, and writes nothing."""
    await store.append([ev("a", "x#0")])
    (outcome,) = await store.append_many([AppendCall([ev("a", "x#0"), ev("a", "y")], expected=5)])
    assert isinstance(outcome, WrongExpectedVersion)
    assert [r.event_id async for r in store.read_all()] == ["x#0"]


def _new_log() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for script in MIGRATIONS.values():
        db.executescript(script)
    return db


def _reference(conn: sqlite3.Connection, calls: list[PlannedCall]) -> list[object]:
    """The outcomes when every id is looked up before planning (the rules of plan_batch)."""
    ids = {e.event_id for c in calls for e in c[0]} | {g for c in calls for g in c[2]}
    marks = ",".join("?" * len(ids))
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({marks})"  # noqa: S608
    rows = conn.execute(sql, [*ids])
    stored = {r[7]: record_from_row(r) for r in rows}
    versions = dict(conn.execute("SELECT stream, MAX(version) FROM events GROUP BY stream"))
    head = conn.execute("SELECT position, hash FROM events ORDER BY position DESC").fetchone()
    plan = plan_batch(calls, *(head or (0, GENESIS)), versions, stored, NOW)
    return [_shape(o) for o in plan.outcomes]


def _shape(outcome: object) -> object:
    if isinstance(outcome, AppendResult):
        return ([r.position for r in outcome.records], outcome.created, outcome.skipped)
    return repr(outcome)


call_st = st.tuples(
    st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(IDS)), min_size=1, max_size=3),
    st.sampled_from([ANY, 0, 1, 2]),
    st.lists(st.sampled_from(IDS), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    stored=st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(IDS)), max_size=4),
    batch=st.lists(call_st, min_size=1, max_size=4),
)
def test_every_batch_is_answered_as_when_every_id_is_looked_up_first(
    stored: list[tuple[str, str]],
    batch: list[tuple[list[tuple[str, str]], int, list[str]]],
) -> None:
    """For any stored ids and any batch of calls (repeats, guards, expectations), the writer
    answers every call and writes the rows it would if it looked every id up first."""
    conn = _new_log()
    try:
        seed = [prepare_event(ev(s, i)) for i, s in {i: s for s, i in stored}.items()]
        if seed:
            _write_batch(conn, [((e,), ANY, ()) for e in seed], GENESIS, NOW)
        calls: list[PlannedCall] = [
            (tuple(prepare_event(ev(s, i)) for s, i in events), expected, tuple(guards))
            for events, expected, guards in batch
        ]
        want = _reference(conn, calls)
        plan, _ = _write_batch(conn, calls, GENESIS, NOW)
        assert [_shape(o) for o in plan.outcomes] == want
        written = [w[0] for w in conn.execute("SELECT event_id FROM events ORDER BY position")]
        assert len(set(written)) == len(written)
        assert [r.event_id for r in plan.records] == written[len(seed) :]
    finally:
        conn.close()
