"""Copy an SQLite log into an empty PostgreSQL database, row for row (README, "PostgreSQL").

Every table is copied as stored (positions, hashes and checkpoint ids included), so the chain
bytes are the same and `verify` finds the same log on arrival. One transaction, under the log's
write lock, that first checks the target holds no log: a refused or failed copy writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

import asyncpg

from ..connections import readonly_uri
from ..errors import DatabaseCorrupt, EventStoreError
from ..store import EventStore
from .errors import translate_pg
from .schema import WRITE_LOCK

__all__ = ["TargetNotEmpty", "copy_sqlite_log"]

_EVENTS = (
    "position",
    "stream",
    "version",
    "type",
    "schema",
    "data",
    "metadata",
    "event_id",
    "recorded_at",
    "prev_hash",
    "hash",
)
# Every table of the log and its columns, in the order they are copied.
_TABLES: dict[str, tuple[str, ...]] = {
    "events": _EVENTS,
    "checkpoints": ("id", "position", "head_hash", "created_at", "key_id", "signature"),
    "snapshots": ("name", "position", "blob", "saved_at"),
    "snapshot_parts": ("name", "key", "blob", "label", "at"),
    "consumer_positions": ("name", "position", "updated_at"),
}
_BATCH = 5_000


class TargetNotEmpty(EventStoreError):
    """The target database already holds (part of) a log; nothing was copied."""


async def copy_sqlite_log(source: str | os.PathLike[str], url: str, password: str | None) -> int:
    """Copy the SQLite log at `source` into the database at `url`; return the events copied.

    The target's tables are created when missing (EventStore.open); TargetNotEmpty when any of
    them has a row. The source is read read-only, from one read transaction.
    """
    path = os.fspath(source)
    uri = readonly_uri(path)  # DatabaseMissing when there is no such file
    async with EventStore.open(url, password=password):
        pass  # creates the tables in an empty database (the copier owns them)
    try:
        conn = await asyncpg.connect(url, password=password)
    except Exception as exc:
        raise translate_pg(exc) from exc
    src = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        src.execute("BEGIN")  # one snapshot of the source for the whole copy
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "events" not in tables:
            raise DatabaseCorrupt(f"not a staticipd log: {path} has no events table")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            for table in _TABLES:
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):  # noqa: S608
                    raise TargetNotEmpty(
                        f"the target already holds a log ({table} is not empty); nothing copied"
                    )
            copied = 0
            for table, columns in _TABLES.items():
                if table not in tables:
                    continue  # a log of schema 1 has no snapshot_parts
                # A log of schema 2 has no label or time: the target's defaults stand.
                present = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
                columns = tuple(c for c in columns if c in present)
                select = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {columns[0]}"  # noqa: S608
                cursor = src.execute(select)
                while rows := await asyncio.to_thread(cursor.fetchmany, _BATCH):
                    records = [tuple(_value(v) for v in r) for r in rows]
                    await conn.copy_records_to_table(table, records=records, columns=columns)
                    if table == "events":
                        copied += len(records)
            # The next checkpoint the daemon writes gets the id after the copied ones.
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('checkpoints', 'id'),"
                " COALESCE((SELECT MAX(id) FROM checkpoints), 0) + 1, false)"
            )
        src.execute("COMMIT")
    except EventStoreError:
        raise
    except Exception as exc:
        raise translate_pg(exc) from exc
    finally:
        src.close()
        await conn.close()
    return copied


def _value(v: Any) -> Any:
    return bytes(v) if isinstance(v, memoryview) else v
