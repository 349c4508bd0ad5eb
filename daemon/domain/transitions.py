"""Every move between migration states, in one table: from which state, on which input, to where.

Everything that moves an account lives here: `decide` asks for moves through `Builder.move`,
which checks each against `TRANSITIONS` and raises `TransitionError` for one the table does not
list, and `staticipd verify` checks the moves a log records against the same table. README's
table of moves is drawn from it (`markdown_table()`; a test says when README differs).

One input can make several moves, each checked on its own: an auth that finds the stop already
recorded moves `dynamic` -> `first_auth` -> `stopped_waiting`; a second step that finds the
account already running moves on to `static` at once. docs/state-machine.md tells the reasons
behind the moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple, get_args

from . import events as ev
from .vocabulary import STATES, State, TimerPurpose

InputKind = Literal[
    "auth",
    "provider",
    "timer:stop_grace",
    "timer:second_step",
    "timer:reminder",
    "timer:stall",
    "timer:running_grace",
    "effect_outcome",
    "reset",
    "exclude",
    "mark_resolved",
]
"""The kind of input that makes a move; a timer's kind includes its purpose. (A provider
webhook's `trigger`, such as `account.stopped`, is another thing: see `triggers.py`.)"""

INPUT_KINDS: tuple[InputKind, ...] = get_args(InputKind)

INPUT_KIND_DOCS: dict[InputKind, str] = {
    "auth": "an end user's auth: the application's auth event, or a provider notification "
    "that reports one",
    "provider": "a provider webhook or a reconciler observation of the account (stopped, "
    "running, invalid, ...)",
    "timer:stop_grace": "the timer `stop_grace` after the first auth",
    "timer:second_step": "the timer at first auth + delay (never before the stop)",
    "timer:reminder": "a reminder timer",
    "timer:stall": "the stall timer",
    "timer:running_grace": "the timer `running_grace` after the second step",
    "effect_outcome": "the outbox's outcome of an effect (here: a sync restart that succeeded)",
    "reset": "the operator's reset",
    "exclude": "the operator's exclusion",
    "mark_resolved": "the operator's mark-resolved",
}
"""What each kind of input is, in README's words."""

TIMER_INPUT_KINDS: dict[TimerPurpose, InputKind] = {
    "stop_grace": "timer:stop_grace",
    "second_step": "timer:second_step",
    "reminder": "timer:reminder",
    "stall": "timer:stall",
    "running_grace": "timer:running_grace",
}

# The operator can reset any account but a dynamic one and exclude any but an excluded one;
# while a migration is under way it can declare the second step done.
_OPERATOR: dict[InputKind, tuple[State, ...]] = {
    "mark_resolved": ("static",),
    "reset": ("dynamic",),
    "exclude": ("excluded",),
}
# An auth of an account deleted at the provider and re-created starts the migration over
# (`first_auth`), or leaves it (`dynamic`) for an application where it could not start.
_RECREATED: tuple[State, ...] = ("first_auth", "dynamic")

TRANSITIONS: dict[State, dict[InputKind, tuple[State, ...]]] = {
    "dynamic": {
        "auth": ("first_auth",),  # the first auth of an enrolled account
        "exclude": ("excluded",),
    },
    "first_auth": {
        # Entered in this same input, a stop delivered before the auth already recorded.
        "auth": ("stopped_waiting", *_RECREATED),
        "provider": ("stopped_waiting",),  # the account stopped
        "timer:stall": ("stalled",),  # no stop ever came
        **_OPERATOR,
    },
    "stopped_waiting": {
        "auth": ("second_auth", *_RECREATED),  # due before the second-step timer fired
        "timer:second_step": ("second_step_due",),
        **_OPERATOR,
    },
    "second_step_due": {
        "auth": ("second_auth", *_RECREATED),
        "effect_outcome": ("second_auth",),  # the sync restart succeeded
        "timer:stall": ("stalled",),  # no second step after the last reminder
        **_OPERATOR,
    },
    "second_auth": {
        # Entered in this same input, the account found already running.
        "auth": ("static", *_RECREATED),
        "effect_outcome": ("static",),
        # Running: the move is done. Still stopped, or flagged invalid/sync_error, after the
        # running grace: the second step is requested again.
        "provider": ("static", "second_step_due"),
        "timer:running_grace": ("second_step_due",),  # flagged invalid/sync_error
        "timer:stall": ("stalled",),  # never ran after the second step
        **_OPERATOR,
    },
    "static": {
        "reset": ("dynamic",),
        "exclude": ("excluded",),
    },
    "stalled": {
        "auth": ("second_auth", *_RECREATED),  # a late second auth
        "effect_outcome": ("second_auth",),  # a late restart
        **_OPERATOR,
    },
    "excluded": {
        "reset": ("dynamic",),
    },
}
"""state -> kind of input -> the states it may move to. A kind of input a state does not list
moves it nowhere (the input is still recorded)."""

