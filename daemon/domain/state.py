"""The states folded from the log: `AccountState` per account, `ApplicationState` once.

`evolve_account` and `evolve_application` are the only ways a state changes (whoever keeps
every stream's state calls them through `evolve_stream`); neither fails on an event it has no
use for (it still counts it in `version`, which the daemon passes as the stream's expected
version). States are frozen: evolve returns a new one, so a caller's copy never changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec
from msgspec.structs import replace

from . import events as ev
from .enrollments import Enrollment, Enrollments
from .events import UtcDatetime
from .vocabulary import Flag, Policy, State, TimerPurpose

_V = TypeVar("_V")


class PendingEffect(msgspec.Struct, frozen=True, kw_only=True):
    """An effect not yet done: the intent event, the attempts the log knows of, and the steps of
    it recorded as done (a sync restart's downgrade), in order."""

    effect: ev.EffectEvent
    attempts: int = 0
    next_attempt_at: UtcDatetime | None = None
    steps: tuple[str, ...] = ()


class AccountState(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One account's migration: state, step times, flags, pending timers and effects.

    Encoded as an array of its fields in order (`array_like`): a million of them are kept
    encoded in memory and in snapshots, where field names would double their size.
    """

    account_id: str
    version: int = 0
    state: State = "dynamic"
    cycle: int = 0
    policy: Policy | None = None
    wave: str | None = None
    first_auth_at: UtcDatetime | None = None
    stopped_at: UtcDatetime | None = None
    second_step_due_at: UtcDatetime | None = None
    second_step_at: UtcDatetime | None = None
    static_at: UtcDatetime | None = None
    stalled_at: UtcDatetime | None = None
    last_auth_at: UtcDatetime | None = None
    last_stop_at: UtcDatetime | None = None
    last_running_at: UtcDatetime | None = None
    email: str | None = None
    # Number of the latest second-step request (0 the first, then reminders and retries).
    reminders: int = 0
    # How many times this cycle entered `second_auth`: names each running-grace timer and check.
    second_steps: int = 0
    # Set when a second step the provider did not act on sends the account back to
    # `second_step_due`: the remaining reminders and the stall count from here, not from
    # `second_step_due_at` (which still decides whether an auth is early).
    reminder_base: UtcDatetime | None = None
    early_auths: int = 0
    flags: frozenset[Flag] = frozenset()
    pending_timers: dict[str, UtcDatetime] = {}
    timer_purposes: dict[str, TimerPurpose] = {}
    closed_timers: dict[str, Literal["fired", "cancelled"]] = {}
    pending_effects: dict[str, PendingEffect] = {}
    updated_at: UtcDatetime | None = None

    @property
    def next_due(self) -> datetime | None:
        """The earliest pending timer, if any."""
        return min(self.pending_timers.values(), default=None)


def evolve_account(state: AccountState | None, event: ev.Event) -> AccountState:
    """The account state after `event` (which must belong to the account's stream)."""
    if state is None:
        account_id = getattr(event, "account_id", None)
        if not isinstance(account_id, str):
            raise ValueError(f"{type(event).__name__} is not an account event")
        state = AccountState(account_id=account_id)
    changes: dict[str, object] = {"version": state.version + 1}
    if event.occurred_at is not None:
        changes["updated_at"] = event.occurred_at
    match event:
        case ev.AuthRecorded():
            changes["last_auth_at"] = _later(state.last_auth_at, event.occurred_at)
            if event.email:
                changes["email"] = event.email
            if event.classification == "early_second_auth":
                changes["early_auths"] = state.early_auths + 1
        case ev.ProviderNotificationRecorded(meaning="stopped"):
            changes["last_stop_at"] = _later(state.last_stop_at, event.occurred_at)
        case ev.ProviderNotificationRecorded(meaning="running" | "connected"):
            changes["last_running_at"] = _later(state.last_running_at, event.occurred_at)
        case ev.AccountObservationRecorded(sync_state="stopped"):
            changes["last_stop_at"] = _later(state.last_stop_at, event.occurred_at)
        case ev.AccountObservationRecorded(sync_state="running"):
            changes["last_running_at"] = _later(state.last_running_at, event.occurred_at)
        case ev.StateChanged():
            changes.update(_enter(state, event))
        case ev.FlagRaised():
            changes["flags"] = state.flags | {event.flag}
        case ev.FlagCleared():
            changes["flags"] = state.flags - {event.flag}
        case ev.TimerScheduled():
            changes["pending_timers"] = {**state.pending_timers, event.timer_id: event.due_at}
            changes["timer_purposes"] = {**state.timer_purposes, event.timer_id: event.purpose}
        case ev.TimerFired() | ev.TimerCancelled():
            outcome = "fired" if isinstance(event, ev.TimerFired) else "cancelled"
            changes["pending_timers"] = _without(state.pending_timers, event.timer_id)
            changes["timer_purposes"] = _without(state.timer_purposes, event.timer_id)
            changes["closed_timers"] = {**state.closed_timers, event.timer_id: outcome}
            if isinstance(event, ev.TimerFired) and event.purpose == "reminder":
                changes["reminders"] = state.reminders + 1
        case ev.ReauthRequested() | ev.SyncRestartRequested():
            # A retry after a second step that did not take is numbered after the last request.
            changes["reminders"] = max(state.reminders, event.reminder)
            pending = PendingEffect(effect=event)
            changes["pending_effects"] = {**state.pending_effects, event.idempotency_key: pending}
        case ev.EffectRequested():
            # Every EffectRequested subclass is one of EffectEvent; mypy sees only the base.
            pending = PendingEffect(effect=event)  # type: ignore[arg-type]
            changes["pending_effects"] = {**state.pending_effects, event.idempotency_key: pending}
        case ev.EffectAttemptFailed():
            current = state.pending_effects.get(event.idempotency_key)
            if current is not None:
                updated = replace(
                    current, attempts=event.attempt, next_attempt_at=event.next_attempt_at
                )
                changes["pending_effects"] = {
                    **state.pending_effects,
                    event.idempotency_key: updated,
                }
        case ev.EffectProgressed():
            current = state.pending_effects.get(event.idempotency_key)
            if current is not None and event.step not in current.steps:
                updated = replace(current, steps=(*current.steps, event.step))
                changes["pending_effects"] = {
                    **state.pending_effects,
                    event.idempotency_key: updated,
                }
        case ev.EffectSucceeded() | ev.EffectAbandoned():
            changes["pending_effects"] = _without(state.pending_effects, event.idempotency_key)
        case _:
            pass
    return replace(state, **changes)


# What a migration cycle has learnt, forgotten when the account starts over or starts anew.
_NO_CYCLE: dict[str, object] = {
    "stopped_at": None,
    "second_step_due_at": None,
    "second_step_at": None,
    "static_at": None,
    "stalled_at": None,
    "reminders": 0,
    "second_steps": 0,
    "reminder_base": None,
    "early_auths": 0,
}


def _enter(state: AccountState, e: ev.StateChanged) -> dict[str, object]:
    changes: dict[str, object] = {"state": e.to_state, "cycle": e.cycle}
    match e.to_state:
        case "dynamic":
            changes.update(_NO_CYCLE, first_auth_at=None, policy=None, wave=None)
        case "first_auth":
            changes.update(_NO_CYCLE, first_auth_at=e.at, policy=e.policy, wave=e.wave)
        case "stopped_waiting":
            changes.update(stopped_at=e.at, second_step_due_at=e.due_at)
        case "second_step_due" if e.due_at is not None:
            changes["reminder_base"] = e.due_at
        case "second_auth":
            changes.update(second_step_at=e.at, second_steps=state.second_steps + 1)
        case "static":
            changes["static_at"] = e.at
        case "stalled":
            changes["stalled_at"] = e.at
    return changes


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate > current else current


def _without(mapping: dict[str, _V], key: str) -> dict[str, _V]:
    if key not in mapping:
        return mapping
    return {k: v for k, v in mapping.items() if k != key}


class KnownIpList(msgspec.Struct, frozen=True, kw_only=True):
    """The latest known provider IP list of one kind."""

    addresses: tuple[str, ...]
    provider_updated_at: UtcDatetime | None = None
    changed_at: UtcDatetime


class ApplicationState(msgspec.Struct, frozen=True, kw_only=True):
    """The application-wide state: enablement, enrolments (waves) and IP lists."""

    version: int = 0
    migration_enabled: bool = False
    enabled_at: UtcDatetime | None = None
    # Persistent: each enrolment shares what it does not change with the state before it, so
    # enrolling a wave costs in proportion to the wave, not to every account enrolled.
    enrollments: Enrollments = Enrollments()
    # Accounts per wave, kept as enrolments happen (an account enrolled again moves).
    wave_sizes: dict[str, int] = {}
    ip_lists: dict[str, KnownIpList] = {}

    def waves(self) -> dict[str, int]:
        """Wave name -> number of accounts enrolled in it."""
        return dict(self.wave_sizes)


def evolve_application(state: ApplicationState | None, event: ev.Event) -> ApplicationState:
    """The application state after `event` (an event of the `application` stream)."""
    state = state or ApplicationState()
    changes: dict[str, object] = {"version": state.version + 1}
    match event:
        case ev.MigrationEnabled():
            changes.update(migration_enabled=True, enabled_at=event.occurred_at)
        case ev.AccountsEnrolled():
            enrollment = Enrollment(
                wave=event.wave, policy=event.policy, enrolled_at=event.occurred_at
            )
            sizes = dict(state.wave_sizes)
            enrollments, before = state.enrollments.enroll(event.account_ids, enrollment)
            for old in before:
                if old is not None:
                    sizes[old.wave] -= 1
                sizes[event.wave] = sizes.get(event.wave, 0) + 1
            changes["enrollments"] = enrollments
            changes["wave_sizes"] = {wave: n for wave, n in sizes.items() if n}
        case ev.IpListChanged():
            ip_list = KnownIpList(
                addresses=event.addresses,
                provider_updated_at=event.provider_updated_at,
                changed_at=event.occurred_at,
            )
            changes["ip_lists"] = {**state.ip_lists, event.kind: ip_list}
        case _:
            pass
    return replace(state, **changes)


def encode_hook(obj: object) -> object:
    """msgspec's `enc_hook` for the states: the enrolments are written as the dict they are."""
    if isinstance(obj, Enrollments):
        return dict(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def decode_hook(type_: Any, obj: object) -> object:
    """msgspec's `dec_hook` for the states: a dict read back into the enrolments."""
    if type_ is Enrollments:
        base = msgspec.convert(obj, dict[str, Enrollment])
        shared = {e: e for e in base.values()}  # one object per enrolment, as when folded
        base = {a: shared[e] for a, e in base.items()}
        return Enrollments.from_dict(base, tuple(shared))
    raise NotImplementedError(f"cannot decode {type_!r}")
