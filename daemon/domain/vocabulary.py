"""The migration's vocabulary as types: states, flags, timer purposes, classifications, meanings.

Each is a `Literal`, so the type checker follows every value through `decide` and `evolve`, and
msgspec refuses any other value when it decodes an event (`codec.py` reads such an event as an
`UnknownEvent`). The tuples are derived from the types, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

State = Literal[
    "dynamic",
    "first_auth",
    "stopped_waiting",
    "second_step_due",
    "second_auth",
    "static",
    "stalled",
    "excluded",
]
"""A migration state; the moves between them are in `transitions.py`."""

Flag = Literal[
    "invalid",
    "sync_error",
    "deleted",
    "early_second_auth",
    "stop_overdue",
    "running_overdue",
    "effect_gave_up",
]
"""A condition of an account that does not change its state."""

BrokenFlag = Literal["invalid", "sync_error"]
"""The flags only the user's re-authentication can repair (a restart cannot)."""

TimerPurpose = Literal["stop_grace", "second_step", "reminder", "stall", "running_grace"]

AuthClassification = Literal[
    "first_auth",
    "second_auth",
    "early_second_auth",
    "normal",
    "not_enrolled",
    "migration_disabled",
    "excluded",
    "stale",
]
"""What an end user's authentication meant for the migration."""

Meaning = Literal[
    "connected",
    "running",
    "stopped",
    "invalid",
    "sync_error",
    "deleted",
    "auth",
    "updated",
    "unrecognised",
]
"""What a provider notification or observation means to the domain (`triggers.py`)."""

Policy = Literal["notify", "restart"]
"""The second step: ask the user to re-authenticate, or restart the account's sync."""

EffectOutcomeKind = Literal["succeeded", "progressed", "failed_retrying", "gave_up"]
"""How an attempt at an effect ended, or (`progressed`) one step of it done, the attempt going
on."""

IpListKind = Literal["static", "dynamic"]

OperatorCommand = Literal["reset", "exclude", "mark_resolved"]
"""Operator commands on one account."""

ApplicationCommand = Literal["enable_migration", "enroll"]
"""Operator commands on the application."""

ReauthStage = Literal["second_step", "reminder", "retry"]
"""Which request a re-authentication message is: the first, a reminder, or a retry."""

STATES: tuple[State, ...] = get_args(State)
"""Every migration state, in funnel order."""
MIGRATING: tuple[State, ...] = (
    "first_auth",
    "stopped_waiting",
    "second_step_due",
    "second_auth",
    "stalled",
)
"""The states of a migration under way, from the first auth to `stalled`: where the provider's
reports still move the account and where the operator may mark it resolved."""
FLAGS: tuple[Flag, ...] = get_args(Flag)
TIMER_PURPOSES: tuple[TimerPurpose, ...] = get_args(TimerPurpose)
