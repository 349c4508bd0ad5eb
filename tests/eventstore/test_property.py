"""Property: any sequence of appends (random expectations, repeated ids) matches a simple model."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import ANY, EventStore, NewEvent, WrongExpectedVersion
from eventstore.testing import ThrowawayPostgres

STREAMS = ["a", "b", "c"]
event_st = st.tuples(
    st.sampled_from(STREAMS),
    st.one_of(st.none(), st.sampled_from(["id1", "id2", "id3", "id4", "id5"])),
    st.integers(0, 9),
)
expected_st = st.one_of(
    st.integers(-1, 3),
    st.dictionaries(st.sampled_from(STREAMS), st.integers(-1, 3), max_size=3),
)
call_st = st.tuples(st.lists(event_st, min_size=1, max_size=4), expected_st)


class Model:
    """The rules of append, as plainly as possible."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, str, bytes]] = []  # stream, version, event_id, data
        self.by_id: dict[str, int] = {}  # event_id -> index in log

    def version(self, stream: str) -> int:
        return sum(1 for e in self.log if e[0] == stream)

    def append(self, events: list[NewEvent], expected) -> list[tuple] | str:
        new = []
        seen: set[str] = set()
        for e in events:
            if e.event_id not in self.by_id and e.event_id not in seen:
                seen.add(e.event_id)
                new.append(e)
        for stream in dict.fromkeys(e.stream for e in new):
            want = expected if isinstance(expected, int) else expected.get(stream, ANY)
            if want != ANY and want != self.version(stream):
                return "conflict"
        for e in new:
            self.by_id[e.event_id] = len(self.log)
            self.log.append((e.stream, self.version(e.stream) + 1, e.event_id, e.data))
        return [self.log[self.by_id[e.event_id]] for e in events]


async def scenario(path: Path | str, calls, concurrent: bool) -> None:
    model = Model()
    counter = 0
    prepared = []
    for raw_events, expected in calls:
        events = []
        for stream, eid, n in raw_events:
            counter += 1
            events.append(NewEvent(stream, "T", b'{"n": %d}' % n, event_id=eid or f"gen{counter}"))
        prepared.append((events, expected))
    async with await EventStore.open(path, synchronous="NORMAL") as store:
        if concurrent:
            # Queued together, the calls share group commits but keep their order.
            results = await asyncio.gather(
                *(store.append(e, x) for e, x in prepared), return_exceptions=True
            )
        else:
            results = []
            for e, x in prepared:
                try:
                    results.append(await store.append(e, x))
                except WrongExpectedVersion as exc:
                    results.append(exc)
        for (events, expected), got in zip(prepared, results, strict=True):
            want = model.append(events, expected)
            if want == "conflict":
                assert isinstance(got, WrongExpectedVersion)
            else:
                assert not isinstance(got, BaseException), got
                assert [(r.stream, r.version, r.event_id, r.data) for r in got.records] == want
        stored = [(r.stream, r.version, r.event_id, r.data) async for r in store.read_all()]
        assert stored == model.log
        positions = [r.position async for r in store.read_all()]
        assert positions == list(range(1, len(model.log) + 1))
        for stream in STREAMS:
            got_stream = [(r.stream, r.version) async for r in store.read_stream(stream)]
            assert got_stream == [(s, v) for s, v, _, _ in model.log if s == stream]
        assert (await store.verify()).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(call_st, max_size=12), concurrent=st.booleans())
def test_appends_match_model(calls, concurrent: bool) -> None:
    """Whatever the calls, stored events, versions, duplicates and conflicts match the model."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "log.db", calls, concurrent))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(call_st, max_size=12), concurrent=st.booleans())
def test_appends_match_model_on_postgres(
    pg_server: ThrowawayPostgres, calls, concurrent: bool
) -> None:
    """The same rule holds on the PostgreSQL backend, each example in a fresh database."""
    name = pg_server.create_database()
    try:
        asyncio.run(scenario(pg_server.url(name), calls, concurrent))
    finally:
        pg_server.drop_database(name)
