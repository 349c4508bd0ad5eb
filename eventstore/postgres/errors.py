"""The one place where PostgreSQL and driver errors become the event store's own (as
eventstore/errors.py does for SQLite): callers never see an asyncpg error."""

from __future__ import annotations

import asyncpg

from ..errors import (
    DatabaseCorrupt,
    DatabaseMissing,
    EventStoreError,
    StorageUnavailable,
    translate,
)

__all__ = ["connection_lost", "translate_pg"]

# SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html) that mean
# "the database cannot be used right now; retry later": the connection, resources, the operator
# (shutdown, starting up), system errors, a transaction rolled back (serialization, deadlock),
# an object in use (a lock not granted within lock_timeout), and authentication.
_UNAVAILABLE_CLASSES = {"08", "53", "57", "58", "40", "55", "28"}
_CORRUPT = {"XX001", "XX002"}  # data_corrupted, index_corrupted
_NO_DATABASE = "3D000"  # invalid_catalog_name: the database in the URL does not exist


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` means the connection is gone or unusable: open a new one next time."""
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in {"08", "57"}
    return isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError)


def translate_pg(exc: BaseException) -> EventStoreError:
    """Return the event-store error that stands for `exc` (an asyncpg/socket error or other)."""
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        text = f"PostgreSQL {state}: {exc}"
        if state in _CORRUPT:
            err: EventStoreError = DatabaseCorrupt(text)
        elif state == _NO_DATABASE:
            err = DatabaseMissing(text)
        elif state[:2] in _UNAVAILABLE_CLASSES or isinstance(exc, asyncpg.PostgresConnectionError):
            err = StorageUnavailable(text)
        else:
            err = EventStoreError(text)
    elif isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        # The connection closed under a call, the server's socket is gone, a connect timed out.
        err = StorageUnavailable(f"{type(exc).__name__}: {exc}")
    else:
        return translate(exc)
    err.__cause__ = exc
    return err