NEXT_STATES: dict[State, frozenset[State]] = {
    state: frozenset(to for targets in row.values() for to in targets)
    for state, row in TRANSITIONS.items()
}
"""state -> every state it may move to, on any kind of input."""

# The same, looked up by any string (a log may hold a state this code does not know).
_ROWS: dict[str, dict[InputKind, tuple[State, ...]]] = dict(TRANSITIONS.items())
_NEXT: dict[str, frozenset[str]] = dict(NEXT_STATES.items())


class Transition(NamedTuple):
    """One allowed move."""

    from_state: State
    to_state: State
    on: InputKind


class TransitionError(Exception):
    """A move the transition table does not allow, or a state lacking what the table's path to
    it sets (a first auth time, say): a programming error in `decide`."""


def transitions() -> Iterator[Transition]:
    """Every allowed move, by state in funnel order, then kind of input, then target."""
    for state in STATES:
        for on, targets in TRANSITIONS[state].items():
            for to in targets:
                yield Transition(state, to, on)


def allows(from_state: str, to_state: str, on: InputKind | None = None) -> bool:
    """Whether the table lets `from_state` move to `to_state` on `on` (None: on any input).

    Takes any string, so a state read from a log that this code does not know is not allowed.
    """
    if on is None:
        return to_state in _NEXT.get(from_state, ())
    return to_state in _ROWS.get(from_state, {}).get(on, ())


def check(from_state: State, to_state: State, on: InputKind) -> None:
    """Raise `TransitionError` unless the table allows the move."""
    if not allows(from_state, to_state, on):
        raise TransitionError(f"{from_state} -> {to_state} on {on} is not in the transition table")


def input_kind_of(recorded: ev.Event) -> InputKind | None:
    """The kind of input whose record (always its first event, `<input_id>#0`) is `recorded`;
    None when the record does not say (an unreadable event, or not an account input's record).

    A log's moves do not name their input, but each input's events are appended together after
    its record, so the audit finds the kind of input that made a move from the record.
    """
    match recorded:
        case ev.AuthRecorded() | ev.ProviderNotificationRecorded(meaning="auth"):
            return "auth"
        case ev.ProviderNotificationRecorded() | ev.AccountObservationRecorded():
            return "provider"
        case ev.TimerFired():
            return TIMER_INPUT_KINDS[recorded.purpose]
        case (
            ev.EffectSucceeded()
            | ev.EffectProgressed()
            | ev.EffectAttemptFailed()
            | ev.EffectAbandoned()
            | ev.EffectOutcomeIgnored()
        ):
            return "effect_outcome"
        case ev.OperatorCommandRecorded():
            return recorded.command
        case _:
            return None


def markdown_table() -> str:
    """README's table of moves: each state, the states it may move to, and on which input."""
    lines = ["| from | may move to (on) |", "| --- | --- |"]
    used: set[InputKind] = set()
    for state in STATES:
        on_by_target: dict[State, list[InputKind]] = {}
        for on, targets in TRANSITIONS[state].items():
            used.add(on)
            for to in targets:
                on_by_target.setdefault(to, []).append(on)
        moves = [f"`{to}` ({', '.join(on_by_target[to])})" for to in STATES if to in on_by_target]
        lines.append(f"| `{state}` | {'; '.join(moves)} |")
    lines.append("")
    lines.extend(f"- {on}: {INPUT_KIND_DOCS[on]}" for on in INPUT_KINDS if on in used)
    return "\n".join(lines) + "\n"
