"""Opening a file read-only never changes it: not its bytes, not its mtime, no files beside it."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventstore import DatabaseCorrupt, DatabaseMissing, EventStore, NewEvent

pytestmark = pytest.mark.anyio


def fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes and mtime, and every file in its directory."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


async def write_log(path: Path, n: int = 5) -> None:
    async with EventStore.open(path) as store:
        await store.append([NewEvent(f"s{i % 2}", "Noted", b'{"i":%d}' % i) for i in range(n)])


async def test_a_closed_log_opens_without_a_trace(tmp_path: Path) -> None:
    """Reading and verifying a log no process has open leaves it byte-identical, no -wal/-shm."""
    db = tmp_path / "log.db"
    await write_log(db)
    before = fingerprint(db)
    assert before[2] == ["log.db"]
    async with EventStore.open(db, readonly=True) as store:
        assert (await store.head())[0] == 5
        assert (await store.verify()).ok
    assert fingerprint(db) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a staticipd log"),
        (b"hello, I am a text file\n" * 10, "not a database"),
    ],
    ids=["empty-file", "text-file"],
)
async def test_a_file_that_is_no_log_is_refused_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """An empty or non-SQLite file is DatabaseCorrupt and stays exactly as it was."""
    db = tmp_path / "log.db"
    db.write_bytes(content)
    before = fingerprint(db)
    with pytest.raises(DatabaseCorrupt, match=message):
        await EventStore.open(db, readonly=True)
    assert fingerprint(db) == before


def foreign_db(path: Path, tables: str) -> None:
    con = sqlite3.connect(path)
    con.executescript(tables)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);", "no schema_migrations table"),
        (
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);"
            "INSERT INTO schema_migrations VALUES (1, 'x');",
            "no events table",
        ),
        (
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);"
            "CREATE TABLE events (position INTEGER PRIMARY KEY);",
            "schema version None",
        ),
    ],
    ids=["other-program", "no-events", "no-version"],
)
async def test_another_programs_database_is_refused_untouched(
    tmp_path: Path, tables: str, message: str
) -> None:
    """Another program's SQLite file is 'not a staticipd log' and gets none of our tables."""
    db = tmp_path / "other.db"
    foreign_db(db, tables)
    before = fingerprint(db)
    with pytest.raises(DatabaseCorrupt, match="not a staticipd log") as info:
        await EventStore.open(db, readonly=True)
    assert message in str(info.value)
    assert fingerprint(db) == before


async def test_a_log_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    """A log at a schema version this build does not know is refused, naming both versions."""
    db = tmp_path / "log.db"
    await write_log(db)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_migrations VALUES (99, '2030-01-01T00:00:00Z')")
    con.commit()
    con.close()
    before = fingerprint(db)
    with pytest.raises(DatabaseCorrupt, match="schema version 99"):
        await EventStore.open(db, readonly=True)
    assert fingerprint(db) == before


async def test_a_missing_file_is_not_created(tmp_path: Path) -> None:
    """Opening a path with no file raises DatabaseMissing and creates nothing."""
    with pytest.raises(DatabaseMissing):
        await EventStore.open(tmp_path / "nope.db", readonly=True)
    assert os.listdir(tmp_path) == []


async def test_readonly_sees_a_live_writer_commits(tmp_path: Path) -> None:
    """While a writer has the log open, a read-only store reads what it commits."""
    db = tmp_path / "log.db"
    async with EventStore.open(db) as writer:
        await writer.append([NewEvent("s", "Noted", b"{}")])
        async with EventStore.open(db, readonly=True) as reader:
            assert (await reader.head())[0] == 1
            await writer.append([NewEvent("s", "Noted", b"{}")])
            assert await reader.head() == await writer.head()
            assert (await reader.verify()).ok


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Iterator[Path]:
    """A log as an auditor receives it: file mode 444 in a directory of mode 555."""
    import anyio

    folder = tmp_path / "copy"
    folder.mkdir()
    db = folder / "log.db"
    anyio.run(write_log, db)
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        yield db
    finally:
        folder.chmod(0o755)


async def test_a_read_only_copy_verifies(read_only_copy: Path) -> None:
    """A log in a directory nobody may write to opens and verifies, and stays untouched."""
    before = fingerprint(read_only_copy)
    async with EventStore.open(read_only_copy, readonly=True) as store:
        report = await store.verify()
    assert report.ok
    assert report.events_checked == 5
    assert fingerprint(read_only_copy) == before


async def test_a_part_fetcher_reads_on_after_its_store_closed_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    """A model read after the daemon stopped still gets its accounts from the snapshot, and
    the closed log is left alone: no -wal or -shm file appears beside it."""
    db = tmp_path / "log.db"
    async with EventStore.open(db) as store:
        await store.save_snapshot_parts("p", 1, b"h", [("a", b"1", "x", None)])
        fetch = store.part_fetcher("p")
        assert fetch("a") == b"1"
    assert sorted(os.listdir(tmp_path)) == ["log.db"]
    assert (fetch("a"), fetch("b")) == (b"1", None)
    assert sorted(os.listdir(tmp_path)) == ["log.db"]


async def test_a_snapshot_written_before_parts_had_labels_reads_all_under_no_label(
    tmp_path: Path,
) -> None:
    """A log of schema 2, read-only (not migrated): every part is under the label "", one
    part's label is "" (None for no such part), and no part has a time."""
    path = tmp_path / "log.db"
    async with EventStore.open(path) as store:
        await store.save_snapshot_parts("p", 3, b"h", [("b", b"2"), ("a", b"1")])
    with sqlite3.connect(path) as conn:
        for statement in (
            "DROP INDEX snapshot_parts_by_label",
            "DROP INDEX snapshot_parts_by_time",
            "ALTER TABLE snapshot_parts DROP COLUMN label",
            "ALTER TABLE snapshot_parts DROP COLUMN at",
            "DELETE FROM schema_migrations WHERE version = 3",
        ):
            conn.execute(statement)
    conn.close()
    async with EventStore.open(path, readonly=True) as store:
        reader = await store.open_snapshot("p")
        assert reader is not None
        with reader:
            assert reader.labels() == {"": ["a", "b"]}
            assert reader.label_counts() == {"": 2}
            assert reader.keys_labelled("") == ["a", "b"]
            assert (reader.label("a"), reader.label("zz")) == ("", None)
            assert reader.times() == {}
