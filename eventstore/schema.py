"""Numbered schema migrations, applied in order at open and recorded in `schema_migrations`."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import aiosqlite

from .chain import format_time

__all__ = ["EVENT_COLUMNS", "MIGRATIONS", "TRIGGERS", "migrate"]

# Column order of every SELECT that builds a RecordedEvent (matches its field order).
EVENT_COLUMNS = (
    "position, stream, version, type, schema, data, metadata, event_id, recorded_at, hash"
)
TRIGGERS = ("events_refuse_update", "events_refuse_delete")

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE events (
    position    INTEGER PRIMARY KEY,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    schema      INTEGER NOT NULL,
    data        TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL UNIQUE,
    recorded_at TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END;
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END;
CREATE TABLE consumer_positions (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE TABLE snapshots (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL,
    blob     BLOB    NOT NULL,
    saved_at TEXT    NOT NULL
);
CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY,
    position   INTEGER NOT NULL,
    head_hash  TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  TEXT    NOT NULL
);
""",
    # A snapshot kept as keyed parts beside its header row in `snapshots`, so that writing one
    # costs what changed since the last, and no value grows with the whole projection.
    2: """
CREATE TABLE snapshot_parts (
    name TEXT NOT NULL,
    key  TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
""",
    # Each part's label (what a loader groups parts by) and time (what it orders them by), each
    # in an index of its own, so that a start-up reads them without reading a single blob.
    3: """
ALTER TABLE snapshot_parts ADD COLUMN label TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshot_parts ADD COLUMN at TEXT;
CREATE INDEX snapshot_parts_by_label ON snapshot_parts (name, label, key);
CREATE INDEX snapshot_parts_by_time ON snapshot_parts (name, key, at) WHERE at IS NOT NULL;
""",
}


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every migration newer than the database's version, each in its own transaction.

    Returns the schema version now in force. `conn` must be in autocommit mode
    (isolation_level=None) so that the explicit BEGIN/COMMIT here are the only transactions.
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    rows = await conn.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    current = next(iter(rows))[0]
    for version in sorted(v for v in MIGRATIONS if v > current):
        # IMMEDIATE: two processes opening a fresh file at once must not both migrate.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            rows = await conn.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            )
            if not list(rows):
                for statement in _statements(MIGRATIONS[version]):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, format_time(datetime.now(UTC))),
                )
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        current = version
    return current


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would COMMIT on its own)."""
    out: list[str] = []
    buf = ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
