"""The domain's events: frozen msgspec structs, one class per fact the log records.

Each class has a stable type name (its class name, also written as the `type` tag in the
JSON) and a schema version (`SCHEMA`). Account events carry `account_id` and live in the
stream `account-<account_id>`; the others live in the stream `application`. Every event
carries `occurred_at`, the time of the input that caused it, so replay never reads a clock.
Encoding, decoding and upcasting live in `codec.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar

import msgspec

from .vocabulary import (
    ApplicationCommand,
    AuthClassification,
    EffectOutcomeKind,
    Flag,
    IpListKind,
    Meaning,
    OperatorCommand,
    Policy,
    ReauthStage,
    State,
    TimerPurpose,
)

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An aware datetime; the domain only ever handles UTC."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every domain event."""

    SCHEMA: ClassVar[int] = 1
    occurred_at: UtcDatetime


class AccountEvent(Event, frozen=True, kw_only=True):
    """An event of one account's stream."""

    account_id: str


class ApplicationEvent(Event, frozen=True, kw_only=True):
    """An event of the application-wide stream (enablement, enrolment, IP lists)."""


# --- records of account inputs (always the first event of an input) -------------------------


class AuthRecorded(AccountEvent, frozen=True, kw_only=True):
    """An end-user authentication, with what it meant for the migration.

    `classification`: first_auth, second_auth, early_second_auth, normal, not_enrolled,
    migration_disabled, excluded, stale.
    """

    source: str
    email: str | None = None
    provider: str | None = None
    classification: AuthClassification
    reason: str


class ProviderNotificationRecorded(AccountEvent, frozen=True, kw_only=True):
    """A provider webhook (v2 or v3) and the meaning the trigger table gave it."""

    trigger: str
    api_version: int
    meaning: Meaning
    details: dict[str, Any] = {}
    reason: str


class AccountObservationRecorded(AccountEvent, frozen=True, kw_only=True):
    """What the reconciler saw of the account at the provider."""

    sync_state: str | None = None
    billing_state: str | None = None
    exists: bool = True
    reason: str


class OperatorCommandRecorded(AccountEvent, frozen=True, kw_only=True):
    """An operator command on one account (reset, exclude, mark_resolved) and its outcome."""

    command: OperatorCommand
    actor: str
    operator_reason: str
    reason: str


class TimerFiringIgnored(AccountEvent, frozen=True, kw_only=True):
    """A timer firing for a timer that is not pending (already fired, cancelled, unknown)."""

    timer_id: str
    reason: str


class EffectOutcomeIgnored(AccountEvent, frozen=True, kw_only=True):
    """An effect outcome for an effect that is no longer pending."""

    idempotency_key: str
    outcome: EffectOutcomeKind
    attempt: int
    reason: str


# --- state, flags, timers -------------------------------------------------------------------


class StateChanged(AccountEvent, frozen=True, kw_only=True):
    """The account moved between migration states; `at` is when the step really happened.

    Entering `first_auth` starts a new migration cycle (`cycle`, `policy`, `wave`);
    entering `stopped_waiting` sets `due_at`, when the second step comes due. Going back from
    `second_auth` to `second_step_due` (the provider did not move the account) sets `due_at`
    to the time the remaining reminder schedule now counts from.
    """

    from_state: State
    to_state: State
    at: UtcDatetime
    reason: str
    cycle: int
    policy: Policy | None = None
    wave: str | None = None
    due_at: UtcDatetime | None = None


class FlagRaised(AccountEvent, frozen=True, kw_only=True):
    """A condition that does not change the state (invalid, sync_error, deleted, ...)."""

    flag: Flag
    reason: str


class FlagCleared(AccountEvent, frozen=True, kw_only=True):
    """A flag no longer holds."""

    flag: Flag
    reason: str


class TimerScheduled(AccountEvent, frozen=True, kw_only=True):
    """A durable timer; `timer_id` is deterministic so it can fire at most once."""

    timer_id: str
    purpose: TimerPurpose
    due_at: UtcDatetime


class TimerFired(AccountEvent, frozen=True, kw_only=True):
    """A pending timer fired. Schema 2 added `lateness` (fired_at - due_at)."""

    SCHEMA: ClassVar[int] = 2
    timer_id: str
    purpose: TimerPurpose
    due_at: UtcDatetime
    fired_at: UtcDatetime
    lateness: timedelta


class TimerCancelled(AccountEvent, frozen=True, kw_only=True):
    """A pending timer will not fire."""

    timer_id: str
    reason: str


# --- effects (intents, performed by the outbox) and their outcomes ---------------------------


class EffectRequested(AccountEvent, frozen=True, kw_only=True):
    """Base of effect intents; `idempotency_key` is unique and deterministic."""

    idempotency_key: str


