"""Group commit under load, back-pressure, cancellation, and storage errors of the SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import anyio
import pytest

from eventstore import (
    DatabaseCorrupt,
    DatabaseMissing,
    EventStore,
    NewEvent,
    StorageUnavailable,
    StoreClosed,
    WriterBusy,
)
from eventstore.schema import MIGRATIONS

pytestmark = pytest.mark.anyio


def ev(stream: str = "s", event_id: str | None = None, size: int = 0) -> NewEvent:
    return NewEvent(stream, "T", b'{"pad": "%s"}' % (b"x" * size), event_id=event_id)


class WriteLock:
    """Holds SQLite's write lock from a plain connection, so the store's writer has to wait."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


async def test_two_thousand_concurrent_appenders(store: EventStore) -> None:
    """2,000 concurrent appends get unique gap-free positions; a subscriber sees each once."""
    n = 2_000
    seen: list[int] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for e in store.subscribe():
                    seen.append(e.position)
                    if len(seen) == n:
                        return

            tg.start_soon(consume)
            results = await asyncio.gather(
                *(store.append([ev(f"stream-{i % 97}")]) for i in range(n))
            )
    positions = [r.records[0].position for r in results]
    assert sorted(positions) == list(range(1, n + 1))
    assert seen == list(range(1, n + 1))
    # Versions within each stream follow the global commit order.
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for r in results:
        rec = r.records[0]
        by_stream.setdefault(rec.stream, []).append((rec.position, rec.version))
    for pairs in by_stream.values():
        pairs.sort()
        assert [v for _, v in pairs] == list(range(1, len(pairs) + 1))
    assert (await store.verify()).ok


async def test_conflict_in_a_batch_fails_only_that_call(tmp_path: Path) -> None:
    """In one group commit, the call with a wrong expectation fails and the others commit."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path) as store:
        lock = WriteLock(path)
        calls = [
            asyncio.ensure_future(store.append([ev("a")], 0)),
            asyncio.ensure_future(store.append([ev("a")], 0)),  # conflicts with the first
            asyncio.ensure_future(store.append([ev("b")], 0)),
        ]
        await asyncio.sleep(0.05)
        lock.release()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[0].records[0].position == 1
        assert type(results[1]).__name__ == "WrongExpectedVersion"
        assert results[2].records[0].position == 2


async def test_writer_busy_when_queue_stays_full(tmp_path: Path) -> None:
    """With a full queue, an append with enqueue_timeout raises WriterBusy and writes nothing."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path, queue_size=1) as store:
        lock = WriteLock(path)
        first = asyncio.ensure_future(store.append([ev("a", "first")]))  # taken by the writer
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(store.append([ev("a", "second")]))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(WriterBusy):
            await store.append([ev("a", "third")], enqueue_timeout=0.05)
        lock.release()
        await first
        await second
        assert await store.get_event("third") is None
        assert [e.event_id async for e in store.read_all()] == ["first", "second"]


async def test_cancelled_callers_are_all_or_nothing(tmp_path: Path) -> None:
    """Cancelled appenders leave each call fully written or absent, and the writer keeps going."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path) as store:
        lock = WriteLock(path)
        taken = asyncio.ensure_future(store.append([ev("a", "t1"), ev("a", "t2")]))
        await asyncio.sleep(0.05)  # the writer has taken `taken` and waits for the lock
        queued = asyncio.ensure_future(store.append([ev("b", "q1"), ev("b", "q2")]))
        await asyncio.sleep(0.01)
        taken.cancel()
        queued.cancel()
        lock.release()
        for fut in (taken, queued):
            with pytest.raises(asyncio.CancelledError):
                await fut
        after = await store.append([ev("c", "after")])
        ids = {e.event_id async for e in store.read_all()}
        for call in ({"t1", "t2"}, {"q1", "q2"}):
            assert call <= ids or not (call & ids)
        assert "after" in ids
        assert after.records[0].position == len(ids)
        assert (await store.verify()).ok


async def test_locked_database_is_storage_unavailable(tmp_path: Path) -> None:
    """A write lock held too long elsewhere gives StorageUnavailable; the store then recovers."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path, busy_timeout=0.05) as store:
        lock = WriteLock(path)
        with pytest.raises(StorageUnavailable):
            await store.append([ev("a")])
        assert not store.healthy
        assert isinstance(store.last_error, StorageUnavailable)
        lock.release()
        await store.append([ev("a")])
        assert store.healthy
        assert (await store.head())[0] == 1


