"""The event store's own error types, and the one place where sqlite3 errors are translated."""

from __future__ import annotations

import sqlite3

__all__ = [
    "DatabaseCorrupt",
    "DatabaseMissing",
    "EventStoreError",
    "InvalidEvent",
    "StorageUnavailable",
    "StoreClosed",
    "WriterBusy",
    "WrongExpectedVersion",
    "translate",
]


class EventStoreError(Exception):
    """Base class of every error the event store raises; callers never see sqlite3 errors."""


class WrongExpectedVersion(EventStoreError):
    """A stream's last version was not the expected one; nothing of the call was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r}: expected version {expected}, found {actual}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class InvalidEvent(EventStoreError, ValueError):
    """An event given to append() is malformed (data/metadata not a JSON object, no stream)."""


class StorageUnavailable(EventStoreError):
    """The database cannot be used right now (disk full, I/O error, locked); retry later."""


class DatabaseCorrupt(EventStoreError):
    """The file is not an SQLite database or is malformed."""


class DatabaseMissing(EventStoreError):
    """The database file does not exist and the store was opened with create=False."""


class StoreClosed(EventStoreError):
    """The store was closed; no further operations are possible."""


class WriterBusy(StorageUnavailable):
    """The append queue stayed full for longer than the caller's enqueue_timeout."""


class NotLeader(StorageUnavailable):
    """A commit refused because this process does not hold the log's leader lock (a standby,
    or a leader that lost its lock session): nothing of it was written; another process
    writes the log, retry there (PostgreSQL only, docs/log-format.md "Leadership")."""


# Primary result codes (https://www.sqlite.org/rescode.html); extended codes carry them
# in their low byte.
_UNAVAILABLE = {
    3,  # SQLITE_PERM
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
}
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def translate(exc: BaseException) -> EventStoreError:
    """Return the event-store error that stands for `exc` (an sqlite3/aiosqlite error or other)."""
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        primary = code & 0xFF if isinstance(code, int) else None
        text = f"{name}: {exc}"
        if primary in _CORRUPT:
            err: EventStoreError = DatabaseCorrupt(text)
        elif primary in _UNAVAILABLE or isinstance(exc, sqlite3.OperationalError):
            err = StorageUnavailable(text)
        else:
            err = EventStoreError(text)
    elif isinstance(exc, ValueError) and "closed" in str(exc).lower():
        # aiosqlite raises a bare ValueError on a closed connection.
        err = StoreClosed(str(exc))
    elif isinstance(exc, OSError):
        err = StorageUnavailable(f"{type(exc).__name__}: {exc}")
    else:
        err = EventStoreError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
