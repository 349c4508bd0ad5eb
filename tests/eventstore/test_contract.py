"""The event store's contract: promises any backend must keep, written once as a base class."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from eventstore import (
    ANY,
    GENESIS,
    NO_STREAM,
    EventStore,
    InvalidEvent,
    NewEvent,
    ReadOnlyStore,
    StoreClosed,
    WrongExpectedVersion,
)

pytestmark = pytest.mark.anyio


def ev(stream: str = "s", n: int = 0, event_id: str | None = None) -> NewEvent:
    return NewEvent(stream, "Happened", b'{"n": %d}' % n, event_id=event_id)


async def collect(it: AsyncIterator, limit: int | None = None) -> list:
    out = []
    async for item in it:
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


class EventStoreContract:
    """Subclass and provide a `location` fixture: where `EventStore.open` makes an empty log
    (a file path or a database URL)."""

    # Whether the backend reads a snapshot part synchronously (`part_fetcher` not None).
    synchronous_parts = True

    @pytest.fixture
    def location(self) -> str:
        raise NotImplementedError("a backend's test class says where an empty log is made")

    @pytest.fixture
    async def store(self, location: str) -> AsyncIterator[EventStore]:
        s = await EventStore.open(location)
        try:
            yield s
        finally:
            await s.close()

    async def test_append_assigns_positions_and_versions(self, store: EventStore) -> None:
        """Appended events get gap-free positions and per-stream versions in input order."""
        r = await store.append([ev("a", 1), ev("b", 2), ev("a", 3)])
        assert [x.position for x in r.records] == [1, 2, 3]
        assert [(x.stream, x.version) for x in r.records] == [("a", 1), ("b", 1), ("a", 2)]
        assert r.created == (True, True, True)
        assert r.last_position == 3
        assert r.new_records == r.records
        assert r.duplicates == ()

    async def test_read_all_returns_what_append_returned(self, store: EventStore) -> None:
        """Reading the log back gives exactly the records append returned, in order."""
        r1 = await store.append([ev("a", i) for i in range(5)])
        r2 = await store.append([ev("b", i) for i in range(5)])
        got = await collect(store.read_all())
        assert got == list(r1.records + r2.records)
        assert all(x.recorded_at.utcoffset() is not None for x in got)
        assert all(len(x.hash) == 64 for x in got)

    async def test_read_all_bounds_and_small_batches(self, store: EventStore) -> None:
        """read_all honours from/to positions whatever the batch size."""
        await store.append([ev("a", i) for i in range(10)])
        got = await collect(store.read_all(3, 8, batch=2))
        assert [x.position for x in got] == [3, 4, 5, 6, 7, 8]
        assert [x.position for x in await collect(store.read_all(9, batch=3))] == [9, 10]
        assert await collect(store.read_all(11)) == []
        assert await collect(store.read_all(5, 4)) == []

    async def test_read_stream_from_version(self, store: EventStore) -> None:
        """read_stream yields only that stream's events from the given version."""
        await store.append([ev("a", 1), ev("b", 1), ev("a", 2), ev("a", 3)])
        got = await collect(store.read_stream("a", 2))
        assert [(x.stream, x.version) for x in got] == [("a", 2), ("a", 3)]
        assert await collect(store.read_stream("nope")) == []

    async def test_data_is_stored_byte_for_byte(self, store: EventStore) -> None:
        """Data and metadata come back exactly as given, whitespace and non-ASCII included."""
        data = '{ "name" : "Zoë ✓",\n "n":1.50 }'.encode()
        meta = b'{"source":"test",  "correlation_id":"c1"}'
        r = await store.append([NewEvent("s", "T", data, schema=3, metadata=meta)])
        (got,) = await collect(store.read_all())
        assert got.data == data
        assert got.metadata == meta
        assert got.schema == 3
        assert got == r.records[0]

    async def test_no_stream_expectation(self, store: EventStore) -> None:
        """NO_STREAM succeeds on a new stream and fails, writing nothing, on an existing one."""
        await store.append([ev("a")], NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append([ev("a"), ev("a")], NO_STREAM)
        assert (info.value.stream, info.value.expected, info.value.actual) == ("a", 0, 1)
        assert (await store.head())[0] == 1

    async def test_exact_expectation(self, store: EventStore) -> None:
        """An exact expected version must equal the stream's last version."""
        await store.append([ev("a"), ev("a")])
        r = await store.append([ev("a")], 2)
        assert r.records[0].version == 3
        with pytest.raises(WrongExpectedVersion):
            await store.append([ev("a")], 2)
        r = await store.append([ev("a")], ANY)
        assert r.records[0].version == 4

    async def test_mapping_expectation_is_all_or_nothing(self, store: EventStore) -> None:
        """With per-stream expectations, one conflicting stream rejects the whole call."""
        await store.append([ev("a")])
        with pytest.raises(WrongExpectedVersion):
            await store.append([ev("b"), ev("a")], {"b": NO_STREAM, "a": NO_STREAM})
        assert await collect(store.read_stream("b")) == []
        r = await store.append([ev("b"), ev("a")], {"b": NO_STREAM, "a": 1})
        assert [x.version for x in r.records] == [1, 2]

    async def test_duplicate_event_id_returns_stored_record(self, store: EventStore) -> None:
        """Re-appending a stored event_id writes nothing and returns the stored record."""
        first = await store.append([ev("a", 1, event_id="id-1")])
        again = await store.append([ev("a", 99, event_id="id-1"), ev("a", 2, event_id="id-2")])
        assert again.created == (False, True)
        assert again.records[0] == first.records[0]
        assert again.duplicates == (first.records[0],)
        assert again.records[1].position == 2
        assert (await store.head())[0] == 2

    async def test_all_duplicate_retry_never_conflicts(self, store: EventStore) -> None:
        """Retrying a call whose events are all stored succeeds even with a stale expectation."""
        first = await store.append([ev("a", event_id="x"), ev("a", event_id="y")], NO_STREAM)
        retry = await store.append([ev("a", event_id="x"), ev("a", event_id="y")], NO_STREAM)
        assert retry.records == first.records
        assert retry.created == (False, False)

    async def test_duplicate_within_one_call_resolves_to_first(self, store: EventStore) -> None:
        """An event_id repeated inside one call is written once; both entries get that record."""
        r = await store.append([ev("a", 1, event_id="d"), ev("a", 2, event_id="d")])
        assert r.created == (True, False)
        assert r.records[0] == r.records[1]
        assert (await store.head())[0] == 1

    async def test_get_event(self, store: EventStore) -> None:
        """get_event finds a record by event_id and returns None for an unknown id."""
        r = await store.append([ev("a")])
        assert await store.get_event(r.records[0].event_id) == r.records[0]
        assert await store.get_event("unknown") is None

    async def test_head(self, store: EventStore) -> None:
        """head() is (0, GENESIS) when empty, then the last position and its hash."""
        assert await store.head() == (0, GENESIS)
        r = await store.append([ev("a"), ev("b")])
        assert await store.head() == (2, r.records[-1].hash)

    async def test_generated_event_ids_are_time_ordered(self, store: EventStore) -> None:
        """Ids the store assigns are unique and sort in append order."""
        r = await store.append([ev("a", i) for i in range(50)])
        ids = [x.event_id for x in r.records]
        assert len(set(ids)) == 50
        assert ids == sorted(ids)

    @pytest.mark.parametrize("data", [b"[1, 2]", b"not json", b'"text"', b"\xff{}", b""])
    async def test_invalid_json_is_refused(self, store: EventStore, data: bytes) -> None:
        """Data that is not a UTF-8 JSON object is refused before anything is written."""
        with pytest.raises(InvalidEvent):
            await store.append([ev("a"), NewEvent("a", "T", data)])
        assert (await store.head())[0] == 0

    async def test_empty_append(self, store: EventStore) -> None:
        """Appending no events returns an empty result and writes nothing."""
        r = await store.append([])
        assert r.records == ()
        assert r.last_position == 0

    async def test_subscribe_catches_up_then_goes_live(self, store: EventStore) -> None:
        """A subscriber sees old events, then new ones as they commit, each exactly once."""
        await store.append([ev("a", i) for i in range(3)])
        seen: list[int] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async for e in store.subscribe(2):
                        seen.append(e.position)
                        if e.position == 6:
                            return

                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                await store.append([ev("b")])
                await store.append([ev("b"), ev("b")])
        assert seen == [2, 3, 4, 5, 6]

    async def test_if_absent_skips_the_whole_call_when_its_guard_is_stored(
        self, store: EventStore
    ) -> None:
        """A call guarded by a stored id writes nothing, even new events, and never conflicts."""
        first = await store.append([ev("a", 1, event_id="in-1#0"), ev("a", 2, event_id="in-1#1")])
        again = await store.append(
            [ev("a", 1, event_id="in-1#0"), ev("b", 9, event_id="in-1#7")],
            expected=0,  # stale: a guarded redelivery must not fail on it
            if_absent="in-1#0",
        )
        assert again.skipped
        assert again.records == (first.records[0],)
        assert (await store.head())[0] == 2
        fresh = await store.append([ev("a", 3, event_id="in-2#0")], if_absent="in-2#0")
        assert not fresh.skipped
        assert fresh.created == (True,)

    async def test_if_absent_guards_within_one_batch(self, store: EventStore) -> None:
        """Of two concurrent calls with the same guard, exactly one is written."""
        results = []

        async def put(n: int) -> None:
            results.append(await store.append([ev("s", n, event_id="dup#0")], if_absent="dup#0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(put, 1)
            tg.start_soon(put, 2)
        assert sorted(r.skipped for r in results) == [False, True]
        assert (await store.head())[0] == 1

    async def test_commit_listener_sees_each_new_record_once_before_appenders_return(
        self, store: EventStore
    ) -> None:
        """on_commit hands every new record, in order, before the append returns; not dups."""
        batches: list[list[int]] = []
        remove = store.on_commit(lambda records: batches.append([r.position for r in records]))
        r = await store.append([ev("a", 1, event_id="x"), ev("b", 2)])
        assert batches[-1] == [1, 2]
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.append, [ev(f"s{i}", i)])
        await store.append([ev("a", 1, event_id="x")])  # a duplicate: nothing new to hand out
        remove()
        await store.append([ev("c", 3)])
        seen = [p for batch in batches for p in batch]
        assert seen == list(range(1, 23))
        assert r.last_position == 2

    async def test_a_failing_commit_listener_is_dropped_and_the_log_goes_on(
        self, store: EventStore
    ) -> None:
        """A listener that raises is removed; appends keep working for everyone."""
        calls: list[int] = []

        def broken(records: list) -> None:
            calls.append(len(records))
            raise RuntimeError("listener bug")

        store.on_commit(broken)
        await store.append([ev("a", 1)])
        await store.append([ev("a", 2)])
        assert calls == [1]
        assert (await store.head())[0] == 2

    async def test_commit_observers_are_told_each_batch_duration_and_events_written(
        self, store: EventStore
    ) -> None:
        """observe_commits gets (seconds, events) per committed batch; a duplicate writes 0."""
        seen: list[tuple[float, int]] = []
        remove = store.observe_commits(lambda seconds, events: seen.append((seconds, events)))
        await store.append([ev("a", 1, event_id="x"), ev("b", 2)])
        await store.append([ev("a", 1, event_id="x")])  # a duplicate: committed, nothing written
        remove()
        await store.append([ev("c", 3)])
        assert [events for _, events in seen] == [2, 0]
        assert all(seconds >= 0 for seconds, _ in seen)

    async def test_a_failing_commit_observer_is_dropped_and_the_log_goes_on(
        self, store: EventStore
    ) -> None:
        """An observer that raises is removed; appends keep working and listeners still hear."""
        calls: list[int] = []
        heard: list[int] = []

        def broken(seconds: float, events: int) -> None:
            calls.append(events)
            raise RuntimeError("observer bug")

        store.observe_commits(broken)
        store.on_commit(lambda records: heard.extend(r.position for r in records))
        await store.append([ev("a", 1)])
        await store.append([ev("a", 2)])
        assert calls == [1]
        assert heard == [1, 2]

    async def test_consumer_positions(self, store: EventStore) -> None:
        """A consumer's position is None until set, then the last value set."""
        assert await store.get_consumer_position("proj") is None
        await store.set_consumer_position("proj", 5)
        await store.set_consumer_position("proj", 7)
        await store.set_consumer_position("other", 1)
        assert await store.get_consumer_position("proj") == 7
        assert await store.get_consumer_position("other") == 1

    async def test_stored_event_ids_names_the_stored_ones_among_few_or_many(
        self, store: EventStore
    ) -> None:
        """Which ids are stored is answered the same for a handful (a delivery's dedupe check)
        as for more than one query's worth."""
        ids = [f"id-{i}" for i in range(1000)]
        await store.append([ev(f"s{i % 7}", i, event_id=ids[i]) for i in range(1000)])
        assert await store.stored_event_ids({ids[5], "nope", ids[-1]}) == {ids[5], ids[-1]}
        many = {*ids, *(f"unknown-{i}" for i in range(100))}
        assert await store.stored_event_ids(many) == set(ids)
        assert await store.stored_event_ids(set()) == set()

    async def test_snapshots(self, store: EventStore) -> None:
        """A snapshot is stored with its position and replaced as a whole."""
        assert await store.load_snapshot("acc") is None
        await store.save_snapshot("acc", 3, b"\x00state-3")
        await store.save_snapshot("acc", 9, b"state-9")
        assert await store.load_snapshot("acc") == (9, b"state-9")

    async def test_keyed_snapshot_parts_change_together_with_their_header(
        self, store: EventStore
    ) -> None:
        """A keyed snapshot keeps the parts written so far: new ones added, changed ones
        replaced, removed ones gone, all of them replaced by a complete write."""
        assert await store.load_snapshot_parts("proj") is None
        await store.save_snapshot_parts("proj", 3, b"h3", [("a", b"1"), ("b", b"1")])
        await store.save_snapshot_parts("proj", 5, b"h5", [("b", b"2"), ("c", b"1"), ("a", None)])
        assert await store.load_snapshot_parts("proj") == (5, b"h5", [("b", b"2"), ("c", b"1")])
        await store.save_snapshot_parts("other", 1, b"o", [("a", b"x")])
        await store.save_snapshot_parts("proj", 8, b"h8", [("d", b"1")], complete=True)
        assert await store.load_snapshot_parts("proj") == (8, b"h8", [("d", b"1")])
        assert await store.load_snapshot_parts("other") == (1, b"o", [("a", b"x")])

    async def test_a_snapshot_is_read_in_bulk_by_label_and_time_and_part_by_part(
        self, store: EventStore
    ) -> None:
        """A reader gives the parts' blobs by key, their keys by label (or one label's keys, the
        count per label, one key's label) and their times, as of when it opened; a part fetcher
        reads one part as last written (SQLite only: on PostgreSQL `part_fetcher` is None, a
        loader reads every part from the reader)."""
        assert await store.open_snapshot("proj") is None
        await store.save_snapshot_parts(
            "proj", 4, b"h4",
            [("c", b"3", "x", None), ("a", b"1", "x", "t1"), ("b", b"2", "y", "t2")],
        )  # fmt: skip
        fetch = store.part_fetcher("proj")
        assert (fetch is not None) == self.synchronous_parts
        reader = await store.open_snapshot("proj")
        assert reader is not None
        with reader:
            await store.save_snapshot_parts("proj", 6, b"h6", [("a", b"9", "y", None)])
            assert (reader.position, reader.header) == (4, b"h4")
            assert reader.blobs() == {"a": b"1", "b": b"2", "c": b"3"}
            assert reader.labels() == {"x": ["a", "c"], "y": ["b"]}
            assert reader.label_counts() == {"x": 2, "y": 1}
            assert (reader.keys_labelled("x"), reader.keys_labelled("zz")) == (["a", "c"], [])
            assert (reader.label("a"), reader.label("b"), reader.label("zz")) == ("x", "y", None)
            assert reader.times() == {"a": "t1", "b": "t2"}
            assert (reader.blob("b"), reader.blob("zz")) == (b"2", None)
        if fetch is not None:
            assert (fetch("a"), fetch("zz")) == (b"9", None)

    async def test_a_snapshots_labels_come_in_label_order_each_with_its_keys_in_order(
        self, store: EventStore
    ) -> None:
        """A reader lists the labels in order whatever order the keys are in, and each label's
        keys in order, so a loader builds the same model on every backend."""
        parts = [("a", b"1", "z", None), ("c", b"3", "m", None), ("b", b"2", "m", None)]
        await store.save_snapshot_parts("proj", 1, b"h", parts)
        reader = await store.open_snapshot("proj")
        assert reader is not None
        with reader:
            assert list(reader.labels().items()) == [("m", ["b", "c"]), ("z", ["a"])]

    async def test_a_snapshots_keys_by_label_come_whole_whatever_characters_they_hold(
        self, store: EventStore
    ) -> None:
        """Keys that are empty or hold separators or control characters are listed under
        their label exactly as written, none split or merged."""
        keys = ["", "a\x1fb", "a", "b\x1f", "\x1f", "c d,e\n"]
        await store.save_snapshot_parts("proj", 1, b"h", [(k, b"1", "l", None) for k in keys])
        await store.save_snapshot_parts("proj", 1, b"h", [("z", b"1", "m", None)])
        reader = await store.open_snapshot("proj")
        assert reader is not None
        with reader:
            assert reader.labels() == {"l": sorted(keys), "m": ["z"]}

    async def test_a_snapshot_without_its_header_is_absent_until_the_header_comes(
        self, store: EventStore
    ) -> None:
        """Parts written without a header (a large snapshot, a chunk per call) are invisible
        to readers until the call that brings the header."""
        await store.save_snapshot_parts("proj", 2, b"old", [("a", b"1")])
        await store.save_snapshot_parts("proj", 5, None, [("b", b"2")], complete=True)
        assert await store.open_snapshot("proj") is None
        await store.save_snapshot_parts("proj", 5, b"new", [("c", b"3")])
        reader = await store.open_snapshot("proj")
        assert reader is not None
        with reader:
            assert (reader.position, reader.header) == (5, b"new")
            assert reader.blobs() == {"b": b"2", "c": b"3"}

    async def test_verify_passes_on_intact_log(self, store: EventStore) -> None:
        """verify() reports ok with the head and checked counts on an untouched log."""
        await store.append([ev("a", i) for i in range(20)])
        cp = await store.checkpoint(b"secret", "k1")
        await store.append([ev("b")])
        report = await store.verify(b"secret")
        assert report.ok, report.damage
        assert report.events_checked == 21
        assert (report.head_position, report.head_hash) == await store.head()
        assert report.checkpoints_checked == 1
        assert cp.position == 20
        assert cp.key_id == "k1"

    async def test_closed_store_refuses_work(self, store: EventStore) -> None:
        """After close(), every operation raises StoreClosed."""
        await store.close()
        await store.close()
        with pytest.raises(StoreClosed):
            await store.append([ev("a")])
        with pytest.raises(StoreClosed):
            await store.head()
        with pytest.raises(StoreClosed):
            await collect(store.read_all())


Fill = Callable[[EventStore], Awaitable[None]]
Reopen = Callable[[Fill], Awaitable[EventStore]]


class ReadOnlyEventStoreContract:
    """Promises of a store opened read-only. Subclass and provide `location` (as for
    EventStoreContract); `reopen(fill)` writes there with a writable store, closes it, and
    returns the same log opened read-only."""

    @pytest.fixture
    def location(self) -> str:
        raise NotImplementedError("a backend's test class says where an empty log is made")

    @pytest.fixture
    async def reopen(self, location: str) -> AsyncIterator[Reopen]:
        opened: list[EventStore] = []

        async def reopen(fill: Fill) -> EventStore:
            async with EventStore.open(location) as store:
                await fill(store)
            ro = await EventStore.open(location, readonly=True)
            opened.append(ro)
            return ro

        try:
            yield reopen
        finally:
            for ro in opened:
                await ro.close()

    async def test_reads_give_what_was_written(self, reopen: Reopen) -> None:
        """A read-only store reads back exactly the records, head, streams and events written."""
        written: list = []

        async def fill(store: EventStore) -> None:
            written.extend((await store.append([ev("a", 1), ev("b", 2), ev("a", 3)])).records)

        ro = await reopen(fill)
        assert ro.readonly
        assert await collect(ro.read_all()) == written
        assert await collect(ro.read_all(2, 2, batch=1)) == written[1:2]
        assert [x.version for x in await collect(ro.read_stream("a"))] == [1, 2]
        assert await ro.get_event(written[1].event_id) == written[1]
        assert await ro.stored_event_ids({written[0].event_id, "nope"}) == {written[0].event_id}
        assert await ro.head() == (3, written[-1].hash)
        assert ro.healthy

    async def test_empty_log_reads_as_empty(self, reopen: Reopen) -> None:
        """A log with no events opens read-only with head (0, GENESIS)."""

        async def fill(store: EventStore) -> None:
            return None

        ro = await reopen(fill)
        assert await ro.head() == (0, GENESIS)
        assert await collect(ro.read_all()) == []

    async def test_snapshots_positions_and_verify(self, reopen: Reopen) -> None:
        """Snapshots, consumer positions, checkpoints and verify() work on a read-only store."""

        async def fill(store: EventStore) -> None:
            await store.append([ev("a", i) for i in range(10)])
            await store.save_snapshot("proj", 10, b"state")
            await store.set_consumer_position("proj", 10)
            await store.checkpoint(b"secret", "k1")

            await store.save_snapshot_parts("keyed", 10, b"head", [("k", b"v")])

        ro = await reopen(fill)
        assert await ro.load_snapshot("proj") == (10, b"state")
        assert await ro.load_snapshot_parts("keyed") == (10, b"head", [("k", b"v")])
        assert await ro.get_consumer_position("proj") == 10
        assert [c.position for c in await ro.checkpoints()] == [10]
        report = await ro.verify(b"secret")
        assert report.ok, report.damage
        assert (report.events_checked, report.checkpoints_checked) == (10, 1)
        assert not (await ro.verify(b"wrong key")).ok

    async def test_writing_calls_are_refused(self, reopen: Reopen) -> None:
        """Every writing or waiting call raises ReadOnlyStore and the log is unchanged."""

        async def fill(store: EventStore) -> None:
            await store.append([ev("a")])

        ro = await reopen(fill)
        with pytest.raises(ReadOnlyStore):
            await ro.append([ev("b")])
        with pytest.raises(ReadOnlyStore):
            await ro.checkpoint(b"secret")
        with pytest.raises(ReadOnlyStore):
            await ro.save_snapshot("proj", 1, b"x")
        with pytest.raises(ReadOnlyStore):
            await ro.save_snapshot_parts("proj", 1, b"x", [("k", b"v")])
        with pytest.raises(ReadOnlyStore):
            await ro.set_consumer_position("proj", 1)
        with pytest.raises(ReadOnlyStore):
            ro.on_commit(lambda records: None)
        with pytest.raises(ReadOnlyStore):
            await collect(ro.subscribe())
        assert (await ro.head())[0] == 1
        assert await ro.load_snapshot("proj") is None

    async def test_closed_readonly_store_refuses_work(self, reopen: Reopen) -> None:
        """After close(), a read-only store raises StoreClosed like a writable one."""

        async def fill(store: EventStore) -> None:
            await store.append([ev("a")])

        ro = await reopen(fill)
        await ro.close()
        await ro.close()
        assert not ro.healthy
        with pytest.raises(StoreClosed):
            await ro.head()
        with pytest.raises(StoreClosed):
            await ro.append([ev("a")])


class TestSQLiteEventStore(EventStoreContract):
    """The SQLite store keeps the contract."""

    @pytest.fixture
    def location(self, tmp_path) -> str:
        return str(tmp_path / "log.db")


class TestSQLiteReadOnlyEventStore(ReadOnlyEventStoreContract):
    """The SQLite store opened with readonly=True keeps the read-only contract."""

    @pytest.fixture
    def location(self, tmp_path) -> str:
        return str(tmp_path / "log.db")


class TestPostgresEventStore(EventStoreContract):
    """The PostgreSQL store keeps the contract."""

    synchronous_parts = False

    @pytest.fixture
    def location(self, pg_url: str) -> str:
        return pg_url


class TestPostgresReadOnlyEventStore(ReadOnlyEventStoreContract):
    """The PostgreSQL store opened with readonly=True keeps the read-only contract."""

    @pytest.fixture
    def location(self, pg_url: str) -> str:
        return pg_url
