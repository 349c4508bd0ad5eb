"""append_many: several independent append calls in one transaction, one outcome each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventstore import (
    AppendCall,
    AppendResult,
    EventStore,
    InvalidEvent,
    NewEvent,
    WrongExpectedVersion,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """A fresh store on each backend (the PostgreSQL one skipped, saying why, without it)."""
    target = tmp_path / "log.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = await EventStore.open(target)
    try:
        yield s
    finally:
        await s.close()


def ev(stream: str, event_id: str) -> NewEvent:
    return NewEvent(stream, "T", b'{"n": 1}', event_id=event_id)


async def test_each_call_gets_its_own_outcome_and_the_others_are_written(
    store: EventStore,
) -> None:
    """A call with a wrong expected version fails alone; the others commit in one transaction."""
    outcomes = await store.append_many(
        [
            AppendCall([ev("a", "a1")], expected=0),
            AppendCall([ev("b", "b1")], expected=5),  # wrong: b has no events
            AppendCall([ev("a", "a2"), ev("c", "c1")], expected={"a": 1}),  # sees a1
        ]
    )
    assert isinstance(outcomes[0], AppendResult)
    assert isinstance(outcomes[1], WrongExpectedVersion)
    assert isinstance(outcomes[2], AppendResult)
    stored = [r async for r in store.read_all()]
    assert [(r.event_id, r.stream, r.version) for r in stored] == [
        ("a1", "a", 1),
        ("a2", "a", 2),
        ("c1", "c", 1),
    ]
    assert len({r.recorded_at for r in stored}) == 1  # one transaction, one commit time
    assert outcomes[2].records == tuple(stored[1:])


async def test_a_call_whose_guard_is_stored_is_skipped_whole(store: EventStore) -> None:
    """A redelivered input's call is skipped, none of its events written; a new one is written."""
    await store.append([ev("a", "x#0")])
    skipped, written = await store.append_many(
        [
            AppendCall([ev("a", "x#0"), ev("a", "x#1")], if_absent="x#0"),
            AppendCall([ev("a", "y#0")], if_absent="y#0"),
        ]
    )
    assert isinstance(skipped, AppendResult)
    assert skipped.skipped
    assert isinstance(written, AppendResult)
    assert written.created == (True,)
    assert [r.event_id async for r in store.read_all()] == ["x#0", "y#0"]


async def test_an_invalid_call_gets_invalid_event_and_the_others_are_written(
    store: EventStore,
) -> None:
    """An event that is not JSON fails its own call only; an empty batch is no outcomes."""
    bad, good = await store.append_many(
        [AppendCall([NewEvent("b", "T", b"not json")]), AppendCall([ev("a", "a1")])]
    )
    assert isinstance(bad, InvalidEvent)
    assert isinstance(good, AppendResult)
    assert [r.event_id async for r in store.read_all()] == ["a1"]
    assert await store.append_many([]) == []


async def test_a_call_is_skipped_when_any_of_its_guards_is_stored(store: EventStore) -> None:
    """Several inputs in one call: if any of them was recorded before, nothing of it is written."""
    await store.append([ev("a", "in-2#0")])
    (skipped,) = await store.append_many(
        [AppendCall([ev("a", "in-1#0"), ev("a", "in-3#0")], if_absent=["in-1#0", "in-2#0"])]
    )
    assert isinstance(skipped, AppendResult)
    assert skipped.skipped
    assert [r.event_id async for r in store.read_all()] == ["in-2#0"]
