"""A consistent copy of a live log (EventStore.backup), taken while appends keep committing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from eventstore import DatabaseMissing, EventStore, NewEvent

pytestmark = pytest.mark.anyio


def ev(i: int) -> NewEvent:
    return NewEvent(f"s-{i % 7}", "T", b'{"i": %d, "pad": "%s"}' % (i, b"x" * 200))


async def test_a_backup_taken_under_load_is_an_intact_prefix_of_the_log(tmp_path: Path) -> None:
    """While appends keep committing, the copy is the log as of one commit: its chain verifies,
    its head is a row of the live log with the same hash, and the log keeps growing past it."""
    key = b"k" * 32
    async with EventStore.open(tmp_path / "log.db") as store:
        for i in range(200):
            await store.append([ev(i)])
        await store.checkpoint(key)
        stop = anyio.Event()

        async def keep_appending() -> None:
            i = 200
            while not stop.is_set():
                await store.append([ev(i), ev(i + 1)])
                i += 2

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_appending)
            await anyio.sleep(0.05)
            position, digest = await store.backup(tmp_path / "copy.db")
            await anyio.sleep(0.05)
            stop.set()
        live = [r async for r in store.read_all(position, position)]
        assert live[0].hash == digest
        assert (await store.head())[0] > position
    async with EventStore.open(tmp_path / "copy.db", readonly=True) as copy:
        assert await copy.head() == (position, digest)
        report = await copy.verify(key)
        assert report.ok, report.damage
        assert report.signatures_checked == 1
    mode = stat.S_IMODE(os.stat(tmp_path / "copy.db").st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == ["copy.db"]


async def test_a_backup_never_replaces_a_file(tmp_path: Path) -> None:
    """A destination that exists is refused and left as it was; no partial file stays behind."""
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"precious")
    async with EventStore.open(tmp_path / "log.db") as store:
        await store.append([ev(1)])
        with pytest.raises(FileExistsError):
            await store.backup(dest)
    assert dest.read_bytes() == b"precious"
    assert not (tmp_path / "copy.db.partial").exists()


async def test_a_failed_copy_leaves_no_partial_file(tmp_path: Path) -> None:
    """When the log cannot be read, neither the destination nor its partial file is left."""
    db = tmp_path / "log.db"
    async with EventStore.open(db) as store:
        await store.append([ev(1)])
    async with EventStore.open(db, readonly=True) as store:
        db.rename(tmp_path / "gone.db")  # the log disappears after it was opened
        with pytest.raises(DatabaseMissing):
            await store.backup(tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
    assert not (tmp_path / "copy.db.partial").exists()


async def test_a_backup_of_a_stopped_log_writes_nothing_beside_it(
    tmp_path: Path,
) -> None:
    """A stopped daemon's log is copied without a file created beside it (no -wal, no -shm), so
    a backup job with read-only access to the state directory works."""
    src = tmp_path / "state"
    src.mkdir()
    async with EventStore.open(src / "log.db") as store:
        await store.append([ev(1), ev(2)])
        expected = await store.head()
    src.chmod(0o500)
    try:
        async with EventStore.open(src / "log.db", readonly=True) as store:
            assert await store.backup(tmp_path / "copy.db") == expected
        assert sorted(p.name for p in src.iterdir()) == ["log.db"]
    finally:
        src.chmod(0o700)
