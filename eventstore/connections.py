"""How the store opens SQLite connections: read-write ones for the writer, and read-only ones that
never write a byte to the log's file or create files beside it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import aiosqlite
import anyio.to_thread

from .errors import DatabaseCorrupt, DatabaseMissing
from .schema import MIGRATIONS

__all__ = [
    "Opening",
    "check_log_schema",
    "close_quietly",
    "connect",
    "connect_readonly",
    "readonly_uri",
]


class _Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


class Opening(Generic[S]):
    """What EventStore.open() returns: await it for the store, or `async with` it."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, S]]) -> None:
        self._factory = factory
        self._store: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._factory().__await__()

    async def __aenter__(self) -> S:
        self._store = await self._factory()
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        if self._store is not None:
            await self._store.close()


async def _opened(conn: aiosqlite.Connection) -> aiosqlite.Connection:
    """`await conn`, and when the open fails, wait for aiosqlite's thread to end.

    aiosqlite stops the thread of a connection that failed to open without waiting for it, and
    the thread then answers the stop on the event loop: a command that exits on the failure may
    have closed the loop by then, and the thread prints a traceback (`Event loop is closed`)
    under the one line that says what went wrong.
    """
    try:
        return await conn
    except BaseException:
        thread = getattr(conn, "_thread", None)  # aiosqlite's own; absent in other versions
        if thread is not None and thread.is_alive():
            await anyio.to_thread.run_sync(thread.join, 5.0)
        raise


async def connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    """A read-write connection in autocommit mode (the writer issues BEGIN/COMMIT itself)."""
    conn = await _opened(aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout))
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except BaseException:
        await close_quietly(conn)
        raise
    return conn


async def connect_readonly(path: str, busy_timeout: float) -> aiosqlite.Connection:
    """A connection that cannot write to the log at `path` (see `readonly_uri`)."""
    uri = readonly_uri(path)
    conn = await _opened(
        aiosqlite.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout)
    )
    try:
        # Connection settings only; neither writes to the file.
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await conn.execute("PRAGMA query_only = 1")
    except BaseException:
        await close_quietly(conn)
        raise
    return conn


async def check_log_schema(conn: aiosqlite.Connection, path: str) -> int:
    """Return the log's schema version; DatabaseCorrupt unless it is a staticipd log we can read.

    A read-only open cannot migrate, so it requires what migrations would have made: the
    `schema_migrations` table at a version this build knows, and the `events` table.
    """
    tables = {
        row[0]
        for row in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('schema_migrations', 'events')"
        )
    }
    if "schema_migrations" not in tables:
        raise DatabaseCorrupt(f"not a staticipd log: {path} has no schema_migrations table")
    rows = list(await conn.execute_fetchall("SELECT MAX(version) FROM schema_migrations"))
    version = rows[0][0] if rows else None
    if version not in MIGRATIONS:
        raise DatabaseCorrupt(
            f"not a staticipd log this build can read: {path} is at schema version {version},"
            f" this build knows versions 1 to {max(MIGRATIONS)}"
        )
    if "events" not in tables:
        raise DatabaseCorrupt(f"not a staticipd log: {path} has no events table")
    return int(version)


async def close_quietly(conn: aiosqlite.Connection) -> None:
    """Close `conn`, ignoring errors: closing after a storage failure must not mask that failure."""
    with contextlib.suppress(Exception):
        await conn.close()


def readonly_uri(path: str) -> str:
    """The URI of `path` opened `mode=ro`, plus `immutable=1` when no process has the log open.

    A read-only connection to a WAL database creates the -wal and -shm files when they are
    absent (and fails when the directory is not writable), which would change a copy handed
    to an auditor. No -wal file means no process has the log open and nothing awaits a
    checkpoint, so the main file is the whole log and is read as immutable. The remaining
    risk is a daemon starting and checkpointing while a command reads; rerun if that happens.

    The file itself is never opened here: SQLite's locks are POSIX record locks, which a
    process loses on *every* descriptor of the file when it closes *any* one of them. A peek
    at the header from a process that has the log open (the daemon reading its snapshot) would
    drop the writer's locks, and another process closing its connection would then take the
    log for unused and delete the -wal file under the writer, losing what it commits next.
    """
    if not os.path.exists(path):
        raise DatabaseMissing(f"no event store at {path}")
    flags = "mode=ro" if os.path.exists(path + "-wal") else "mode=ro&immutable=1"
    return f"file:{quote(os.path.abspath(path))}?{flags}"