class ReauthRequested(EffectRequested, frozen=True, kw_only=True):
    """Ask the end user to authenticate again (through the application).

    `reason` says why a re-auth is asked for; under the `restart` policy it says the account is
    flagged `invalid`/`sync_error`, which only the user's re-authentication can repair.
    """

    stage: ReauthStage
    due_at: UtcDatetime
    reminder: int
    email: str | None = None
    reason: str = ""


class SyncRestartRequested(EffectRequested, frozen=True, kw_only=True):
    """Stop and start the account's sync through the provider API (the `restart` policy)."""

    due_at: UtcDatetime
    reminder: int
    reason: str


class ProviderCheckRequested(EffectRequested, frozen=True, kw_only=True):
    """Look the account up at the provider (a stop that never arrived)."""

    reason: str


class AppNotified(EffectRequested, frozen=True, kw_only=True):
    """Tell the application something about the account (e.g. an early second auth)."""

    topic: str
    detail: str


class EffectSucceeded(AccountEvent, frozen=True, kw_only=True):
    """The effect was performed."""

    idempotency_key: str
    attempt: int
    detail: str = ""


class EffectProgressed(AccountEvent, frozen=True, kw_only=True):
    """One step of an effect is done (a sync restart's downgrade); the effect stays pending, and
    a later attempt goes on after this step instead of doing it again."""

    idempotency_key: str
    attempt: int
    step: str
    detail: str = ""


class EffectAttemptFailed(AccountEvent, frozen=True, kw_only=True):
    """An attempt failed; the outbox tries again at `next_attempt_at`."""

    idempotency_key: str
    attempt: int
    detail: str = ""
    next_attempt_at: UtcDatetime | None = None


class EffectAbandoned(AccountEvent, frozen=True, kw_only=True):
    """The effect will not be performed (gave up, or no longer needed)."""

    idempotency_key: str
    attempt: int
    detail: str = ""


# --- application-wide ------------------------------------------------------------------------


class MigrationEnabled(ApplicationEvent, frozen=True, kw_only=True):
    """The operator enabled the migration for the application."""

    actor: str
    reason: str


class AccountsEnrolled(ApplicationEvent, frozen=True, kw_only=True):
    """Accounts enrolled (or re-enrolled) in a wave with a second-step policy."""

    account_ids: tuple[str, ...]
    wave: str
    policy: Policy
    actor: str
    reason: str


class ApplicationCommandNoted(ApplicationEvent, frozen=True, kw_only=True):
    """An application command that changed nothing, and why."""

    command: ApplicationCommand
    actor: str
    reason: str


class IpListChanged(ApplicationEvent, frozen=True, kw_only=True):
    """The provider's static or dynamic IP list changed."""

    kind: IpListKind
    addresses: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    provider_updated_at: UtcDatetime | None = None


class IpListUnchanged(ApplicationEvent, frozen=True, kw_only=True):
    """An IP-list poll that found the list as it was."""

    kind: IpListKind
    provider_updated_at: UtcDatetime | None = None
    reason: str


class InputQuarantined(ApplicationEvent, frozen=True, kw_only=True):
    """A correctly authenticated input that could not be read, kept as received for the audit.

    `body` is the raw text (or `body_hex` when it is not UTF-8); `field` and `reason` say what
    was wrong. Recorded once per body digest, however often the sender redelivers it.
    """

    source: str
    sha256: str
    field: str | None = None
    reason: str
    body: str | None = None
    body_hex: str | None = None


class UnknownEvent(Event, frozen=True, kw_only=True):
    """An event this code cannot read; replay carries on.

    Its type is unknown, its schema newer than this code's, or a value is outside this code's
    vocabulary (a state, flag or timer purpose a later version added).
    """

    # Optional here on purpose: an unreadable event may not tell when it happened.
    occurred_at: UtcDatetime | None = None  # type: ignore[assignment]
    event_type: str
    schema: int
    data: str
    account_id: str | None = None


EffectEvent = ReauthRequested | SyncRestartRequested | ProviderCheckRequested | AppNotified

EVENT_CLASSES: tuple[type[Event], ...] = (
    AuthRecorded,
    ProviderNotificationRecorded,
    AccountObservationRecorded,
    OperatorCommandRecorded,
    TimerFiringIgnored,
    EffectOutcomeIgnored,
    StateChanged,
    FlagRaised,
    FlagCleared,
    TimerScheduled,
    TimerFired,
    TimerCancelled,
    ReauthRequested,
    SyncRestartRequested,
    ProviderCheckRequested,
    AppNotified,
    EffectSucceeded,
    EffectAttemptFailed,
    EffectAbandoned,
    MigrationEnabled,
    AccountsEnrolled,
    ApplicationCommandNoted,
    IpListChanged,
    IpListUnchanged,
    InputQuarantined,
    EffectProgressed,
)
