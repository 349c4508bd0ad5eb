"""Audit views over the log: an account's timeline, the funnel at a past moment, and the check
of every recorded move against the transition table (`MoveCheck`, which `verify` runs).

Pure functions over records as the event store returns them (anything with the fields of
`Record`), decoded with `decode_event`. The CLI's `audit` command and the operator API's
timeline are thin wrappers around `timeline` and `render_timeline`/`timeline_as_json`; `replay`
folds records into a fresh projection (`replay(...).funnel()` is the funnel at that moment).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import msgspec

from daemon.domain import (
    APPLICATION_STREAM,
    STATES,
    AccountsEnrolled,
    AccountState,
    EffectAttemptFailed,
    EffectSucceeded,
    InputKind,
    ReauthRequested,
    StateChanged,
    TimerFired,
    TimerScheduled,
    UnknownEvent,
    account_stream,
    decode_event,
    evolve_account,
)
from daemon.domain.streams import account_of, first_event_id, input_of, is_input_record
from daemon.domain.transitions import allows, input_kind_of
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
    return input_of(record.event_id)


def _reason(event: object) -> str:
    match event:
        case UnknownEvent():
            return f"unreadable event (type {event.event_type}, schema {event.schema})"
        case TimerScheduled():
            return f"{event.purpose} timer due {_when(event.due_at)}"
        case TimerFired():
            return f"{event.purpose} timer fired, {_late(event.lateness)}"
        case ReauthRequested() if not event.reason:
            return f"ask the user to re-authenticate ({event.stage}, request {event.reminder})"
        case EffectAttemptFailed():
            then = (
                f"; retry {_when(event.next_attempt_at)}"
                if event.next_attempt_at
                else "; not retried"
            )
            return f"attempt {event.attempt} failed: {event.detail}{then}"
        case EffectSucceeded() if event.attempt > 1:
            return f"retry succeeded (attempt {event.attempt}): {event.detail}"
    for field in ("reason", "detail"):
        value = getattr(event, field, None)
        if isinstance(value, str) and value:
            return value
    key = getattr(event, "idempotency_key", None)
    return f"effect {key}" if isinstance(key, str) else ""


def _when(at: datetime) -> str:
    """A time as the audit prints it: UTC, to the millisecond (steps of a demo are sub-second)."""
    return at.isoformat(timespec="milliseconds")


def _late(lateness: timedelta) -> str:
    ms = lateness / timedelta(milliseconds=1)
    return f"{ms:.0f} ms after its due time" if ms < 10_000 else f"{lateness} after its due time"


def render_timeline(entries: Iterable[TimelineEntry]) -> str:
    """The timeline as text, one line per event."""
    lines = []
    for e in entries:
        when = _when(e.occurred_at or e.recorded_at)
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


# --- moves against the transition table -------------------------------------------------------

_MAX_FINDINGS = 100


class MoveFinding(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded state change the transition table does not allow, or whose `from_state` is
    not the state the account was in (by folding the log up to it).

    kind: `illegal_move` (from -> to is not in the table for the kind of input that made it,
    `on`; `on` is null when the input's record does not say, and then no kind of input allows
    it), `wrong_from_state`, or `unreadable_move` (a StateChanged without readable states,
    which replay cannot read either).
    """

    position: int
    account_id: str
    kind: Literal["illegal_move", "wrong_from_state", "unreadable_move"]
    from_state: str
    to_state: str
    on: InputKind | None
    detail: str


class _Move(msgspec.Struct):
    """What the check reads of a StateChanged: any string, so a forged word is reported."""

    from_state: str
    to_state: str


_read_move = msgspec.json.Decoder(_Move)
_STATES: frozenset[str] = frozenset(STATES)
_RECENT_RECORDS = 4096  # streams whose latest input record MoveCheck keeps


class MoveCheck:
    """Checks each StateChanged of a log against the transition table, row by row in position
    order (an `eventstore` `RowVisitor`, so `verify` runs it in its own pass over the log).

    The kind of input behind a move is read from that input's record, its `#0` event, which
    the daemon appends just before the events it caused; without one (an id not of that form,
    an unreadable record, or one written before 4,096 other streams had an input since, which
    the daemon never does) the move must be allowed on some kind of input. The state an account
    was in is the last state a readable StateChanged moved it to, as replay folds it.
    """

    def __init__(self) -> None:
        self.findings: list[MoveFinding] = []
        self.moves_checked = 0
        self.complete = True  # False once more findings were seen than are kept
        self._states: dict[str, str] = {}
        # stream -> (event id, type, schema, data) of the latest input record in that stream,
        # for the streams that had one most recently: the daemon appends a record and the moves
        # it caused in one call, at consecutive positions, so a move finds its record here and
        # memory does not grow with every account's last input.
        self._records: dict[str, tuple[str, str, int, str | bytes]] = {}
        self._kinds: dict[str, InputKind | None] = {}  # record's event id -> its kind of input

    def __call__(
        self, position: int, stream: str, type_: str, schema: int, data: str | bytes, eid: str
    ) -> None:
        # Called for every row of the log: the common case (not a move) returns at once.
        if type_ != "StateChanged":
            if is_input_record(eid):
                records = self._records
                records.pop(stream, None)
                records[stream] = (eid, type_, schema, data)
                if len(records) > _RECENT_RECORDS:
                    del records[next(iter(records))]
            return
        if stream == APPLICATION_STREAM:
            return
        self.moves_checked += 1
        on = self._input_kind(stream, first_event_id(input_of(eid)))
        was = self._states.get(stream, "dynamic")
        account_id = account_of(stream) or stream
        try:
            move = _read_move.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._find(
                MoveFinding(
                    position=position,
                    account_id=account_id,
                    kind="unreadable_move",
                    from_state=was,
                    to_state="",
                    on=on,
                    detail=str(exc),
                )
            )
            return
        if move.from_state != was:
            self._find(
                MoveFinding(
                    position=position,
                    account_id=account_id,
                    kind="wrong_from_state",
                    from_state=move.from_state,
                    to_state=move.to_state,
                    on=on,
                    detail=f"the account was in {was}",
                )
            )
        if not allows(move.from_state, move.to_state, on):
            why = f"not allowed on {on}" if on else "not allowed on any input"
            self._find(
                MoveFinding(
                    position=position,
                    account_id=account_id,
                    kind="illegal_move",
                    from_state=move.from_state,
                    to_state=move.to_state,
                    on=on,
                    detail=f"{why} by the transition table",
                )
            )
        if move.to_state in _STATES:  # replay reads any other word as an UnknownEvent
            self._states[stream] = move.to_state

    def _input_kind(self, stream: str, record_id: str) -> InputKind | None:
        """The kind of input named by the record `record_id`, if it is the stream's latest."""
        record = self._records.get(stream)
        if record is None or record[0] != record_id:
            return None
        if record_id not in self._kinds:
            self._kinds.clear()  # one input at a time: keep only the record at hand
            _, type_, schema, data = record
            raw = data.encode() if isinstance(data, str) else data
            try:
                event = decode_event(type_, schema, raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                event = None
            self._kinds[record_id] = input_kind_of(event) if event is not None else None
        return self._kinds[record_id]

    def _find(self, finding: MoveFinding) -> None:
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.complete = False
