"""A domain-free, append-only, hash-chained event log on SQLite (or PostgreSQL)."""

from .chain import GENESIS
from .errors import (
    DatabaseCorrupt,
    DatabaseMissing,
    EventStoreError,
    InvalidEvent,
    NotLeader,
    StorageUnavailable,
    StoreClosed,
    WriterBusy,
    WrongExpectedVersion,
)
from .records import (
    ANY,
    LAST_POSITION,
    NO_STREAM,
    AppendCall,
    AppendResult,
    NewEvent,
    RecordedEvent,
    new_event_id,
)
from .snapshots import SnapshotReader
from .store import EventStore, ReadOnlyStore, SignedCheckpoint
from .verify import Damage, VerifyReport

# The PostgreSQL backend: registers `postgresql://` URLs with EventStore.open.
from . import postgres  # noqa: F401  # isort: skip

__all__ = [
    "ANY",
    "GENESIS",
    "LAST_POSITION",
    "NO_STREAM",
    "AppendCall",
    "AppendResult",
    "Damage",
    "DatabaseCorrupt",
    "DatabaseMissing",
    "EventStore",
    "EventStoreError",
    "InvalidEvent",
    "NewEvent",
    "NotLeader",
    "ReadOnlyStore",
    "RecordedEvent",
    "SignedCheckpoint",
    "SnapshotReader",
    "StorageUnavailable",
    "StoreClosed",
    "VerifyReport",
    "WriterBusy",
    "WrongExpectedVersion",
    "new_event_id",
]
