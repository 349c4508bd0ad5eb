"""Audit views over the log: an account's timeline and the funnel at a past moment.

Pure functions over records as the event store returns them (anything with the fields of
`Record`), decoded with `decode_event`. The CLI's `audit` command and the operator API's
timeline are thin wrappers around `timeline` and `render_timeline`/`timeline_as_json`; `replay`
folds records into a fresh projection (`replay(...).funnel()` is the funnel at that moment).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import msgspec

from daemon.domain import (
    APPLICATION_STREAM,
    AccountsEnrolled,
    AccountState,
    ReauthRequested,
    StateChanged,
    TimerFired,
    TimerScheduled,
    UnknownEvent,
    account_stream,
    decode_event,
    evolve_account,
)
from daemon.runtime.projections import Projection


class Record(Protocol):
    """The fields of an event-store record that the audit reads."""

    @property
    def position(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def schema(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def metadata(self) -> bytes: ...
    @property
    def event_id(self) -> str: ...
    @property
    def recorded_at(self) -> datetime: ...


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of an account's history, with the state around it and the reason."""

    position: int
    recorded_at: datetime
    occurred_at: datetime | None
    event_id: str
    source: str
    type: str
    state_before: str
    state_after: str
    reason: str
    data: dict[str, Any]


def timeline(records: Iterable[Record], account_id: str) -> list[TimelineEntry]:
    """The account's history: its stream's events, plus the enrolments that name it.

    Records of other streams are skipped, so the whole log may be passed.
    """
    stream = account_stream(account_id)
    state: AccountState | None = None
    entries: list[TimelineEntry] = []
    for record in records:
        if record.stream != stream and not (
            record.stream == APPLICATION_STREAM and record.type == "AccountsEnrolled"
        ):
            continue
        event = decode_event(record.type, record.schema, record.data)
        if isinstance(event, AccountsEnrolled) and account_id not in event.account_ids:
            continue
        before = state.state if state else "dynamic"
        if record.stream == stream:
            state = evolve_account(state, event)
        after = state.state if state else "dynamic"
        data = msgspec.to_builtins(event)
        data.pop("type", None)
        entries.append(
            TimelineEntry(
                position=record.position,
                recorded_at=record.recorded_at,
                occurred_at=event.occurred_at,
                event_id=record.event_id,
                source=_source(record),
                type=record.type,
                state_before=before,
                state_after=after,
                reason=_reason(event),
                data=data,
            )
        )
    return entries


def _source(record: Record) -> str:
    try:
        metadata = msgspec.json.decode(record.metadata) if record.metadata else {}
    except msgspec.DecodeError:
        metadata = {}
    if isinstance(metadata, dict) and isinstance(metadata.get("source"), str):
        return metadata["source"]
    # Without metadata the input id (the event id before `#`) still says where it came from.
    return record.event_id.rsplit("#", 1)[0]


def _reason(event: object) -> str:
    match event:
        case UnknownEvent():
            return f"unreadable event (type {event.event_type}, schema {event.schema})"
        case TimerScheduled():
            return f"{event.purpose} timer due {event.due_at.isoformat(timespec='seconds')}"
        case TimerFired():
            return f"{event.purpose} timer fired, {event.lateness} after its due time"
        case ReauthRequested() if not event.reason:
            return f"ask the user to re-authenticate ({event.stage}, request {event.reminder})"
    for field in ("reason", "detail"):
        value = getattr(event, field, None)
        if isinstance(value, str) and value:
            return value
    key = getattr(event, "idempotency_key", None)
    return f"effect {key}" if isinstance(key, str) else ""


def render_timeline(entries: Iterable[TimelineEntry]) -> str:
    """The timeline as text, one line per event."""
    lines = []
    for e in entries:
        when = (e.occurred_at or e.recorded_at).isoformat(timespec="seconds")
        move = (
            f"{e.state_before} -> {e.state_after}"
            if e.state_before != e.state_after
            else e.state_after
        )
        reason = f" — {e.reason}" if e.reason else ""
        lines.append(f"#{e.position:<8} {when}  {e.type:<30} {move:<32} [{e.source}]{reason}")
    return "\n".join(lines)


def timeline_as_json(entries: Iterable[TimelineEntry]) -> list[dict[str, Any]]:
    """The timeline as JSON-able dicts (datetimes as ISO 8601 strings)."""
    return [msgspec.to_builtins(e) for e in entries]


def replay(
    records: Iterable[Record],
    *,
    until_time: datetime | None = None,
    until_position: int | None = None,
) -> Projection:
    """A fresh projection of the records up to a position and/or a recording time (inclusive)."""
    projection = Projection()
    for record in records:
        if until_position is not None and record.position > until_position:
            break
        if until_time is not None and record.recorded_at > until_time:
            break
        projection.apply(record.position, decode_event(record.type, record.schema, record.data))
    return projection


def transitions(entries: Iterable[TimelineEntry]) -> list[TimelineEntry]:
    """Only the entries that changed the account's state."""
    return [e for e in entries if e.type == StateChanged.__name__]
