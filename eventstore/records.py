"""Value types of the event store's API: events going in, recorded events coming out."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "ANY",
    "LAST_POSITION",
    "NO_STREAM",
    "AppendCall",
    "AppendResult",
    "NewEvent",
    "RecordedEvent",
    "new_event_id",
]

ANY = -1
"""Expected version: append whatever the stream's current version is."""
NO_STREAM = 0
"""Expected version: the stream must not exist yet (its last version is 0)."""
LAST_POSITION = 2**63 - 1
"""SQLite's largest integer: no log position can be larger."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; `data` and `metadata` are UTF-8 JSON objects stored byte-for-byte."""

    stream: str
    type: str
    data: bytes
    schema: int = 1
    metadata: bytes = b"{}"
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AppendCall:
    """One call of `EventStore.append_many`: what `append(events, expected, if_absent=)` takes."""

    events: Sequence[NewEvent]
    expected: int | Mapping[str, int] = ANY
    if_absent: str | Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its global position, version in its stream and chained hash."""

    position: int
    stream: str
    version: int
    type: str
    schema: int
    data: bytes
    metadata: bytes
    event_id: str
    recorded_at: datetime
    hash: str


@dataclass(frozen=True)
class AppendResult:
    """The outcome of one append() call: a record per input event, and whether it was new.

    `skipped`: an `if_absent` id of the call was already stored, so nothing of it was written;
    `records` then holds the stored records of the call's ids that exist (possibly fewer).
    """

    records: tuple[RecordedEvent, ...]
    created: tuple[bool, ...]
    skipped: bool = False

    @property
    def new_records(self) -> tuple[RecordedEvent, ...]:
        return tuple(r for r, c in zip(self.records, self.created, strict=True) if c)

    @property
    def duplicates(self) -> tuple[RecordedEvent, ...]:
        return tuple(r for r, c in zip(self.records, self.created, strict=True) if not c)

    @property
    def last_position(self) -> int:
        return max((r.position for r in self.records), default=0)


_last_ms = 0
_seq = 0


def new_event_id() -> str:
    """Return a UUIDv7 string: 48-bit Unix milliseconds, then a per-process sequence and randomness.

    Time-ordered ids keep the UNIQUE index on event_id append-mostly (cheap inserts).
    """
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms > _last_ms:
        _last_ms, _seq = ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
    else:
        # Same (or earlier) millisecond: keep ids increasing within this process.
        ms = _last_ms
        _seq += 1
        if _seq > 0xFFF:
            _last_ms += 1
            ms, _seq = _last_ms, 0
    rand_b = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
