"""The writer keeps its hold on the log while the same process reads it on the side.

SQLite's locks are POSIX record locks: a process that closes any descriptor of the file loses
all of them. Had the store opened the file for a peek while writing, another process closing
its connection would take the log for unused and delete the -wal file under the writer, and
the writer's next commits would go to a deleted file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eventstore import EventStore, NewEvent

pytestmark = pytest.mark.anyio

# Another process opens the log read-write, reads, and closes: what the sqlite3 shell or a
# second staticipd command does.
_OUTSIDER = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1])\n"
    "print(c.execute('SELECT COUNT(*) FROM events').fetchone()[0])\n"
    "c.close()\n"
)


def count_from_outside(db: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _OUTSIDER, str(db)], capture_output=True, check=True, timeout=60
    )
    return int(done.stdout)


async def test_side_reads_leave_the_writer_its_locks(tmp_path: Path) -> None:
    """After the store reads its snapshot and verifies on side connections, another process
    opening and closing the log leaves the -wal in place, and later appends are all there."""
    db = tmp_path / "log.db"
    async with EventStore.open(db) as store:
        await store.append([NewEvent("s", "Noted", b"{}")])
        await store.save_snapshot_parts("p", 1, b"h", [("k", b"v")], complete=True)
        assert await store.load_snapshot_parts("p") == (1, b"h", [("k", b"v")])
        assert (await store.verify()).ok
        assert count_from_outside(db) == 1
        assert (tmp_path / "log.db-wal").exists()
        await store.append([NewEvent("s", "Noted", b"{}")])
        assert count_from_outside(db) == 2
