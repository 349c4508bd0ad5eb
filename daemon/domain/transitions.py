"""Every move between migration states, in one table: from which state, on which input, to where.

Everything that moves an account lives here: `decide` asks for moves through `Builder.move`,
which checks each against `TRANSITIONS` and raises `TransitionError` for one the table does not
list, and `staticipd verify` checks the moves a log records against the same table. README's
table of moves is drawn from it (`python -m daemon.domain.transitions` prints it).

One input can make several moves, each checked on its own: an auth that finds the stop already
recorded moves `dynamic` -> `first_auth` -> `stopped_waiting`; a second step that finds the
account already running moves on to `static` at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple, get_args

from .vocabulary import STATES, State, TimerPurpose

Trigger = Literal[
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
"""The kind of input that makes a move; a timer's kind includes its purpose."""

TRIGGERS: tuple[Trigger, ...] = get_args(Trigger)

TRIGGER_DOCS: dict[Trigger, str] = {
    "auth": "an end user's auth, from the application or a provider notification meaning one",
    "provider": "a provider webhook or the reconciler's observation (stopped, running, invalid)",
    "timer:stop_grace": "the timer armed at the first auth, in case the stop never arrives",
    "timer:second_step": "the timer of the delay since the first auth",
    "timer:reminder": "a reminder timer",
    "timer:stall": "the timer after which nobody is waited for any more",
    "timer:running_grace": "the timer armed at the second step, in case the account never runs",
    "effect_outcome": "the outbox's outcome of an effect (a sync restart that succeeded)",
    "reset": "the operator's reset",
    "exclude": "the operator's exclusion",
    "mark_resolved": "the operator's mark-resolved",
}

TIMER_TRIGGERS: dict[TimerPurpose, Trigger] = {
    "stop_grace": "timer:stop_grace",
    "second_step": "timer:second_step",
    "reminder": "timer:reminder",
    "stall": "timer:stall",
    "running_grace": "timer:running_grace",
}

# The operator can reset any account but a dynamic one and exclude any but an excluded one;
# while a migration is under way it can declare the second step done.
_OPERATOR: dict[Trigger, tuple[State, ...]] = {
    "mark_resolved": ("static",),
    "reset": ("dynamic",),
    "exclude": ("excluded",),
}
# An auth of an account deleted at the provider and re-created starts the migration over
# (`first_auth`), or leaves it (`dynamic`) for an application where it could not start.
_RECREATED: tuple[State, ...] = ("first_auth", "dynamic")

TRANSITIONS: dict[State, dict[Trigger, tuple[State, ...]]] = {
    "dynamic": {
        "auth": ("first_auth",),  # the first auth of an enrolled account
        "exclude": ("excluded",),
    },
    "first_auth": {
        # A stop delivered before its auth; after a re-creation, the migration starts over.
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
"""state -> trigger -> the states that trigger may move it to. A trigger a state does not list
moves it nowhere (the input is still recorded)."""

NEXT_STATES: dict[State, frozenset[State]] = {
    state: frozenset(to for targets in row.values() for to in targets)
    for state, row in TRANSITIONS.items()
}
"""state -> every state it may move to, on any trigger."""

# The same, looked up by any string (a log may hold a state this code does not know).
_ROWS: dict[str, dict[Trigger, tuple[State, ...]]] = {k: v for k, v in TRANSITIONS.items()}  # noqa: C416
_NEXT: dict[str, frozenset[str]] = {k: v for k, v in NEXT_STATES.items()}  # noqa: C416


class Transition(NamedTuple):
    """One allowed move."""

    from_state: State
    to_state: State
    on: Trigger


class TransitionError(Exception):
    """A move the transition table does not allow, or a state lacking what the table's path to
    it sets (a first auth time, say): a programming error in `decide`."""


def transitions() -> Iterator[Transition]:
    """Every allowed move, by state in funnel order, then trigger, then target."""
    for state in STATES:
        for on, targets in TRANSITIONS[state].items():
            for to in targets:
                yield Transition(state, to, on)


def allows(from_state: str, to_state: str, on: Trigger | None = None) -> bool:
    """Whether the table lets `from_state` move to `to_state` (on `on`; None: on any trigger).

    Takes any string, so a state read from a log that this code does not know is not allowed.
    """
    if on is None:
        return to_state in _NEXT.get(from_state, ())
    return to_state in _ROWS.get(from_state, {}).get(on, ())


def check(from_state: State, to_state: State, on: Trigger) -> None:
    """Raise `TransitionError` unless the table allows the move."""
    if not allows(from_state, to_state, on):
        raise TransitionError(f"{from_state} -> {to_state} on {on} is not in the transition table")


def markdown_table() -> str:
    """README's table of moves: each state, the states it may move to, and on which input."""
    lines = ["| from | may move to (on) |", "| --- | --- |"]
    for state in STATES:
        on_by_target: dict[State, list[Trigger]] = {}
        for on, targets in TRANSITIONS[state].items():
            for to in targets:
                on_by_target.setdefault(to, []).append(on)
        moves = [f"`{to}` ({', '.join(on_by_target[to])})" for to in STATES if to in on_by_target]
        lines.append(f"| `{state}` | {'; '.join(moves)} |")
    lines.append("")
    lines.append("On: " + "; ".join(f"`{on}`, {TRIGGER_DOCS[on]}" for on in TRIGGERS) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
