"""Pure group-commit decisions: which events of a batch of calls are written, where, how hashed.

Kept free of I/O so the writer's rules (expected versions, duplicates, positions, hashes) can be
read and tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from .chain import canonical_row, parse_time, row_hash
from .errors import DatabaseCorrupt, EventStoreError, InvalidEvent, WrongExpectedVersion
from .records import ANY, AppendResult, NewEvent, RecordedEvent, new_event_id

__all__ = [
    "BatchPlan",
    "PendingEvent",
    "PlannedCall",
    "check_expectation",
    "plan_batch",
    "prepare_event",
    "record_from_row",
    "records_from_rows",
]

_JSON_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])  # validates without building values


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A validated event waiting for the writer: JSON kept both as the exact bytes and as text."""

    stream: str
    type: str
    data: bytes
    data_text: str
    schema: int
    metadata: bytes
    metadata_text: str
    event_id: str


@dataclass(slots=True)
class BatchPlan:
    """Rows to INSERT in one transaction, the outcome of each call, and the new head."""

    rows: list[tuple[Any, ...]]
    outcomes: list[AppendResult | EventStoreError]
    records: list[RecordedEvent]  # the rows as records, in position order
    head_position: int
    head_hash: str


def record_from_row(row: Sequence[Any]) -> RecordedEvent:
    """Build a RecordedEvent from a row selected with schema.EVENT_COLUMNS."""
    return records_from_rows((row,))[0]


def records_from_rows(rows: Sequence[Sequence[Any]]) -> list[RecordedEvent]:
    """Build RecordedEvents for a batch of rows (the replay hot path, so kept tight).

    A row whose columns do not have the stored types (an edit behind the store's back: a BLOB
    where text belongs, a time that is not one) raises DatabaseCorrupt naming its position.
    """
    rec = RecordedEvent
    # No row's time text is None, so the first row always parses its own time.
    last_text: str | None = None
    last_time = datetime.min
    out: list[RecordedEvent] = []
    append = out.append
    pos = None
    try:
        for pos, stream, version, type_, schema, data, meta, event_id, at, digest in rows:
            if at != last_text:  # a whole group commit shares one recorded_at
                last_text, last_time = at, parse_time(at)
            append(
                rec(
                    pos,
                    stream,
                    version,
                    type_,
                    schema,
                    data.encode(),
                    meta.encode(),
                    event_id,
                    last_time,
                    digest,
                )
            )
    except (AttributeError, TypeError, ValueError) as exc:
        raise DatabaseCorrupt(
            f"the event at position {pos} cannot be read ({exc}); run `staticipd verify`"
        ) from exc
    return out


# What one append call asks for: its events, expected versions, and its `if_absent` guard ids.
PlannedCall = tuple[Sequence[PendingEvent], int | Mapping[str, int], tuple[str, ...]]


