"""The typed inputs of the domain: everything that can happen to the migration.

Each input is a frozen msgspec struct with a deterministic `input_id` (the delivery dedupe key
of a webhook, the application's auth event id, `timer:<timer_id>` for a timer firing, the
command id of an operator command, `outcome:<effect_key>:<attempt>` for an effect outcome, with
`:<step>` for a step done) and the time
it occurred. The daemon names the events of one input `<input_id>#<i>` (see `streams.py`), so a
redelivered input is found by the existence of `<input_id>#0`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from .events import UtcDatetime
from .streams import APPLICATION_STREAM, account_stream
from .vocabulary import EffectOutcomeKind, IpListKind, Policy


class Input(msgspec.Struct, frozen=True, kw_only=True, tag_field="input", tag=True):
    """Base of every input. Inputs are never stored or sent: the log holds the events recording
    them, so the `input` tag (the class name) can change with the class."""

    input_id: str
    # Which field holds the time the input occurred (the rules read it through `at`).
    TIME_FIELD: ClassVar[str] = "occurred_at"

    @property
    def at(self) -> datetime:
        """When the input occurred."""
        return getattr(self, self.TIME_FIELD)


class AccountInput(Input, frozen=True, kw_only=True):
    """An input about one account; decided against that account's state."""

    account_id: str


class ApplicationInput(Input, frozen=True, kw_only=True):
    """An input about the application as a whole."""


# --- operator commands ------------------------------------------------------------------------


class EnableMigration(ApplicationInput, frozen=True, kw_only=True):
    """Enable the static-IP migration for the application."""

    occurred_at: UtcDatetime
    actor: str
    reason: str = ""


class Enroll(ApplicationInput, frozen=True, kw_only=True):
    """Enrol accounts in a wave; `policy` None means the settings' default policy."""

    occurred_at: UtcDatetime
    account_ids: tuple[str, ...]
    wave: str
    policy: Policy | None = None
    actor: str
    reason: str = ""


class ResetAccount(AccountInput, frozen=True, kw_only=True):
    """Forget the account's migration progress: back to `dynamic`, timers and effects dropped."""

    occurred_at: UtcDatetime
    actor: str
    reason: str


class ExcludeAccount(AccountInput, frozen=True, kw_only=True):
    """Take the account out of the migration (until a reset)."""

    occurred_at: UtcDatetime
    actor: str
    reason: str


class MarkResolved(AccountInput, frozen=True, kw_only=True):
    """The operator states the account's problem is resolved (second step done out of band)."""

    occurred_at: UtcDatetime
    actor: str
    reason: str


# --- the application, the provider, timers, the outbox, pollers --------------------------------


class AuthReported(AccountInput, frozen=True, kw_only=True):
    """The application reports that the end user authenticated."""

    occurred_at: UtcDatetime
    email: str | None = None
    provider: str | None = None
    source: str = "app"


class ProviderNotified(AccountInput, frozen=True, kw_only=True):
    """A provider webhook about the account (one v2 delta or one v3 notification)."""

    trigger: str
    occurred_at: UtcDatetime
    api_version: Literal[2, 3] = 2
    details: dict[str, Any] = {}


class TimerDue(AccountInput, frozen=True, kw_only=True):
    """The timer driver fired a timer (`input_id` is `timer:<timer_id>`); recorded as the event
    `TimerFired` (or `TimerFiringIgnored`)."""

    timer_id: str
    TIME_FIELD: ClassVar[str] = "fired_at"
    due_at: UtcDatetime
    fired_at: UtcDatetime


class EffectOutcome(AccountInput, frozen=True, kw_only=True):
    """The outbox's outcome of one attempt at an effect, or (`progressed`) one step of it done;
    `step` names that step."""

    effect_key: str
    outcome: EffectOutcomeKind
    attempt: int
    detail: str = ""
    occurred_at: UtcDatetime
    next_attempt_at: UtcDatetime | None = None
    step: str = ""


class AccountObserved(AccountInput, frozen=True, kw_only=True):
    """The reconciler's view of the account at the provider."""

    sync_state: str | None = None
    billing_state: str | None = None
    exists: bool = True
    TIME_FIELD: ClassVar[str] = "observed_at"
    observed_at: UtcDatetime


class IpListObserved(ApplicationInput, frozen=True, kw_only=True):
    """The IP-list poller's result for the static or the dynamic list."""

    kind: IpListKind
    addresses: tuple[str, ...]
    provider_updated_at: UtcDatetime | None = None
    TIME_FIELD: ClassVar[str] = "observed_at"
    observed_at: UtcDatetime


def stream_for(inp: Input) -> str:
    """The stream whose state decides `inp` and receives its events."""
    if isinstance(inp, AccountInput):
        return account_stream(inp.account_id)
    return APPLICATION_STREAM
