"""A consistent copy of a live log, taken while its writer keeps writing.

The copy is SQLite's `VACUUM INTO` from a read-only connection: one read transaction, so the
copy is the log exactly as it was at one commit, whatever is written meanwhile. In WAL mode a
reader never blocks the writer (it only keeps the WAL from being checkpointed past its snapshot
until it ends), so the writer is not starved. SQLite's page-by-page backup API was not used: run
from another connection than the writer's, it starts over whenever the log changes between two
steps, so under steady writing it may never finish. A file copy of a WAL database is never
consistent (the recent commits are in the -wal file), so none is made.

The copy is written to `DEST.partial` (created new, mode 600), fsynced, then renamed to `DEST`
and the directory fsynced: `DEST` is either absent or a whole copy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from urllib.parse import quote

import anyio

from .chain import GENESIS
from .connections import close_quietly, connect_readonly
from .errors import translate

__all__ = ["backup_log"]

PARTIAL_SUFFIX = ".partial"


async def backup_log(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, busy_timeout: float = 5.0
) -> tuple[int, str]:
    """Copy the log at `source` to the new file `dest`; return the copy's head (position, hash).

    Raises FileExistsError when `dest` or `dest.partial` exists, another OSError when `dest`
    cannot be written (its directory missing or read-only), and an EventStoreError when the log
    cannot be read. Nothing is left at `dest` or `dest.partial` when it fails.
    """
    source, dest = os.fspath(source), os.fspath(dest)
    partial = await anyio.to_thread.run_sync(_claim, dest)
    try:
        await _vacuum_into(source, partial, busy_timeout)
        head = await anyio.to_thread.run_sync(_fsync_and_read_head, partial)
        await anyio.to_thread.run_sync(_publish, partial, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return head


def _claim(dest: str) -> str:
    """Create `dest.partial`, empty, and return its absolute path (VACUUM INTO on a URI
    connection would read a relative name like "file:..." as a URI)."""
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest)
    partial = os.path.abspath(dest + PARTIAL_SUFFIX)
    # VACUUM INTO accepts an empty file. O_EXCL refuses one a concurrent backup is writing,
    # and the copy is private to its owner from the start.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return partial


def _publish(partial: str, dest: str) -> None:
    """Rename the synced copy to `dest` (refused if `dest` appeared meanwhile), then sync the
    directory so the new name survives a crash."""
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest)
    os.rename(partial, dest)
    fd = os.open(os.path.dirname(partial), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _vacuum_into(source: str, partial: str, busy_timeout: float) -> None:
    try:
        conn = await connect_readonly(source, busy_timeout)
    except Exception as exc:
        raise translate(exc) from exc
    try:
        # query_only would refuse to write the copy too; the log itself stays read-only
        # (the connection is opened mode=ro).
        await conn.execute("PRAGMA query_only = 0")
        await conn.execute("VACUUM INTO ?", (partial,))
    except BaseException as exc:
        # Cancelled (Ctrl-C): stop the statement in its thread rather than wait for it.
        with contextlib.suppress(Exception):
            await conn.interrupt()
        if isinstance(exc, Exception):
            raise translate(exc) from exc
        raise
    finally:
        await close_quietly(conn)


def _fsync_and_read_head(path: str) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        row = conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)