def plan_batch(
    calls: Sequence[PlannedCall],
    head_position: int,
    head_hash: str,
    versions: dict[str, int],
    stored: Mapping[str, RecordedEvent],
    recorded_at: str,
) -> BatchPlan:
    """Decide a batch of calls in queue order; `versions` (last version per stream) is updated.

    A call whose expectation fails gets WrongExpectedVersion and writes nothing; later calls see
    the effect of earlier successful ones. An event_id already stored, or already written by an
    earlier event of this batch, resolves to that record and is not written again. Expectations
    are only checked for streams that receive a new event, so an all-duplicate retry always
    succeeds with the stored records. A call one of whose guard ids (`if_absent`) is stored, or
    written by an earlier call of this batch, is skipped whole.
    """
    rows: list[tuple[Any, ...]] = []
    written: list[RecordedEvent] = []
    outcomes: list[AppendResult | EventStoreError] = []
    in_batch: dict[str, RecordedEvent] = {}
    position, prev = head_position, head_hash
    when = parse_time(recorded_at)
    for events, expected, guards in calls:
        if any(g in stored or g in in_batch for g in guards):
            found = [stored.get(e.event_id) or in_batch.get(e.event_id) for e in events]
            kept = tuple(r for r in found if r is not None)
            outcomes.append(AppendResult(kept, (False,) * len(kept), skipped=True))
            continue
        records: list[RecordedEvent | None] = [None] * len(events)
        new: list[int] = []
        first_index: dict[str, int] = {}
        for i, ev in enumerate(events):
            rec = stored.get(ev.event_id) or in_batch.get(ev.event_id)
            if rec is not None:
                records[i] = rec
            elif ev.event_id not in first_index:
                first_index[ev.event_id] = i
                new.append(i)
        conflict = _check_expected(events, new, expected, versions)
        if conflict is not None:
            outcomes.append(conflict)
            continue
        created = [False] * len(events)
        for i in new:
            ev = events[i]
            version = versions.get(ev.stream, 0) + 1
            versions[ev.stream] = version
            position += 1
            canon = canonical_row(
                ev.stream,
                version,
                ev.type,
                ev.schema,
                ev.event_id,
                recorded_at,
                ev.data,
                ev.metadata,
            )
            digest = row_hash(prev, canon)
            rows.append(
                (
                    position,
                    ev.stream,
                    version,
                    ev.type,
                    ev.schema,
                    ev.data_text,
                    ev.metadata_text,
                    ev.event_id,
                    recorded_at,
                    prev,
                    digest,
                )
            )
            rec = RecordedEvent(
                position,
                ev.stream,
                version,
                ev.type,
                ev.schema,
                ev.data,
                ev.metadata,
                ev.event_id,
                when,
                digest,
            )
            records[i] = rec
            written.append(rec)
            created[i] = True
            in_batch[ev.event_id] = rec
            prev = digest
        for i, ev in enumerate(events):
            if records[i] is None:  # repeated id within the call: the first occurrence wins
                records[i] = records[first_index[ev.event_id]]
        # Every slot is filled now: written, stored, or its id's first occurrence.
        outcomes.append(AppendResult(tuple(records), tuple(created)))  # type: ignore[arg-type]
    return BatchPlan(rows, outcomes, written, position, prev)


def _check_expected(
    events: Sequence[PendingEvent],
    new: list[int],
    expected: int | Mapping[str, int],
    versions: Mapping[str, int],
) -> WrongExpectedVersion | None:
    checked: set[str] = set()
    for i in new:
        stream = events[i].stream
        if stream in checked:
            continue
        checked.add(stream)
        want = expected if isinstance(expected, int) else expected.get(stream, ANY)
        actual = versions.get(stream, 0)
        if want != ANY and want != actual:
            return WrongExpectedVersion(stream, want, actual)
    return None


def check_expectation(expected: int | Mapping[str, int]) -> None:
    """Refuse an expected version that is not ANY, NO_STREAM or a version number."""
    values = [expected] if isinstance(expected, int) else list(expected.values())
    for v in values:
        if not isinstance(v, int) or v < ANY:
            raise InvalidEvent(f"expected version must be an int >= -1, not {v!r}")


def prepare_event(event: NewEvent) -> PendingEvent:
    """Validate `event` (cheaply: the JSON is checked, not rebuilt) and give it an event_id."""
    if not isinstance(event, NewEvent):
        raise InvalidEvent(f"expected NewEvent, got {type(event).__name__}")
    if not event.stream or not isinstance(event.stream, str):
        raise InvalidEvent("stream must be a non-empty string")
    if not event.type or not isinstance(event.type, str):
        raise InvalidEvent("type must be a non-empty string")
    if not isinstance(event.schema, int) or event.schema < 1:
        raise InvalidEvent("schema must be a positive int")
    data, meta = bytes(event.data), bytes(event.metadata)
    for name, raw in (("data", data), ("metadata", meta)):
        try:
            _JSON_OBJECT.decode(raw)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"{name} must be a UTF-8 JSON object: {exc}") from None
    return PendingEvent(
        event.stream,
        event.type,
        data,
        data.decode(),
        event.schema,
        meta,
        meta.decode(),
        event.event_id or new_event_id(),
    )
