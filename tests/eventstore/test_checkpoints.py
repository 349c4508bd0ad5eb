"""WAL checkpoints on the checkpointer's thread: commits reach the database file soon after they
are made, without the writer copying them, and closing leaves no WAL behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

from eventstore import EventStore, NewEvent, writer
from eventstore.writer import CHECKPOINT_EVENTS, WAL_AUTOCHECKPOINT_PAGES, _Checkpointer

pytestmark = pytest.mark.anyio


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eventstore-checkpoint"]


async def test_commits_reach_the_database_file_while_the_store_runs(tmp_path: Path) -> None:
    """Commits far below SQLite's own 1,000-page checkpoint are copied into the database file by
    the checkpointer: a copy of the file alone, without its WAL, holds them all."""
    path = tmp_path / "log.db"
    n = 2 * CHECKPOINT_EVENTS  # two commits, each of them waking the checkpointer
    async with await EventStore.open(path) as store:
        for first in (0, CHECKPOINT_EVENTS):
            await store.append(
                [NewEvent(f"s-{i}", "T", b"{}") for i in range(first, first + CHECKPOINT_EVENTS)]
            )
        (pages,) = await store._writer._conn.call(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        )
        assert pages == WAL_AUTOCHECKPOINT_PAGES
        with anyio.fail_after(10):
            while _events_in_file_alone(path, tmp_path / "file-alone.db") != n:
                await anyio.sleep(0.02)


def _events_in_file_alone(path: Path, copy: Path) -> int | None:
    """The events a copy of the database file holds, without its WAL (None: caught mid-copy)."""
    shutil.copyfile(path, copy)
    try:
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.DatabaseError:  # a page copied while the checkpointer wrote it
        return None


async def test_closing_stops_the_checkpointer_and_leaves_no_wal(tmp_path: Path) -> None:
    before = len(_checkpointers())
    path = tmp_path / "log.db"
    store = await EventStore.open(path)
    await store.append([NewEvent("s", "T", b"{}")])
    assert len(_checkpointers()) == before + 1
    await store.close()
    assert len(_checkpointers()) == before
    assert not (tmp_path / "log.db-wal").exists()


async def test_a_cancelled_close_still_closes_the_write_connection(tmp_path: Path) -> None:
    """A close cancelled while the writer's thread stops the checkpointer (a shutdown timeout)
    still closes the write connection: closing again then leaves no WAL and no thread."""
    before = len(_checkpointers())
    store = await EventStore.open(tmp_path / "log.db", supervised=True)  # its writer never runs
    conn = store._writer._conn.conn
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # the close now waits for the writer's thread
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    with anyio.fail_after(10):
        while not _closed(conn):
            await anyio.sleep(0.01)
    await store.close()
    assert not (tmp_path / "log.db-wal").exists()
    assert len(_checkpointers()) == before


def _closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


def test_a_checkpointer_that_cannot_open_the_file_keeps_trying_and_stops(tmp_path: Path) -> None:
    """A failure is kept (`last_error`) and tried again at the next commit; `stop` still ends it."""
    checkpointer = _Checkpointer(str(tmp_path / "missing" / "log.db"), "FULL", interval=0.01)
    try:
        checkpointer.committed()
        deadline = time.monotonic() + 10
        while checkpointer.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(checkpointer.last_error, sqlite3.OperationalError)
        assert checkpointer.last is None
    finally:
        checkpointer.stop()
    assert not checkpointer._thread.is_alive()


async def test_a_wal_grown_under_a_long_read_is_cut_back_to_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read held open (a backup) keeps every commit in the WAL, which grows past its bound;
    once the read ends, the next checkpoint rewinds the WAL and the file is cut back to it."""
    monkeypatch.setattr(writer, "WAL_AUTOCHECKPOINT_PAGES", 64)  # a bound of 64 pages
    path = tmp_path / "log.db"
    wal = tmp_path / "log.db-wal"
    big = json.dumps({"detail": "x" * 8000}).encode()
    async with await EventStore.open(path) as store:
        (page_size,) = await store._writer._conn.call(
            lambda conn: conn.execute("PRAGMA page_size").fetchone()
        )
        bound = 64 * page_size
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM events").fetchone()  # holds its snapshot
            for i in range(150):
                await store.append([NewEvent(f"s-{i}", "T", big)])
            grown = wal.stat().st_size
            assert grown > 8 * bound
        finally:
            reader.close()
        with anyio.fail_after(10):
            i = 0
            while wal.stat().st_size > bound + 4 * page_size:  # the bound, plus a commit's pages
                await store.append([NewEvent(f"after-{i}", "T", b"{}")])
                i += 1
                await anyio.sleep(0.01)