async def test_a_probe_brings_the_store_back_to_healthy_without_an_append(tmp_path: Path) -> None:
    """While the write lock is held elsewhere a probe fails; once released a probe makes the
    store healthy again, and writes nothing."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path, busy_timeout=0.05) as store:
        lock = WriteLock(path)
        with pytest.raises(StorageUnavailable):
            await store.append([ev("a")])
        assert not await store.probe()
        assert not store.healthy
        lock.release()
        assert await store.probe()
        assert store.healthy
        assert (await store.head())[0] == 0


async def test_disk_full_writes_nothing(store: EventStore) -> None:
    """A full database fails the whole batch with StorageUnavailable and leaves no partial rows."""
    await store.append([ev("a")])
    await store._writer._conn.call(
        sqlite3.Connection.execute, "PRAGMA max_page_count = 20"
    )  # simulate a full disk
    with pytest.raises(StorageUnavailable, match="FULL"):
        await store.append([ev("a", size=2_000) for _ in range(50)])
    assert (await store.head())[0] == 1
    await store._writer._conn.call(sqlite3.Connection.execute, "PRAGMA max_page_count = 1073741823")
    r = await store.append([ev("a")])
    assert r.records[0].position == 2


async def test_missing_database_with_create_false(tmp_path: Path) -> None:
    """Opening a missing file with create=False raises DatabaseMissing and creates nothing."""
    with pytest.raises(DatabaseMissing):
        await EventStore.open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


async def test_not_a_database(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises DatabaseCorrupt."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite database at all" * 200)
    with pytest.raises(DatabaseCorrupt):
        await EventStore.open(path)


async def test_reopen_keeps_log_and_chain(tmp_path: Path) -> None:
    """Events survive close and reopen, and new appends continue the same chain."""
    path = tmp_path / "log.db"
    async with await EventStore.open(path, synchronous="NORMAL") as store:
        await store.append([ev("a"), ev("a")])
    async with await EventStore.open(path, create=False) as store:
        r = await store.append([ev("a")], 2)
        assert r.records[0].position == 3
        assert (await store.verify()).ok


async def test_bad_synchronous_setting(tmp_path: Path) -> None:
    """An unknown synchronous mode is a usage error raised before touching the file."""
    with pytest.raises(ValueError, match="synchronous"):
        await EventStore.open(tmp_path / "x.db", synchronous="OFF")


async def test_close_writes_queued_appends(tmp_path: Path) -> None:
    """close() drains appends already queued before closing the connections."""
    path = tmp_path / "log.db"
    store = await EventStore.open(path)
    calls = [asyncio.ensure_future(store.append([ev("a")])) for _ in range(20)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*calls)
    assert sorted(r.records[0].position for r in results) == list(range(1, 21))


async def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    """Opening records each schema version once; reopening applies nothing again."""
    path = tmp_path / "log.db"
    for _ in range(2):
        async with await EventStore.open(path):
            pass
    conn = sqlite3.connect(path)
    try:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
        assert versions == [(v,) for v in sorted(MIGRATIONS)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_subscriber_ends_with_store_closed(tmp_path: Path) -> None:
    """A live subscriber gets StoreClosed when the store is closed under it."""
    store = await EventStore.open(tmp_path / "log.db")
    await store.append([ev("a")])
    seen = []

    async def consume() -> None:
        async for e in store.subscribe():
            seen.append(e.position)

    with anyio.fail_after(5):
        task = asyncio.ensure_future(consume())
        await anyio.wait_all_tasks_blocked()
        await store.close()
        with pytest.raises(StoreClosed):
            await task
    assert seen == [1]


async def test_open_as_context_manager(tmp_path: Path) -> None:
    """`async with EventStore.open(path)` yields an open store and closes it on exit."""
    async with EventStore.open(tmp_path / "log.db") as store:
        await store.append([ev("a")])
    assert not store.healthy
    with pytest.raises(StoreClosed):
        await store.head()


async def test_recorded_at_never_goes_back_even_when_the_clock_does_across_a_restart(
    tmp_path: Path,
) -> None:
    """`replay --until` stops at the first later record: the log's times must not go back."""
    from datetime import UTC, datetime

    noon = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    earlier = datetime(2026, 11, 25, 11, 55, tzinfo=UTC)
    async with EventStore.open(tmp_path / "log.db", clock=lambda: noon) as store:
        await store.append([ev()])
    async with EventStore.open(tmp_path / "log.db", clock=lambda: earlier) as store:
        await store.append([ev()])
        await store.append([ev()])
        times = [r.recorded_at async for r in store.read_all()]
    assert times == [noon, noon, noon]


async def test_a_writer_stuck_on_a_lock_reports_how_long_it_has_stalled(tmp_path: Path) -> None:
    """A writer waiting for work counts as healthy; one stuck on a held lock reports a growing
    stall until its write commits, which a watchdog reads to stop its keep-alive pings."""
    async with EventStore.open(tmp_path / "log.db", busy_timeout=30) as store:
        await store.append([ev()])
        assert store.writer_stalled_for() == 0.0
        lock = WriteLock(tmp_path / "log.db")
        try:
            pending = asyncio.ensure_future(store.append([ev()]))
            with anyio.fail_after(10):
                while store.writer_stalled_for() == 0.0:
                    await anyio.sleep(0.01)
            first = store.writer_stalled_for()
            await anyio.sleep(0.05)
            assert store.writer_stalled_for() > first
            assert not pending.done()
        finally:
            lock.release()
        await pending
        with anyio.fail_after(10):
            while store.writer_stalled_for() != 0.0:  # back to waiting for work
                await anyio.sleep(0.01)
    assert store.writer_stalled_for() == float("inf")  # closed: no writer left to vouch for


async def test_a_burst_of_calls_commits_in_queue_order(tmp_path: Path) -> None:
    """Calls queued together are written in the order they were made, and closing right away
    answers every one with its record."""
    path = tmp_path / "log.db"
    store = await EventStore.open(path)
    calls = [asyncio.ensure_future(store.append([ev(f"s{i % 7}")])) for i in range(300)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*calls)
    assert [r.records[0].position for r in results] == list(range(1, 301))
    async with EventStore.open(path) as reopened:
        assert (await reopened.verify()).ok
        assert await reopened.head() == (300, results[-1].records[0].hash)
