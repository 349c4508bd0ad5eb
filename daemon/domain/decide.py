"""`decide` for one account: the migration rules, as a pure function of state, input and time.

`decide_account(state, input, now, settings, app)` returns the events of one input. The first
event always records the input itself (with a `reason` when it changes nothing); the rest are
the transitions, flags, timers and effects it causes. The daemon appends them in one
transaction at the stream's expected version `state.version`. `app` (the application state)
is read, never changed: it says whether the migration is enabled and how the account is
enrolled. Times used in rules are the inputs' own times, never later than `now`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypedDict

from . import events as ev
from . import inputs as inp
from ._builder import Action
from ._builder import Builder as _Builder
from ._operator import on_operator as _on_operator
from ._second_step import (
    BROKEN,
    arrived,
    broken,
    not_before,
    not_moved,
    not_repaired,
    on_broken,
    request_step,
    second_step,
)
from .settings import MigrationSettings
from .state import AccountState, ApplicationState
from .transitions import TIMER_INPUT_KINDS, InputKind
from .triggers import meaning_of, sync_state_meaning
from .vocabulary import AuthClassification, Meaning, State, TimerPurpose


def decide_account(
    state: AccountState | None,
    command: inp.AccountInput,
    now: datetime,
    settings: MigrationSettings,
    app: ApplicationState,
) -> list[ev.Event]:
    """The events recording `command` and its consequences for the account."""
    state = state or AccountState(account_id=command.account_id)
    b = _Builder(state, command.at, settings, app, _input_kind(state, command))
    at = min(command.at, now)  # a sender's clock ahead of ours must not shorten the delay
    match command:
        case inp.AuthReported():
            _on_auth(b, at, command.source, command.email, command.provider)
        case inp.ProviderNotified():
            _on_notification(b, at, command)
        case inp.AccountObserved():
            _on_observation(b, at, command)
        case inp.TimerDue():
            _on_timer(b, command)
        case inp.EffectOutcome():
            _on_outcome(b, at, command)
        case inp.ResetAccount() | inp.ExcludeAccount() | inp.MarkResolved():
            _on_operator(b, at, command)
        case _:
            raise TypeError(f"not an account input: {type(command).__name__}")
    return b.events


def _input_kind(state: AccountState, command: inp.AccountInput) -> InputKind | None:
    """The kind of input `command` is, for the transition table (None: it moves nothing)."""
    match command:
        case inp.AuthReported():
            return "auth"
        case inp.ProviderNotified() if (
            meaning_of(command.api_version, command.trigger, command.details) == "auth"
        ):
            return "auth"  # decided as the auth it reports
        case inp.ProviderNotified() | inp.AccountObserved():
            return "provider"
        case inp.TimerDue():
            purpose = state.timer_purposes.get(command.timer_id)
            return TIMER_INPUT_KINDS[purpose] if purpose is not None else None
        case inp.EffectOutcome():
            return "effect_outcome"
        case inp.ResetAccount():
            return "reset"
        case inp.ExcludeAccount():
            return "exclude"
        case inp.MarkResolved():
            return "mark_resolved"
        case _:
            return None


# --- auths ----------------------------------------------------------------------------------


def _classify_auth(b: _Builder, at: datetime) -> tuple[AuthClassification, str]:
    s, app = b.state, b.app
    if s.state == "excluded":
        return "excluded", "account excluded by the operator; auth recorded only"
    restarting = "deleted" in s.flags and s.state != "static"
    if s.state == "dynamic" or restarting:
        if not app.migration_enabled:
            return "migration_disabled", "migration not enabled for the application"
        if s.account_id not in app.enrollments:
            return "not_enrolled", "account not enrolled in any wave"
        if restarting:
            return "first_auth", "account re-created after deletion; migration starts over"
        return "first_auth", "first auth of an enrolled account"
    if s.state == "static":
        return "normal", "account already static; later auths are ordinary"
    if s.state == "second_auth":
        return "normal", "second step already recorded; waiting for the account to run"
    if at <= b.first_auth_at:
        return "stale", "auth occurred at or before the recorded first auth (late delivery)"
    if s.second_step_at is not None and at <= s.second_step_at:
        return "stale", "auth at or before the second step the provider did not act on"
    if s.second_step_due_at is None:
        return "early_second_auth", "no stop observed yet, so the second step is not due"
    if at < s.second_step_due_at:
        early = s.second_step_due_at - at
        return "early_second_auth", f"{early} before the second step is due"
    return "second_auth", "second auth after the second step came due"


def _on_auth(
    b: _Builder,
    at: datetime,
    source: str,
    email: str | None,
    provider: str | None,
) -> None:
    classification, reason = _classify_auth(b, at)
    early_count = b.state.early_auths + 1
    b.emit(
        ev.AuthRecorded(
            account_id=b.id,
            occurred_at=b.at,
            source=source,
            email=email,
            provider=provider,
            classification=classification,
            reason=reason,
        )
    )
    if classification == "excluded":
        return
    # Both flags ask for a re-auth (docs/provider.md#the-trigger-table): the user's auth is that
    # re-auth.
    for flag in BROKEN:
        b.flag(flag, "the user authenticated again", on=False)
    if "deleted" in b.state.flags:
        b.flag("deleted", "an auth shows the account exists again", on=False)
        if b.state.state not in ("dynamic", "static") and classification != "first_auth":
            b.move("dynamic", at, "account re-created after deletion outside the migration")
    match classification:
        case "first_auth":
            _start(b, at)
        case "second_auth":
            second_step(b, at, "second auth")
        case "early_second_auth":
            b.flag("early_second_auth", reason)
            b.emit(
                ev.AppNotified(
                    account_id=b.id,
                    occurred_at=b.at,
                    idempotency_key=f"{b.id}:notify:early_second_auth:{b.state.cycle}:{early_count}",
                    topic="early_second_auth",
                    detail=f"auth at {at.isoformat()} too early: {reason}; "
                    "the user will be asked again when the second step is due",
                )
            )


def _start(b: _Builder, at: datetime) -> None:
    enrollment = b.app.enrollments[b.id]
    cycle = b.state.cycle + 1
    b.move(
        "first_auth",
        at,
        "first auth of an enrolled account",
        cycle=cycle,
        policy=enrollment.policy,
        wave=enrollment.wave,
    )
    stop = b.state.last_stop_at
    if stop is not None and not_before(stop, at):
        _stopped(b, max(stop, at), f"stop at {stop.isoformat()} was delivered before this auth")
    else:
        b.schedule("stop_grace", f"{b.id}:stop_grace:{cycle}", at + b.settings.stop_grace)


def _stopped(b: _Builder, stop_at: datetime, reason: str) -> None:
    # The provider counts the delay from the first auth, but the account must have stopped.
    due = max(b.first_auth_at + b.settings.delay, stop_at)
    b.move("stopped_waiting", stop_at, reason, due_at=due)
    b.cancel_timers("stop observed", ("stop_grace", "stall"))
    b.flag("stop_overdue", "stop observed", on=False)
    b.schedule("second_step", f"{b.id}:second_step:{b.state.cycle}", due)


# --- provider notifications and reconciler observations --------------------------------------


def _on_notification(b: _Builder, at: datetime, n: inp.ProviderNotified) -> None:
    meaning = meaning_of(n.api_version, n.trigger, n.details)
    if meaning == "auth" and b.state.state != "excluded":
        record_reason, action = "an auth reported by the provider; see the next event", None
    else:
        record_reason, action = _react(b, at, meaning)
    b.emit(
        ev.ProviderNotificationRecorded(
            account_id=b.id,
            occurred_at=b.at,
            trigger=n.trigger,
            api_version=n.api_version,
            meaning=meaning,
            details=n.details,
            reason=record_reason,
        )
    )
    if meaning == "auth" and b.state.state != "excluded":
        email = n.details.get("email")
        provider = n.details.get("provider")
        _on_auth(
            b,
            at,
            f"provider-v{n.api_version}",
            email if isinstance(email, str) else None,
            provider if isinstance(provider, str) else None,
        )
    elif action is not None:
        action(b)


def _on_observation(b: _Builder, at: datetime, o: inp.AccountObserved) -> None:
    meaning = sync_state_meaning(o.sync_state, exists=o.exists, billing_state=o.billing_state)
    reason, action = _react(b, at, meaning)
    b.emit(
        ev.AccountObservationRecorded(
            account_id=b.id,
            occurred_at=b.at,
            sync_state=o.sync_state,
            billing_state=o.billing_state,
            exists=o.exists,
            reason=reason,
        )
    )
    if action is not None:
        action(b)


def _react(b: _Builder, at: datetime, meaning: Meaning) -> tuple[str, Action]:
    """What a provider-side fact means in the current state: (reason, what to do)."""
    s = b.state
    if s.state == "excluded":
        return "account excluded by the operator; recorded only", None
    if "deleted" in s.flags and meaning != "deleted":
        return "account deleted at the provider; recorded only", None
    match meaning:
        case "stopped":
            if s.state == "first_auth":
                if not not_before(at, b.first_auth_at):
                    return "stop occurred before the first auth; not this migration's stop", None
                stop_at = max(at, b.first_auth_at)
                return "the stop after the first auth", lambda b: _stopped(
                    b, stop_at, "stop observed after the first auth"
                )
            if s.state == "dynamic":
                # The usual order: the first auth stops the account, and the provider's
                # webhook often arrives before the application's auth event.
                return (
                    "stop before its auth event (the usual order); kept for the auth that follows"
                ), None
            if s.state == "second_auth":
                step_at = b.second_step_at
                # A restart stops the sync before starting it, and the provider may take a
                # while to move the account: only a stop well after the step means no move.
                if at < step_at + b.settings.running_grace:
                    return (
                        f"stop within {b.settings.running_grace} of the second step; the "
                        "provider may still be moving the account"
                    ), None
                return "stopped long after the second step: the move did not happen", (
                    lambda b: not_moved(b, at)
                )
            return f"stop noted; no effect in state {s.state}", None
        case "running" | "connected":
            action = _healthy
            if s.state == "second_auth":
                step_at = b.second_step_at
                # Webhook dates are whole seconds: a running in the second of the step counts.
                if not_before(at, step_at):

                    def arrive(b: _Builder) -> None:
                        _healthy(b)
                        arrived(b, max(at, step_at), f"{meaning} after the second step")

                    return f"{meaning} after the second step: the move is done", arrive
                return f"{meaning} occurred before the second step; not the move", action
            if s.state == "first_auth":
                return f"{meaning} before the stop was observed; still waiting for the stop", action
            return f"{meaning} noted; no effect in state {s.state}", action
        case "invalid" | "sync_error":
            if meaning in s.flags:
                return f"already flagged {meaning}", None
            return on_broken(b, at, meaning)
        case "deleted":
            if "deleted" in s.flags:
                return "already flagged deleted", None
            return "account deleted at the provider; timers and effects dropped", _deleted
        case "updated":
            return "grant updated without re-authentication; nothing to do", None
        case _:
            return "trigger not in the trigger table; recorded only", None


def _healthy(b: _Builder) -> None:
    b.flag("invalid", "the account runs", on=False)
    b.flag("sync_error", "the account runs", on=False)


def _deleted(b: _Builder) -> None:
    b.flag("deleted", "account deleted at the provider")
    b.cancel_timers("account deleted")
    b.abandon_effects("account deleted")


# --- timers and effect outcomes ----------------------------------------------------------------


def _on_timer(b: _Builder, t: inp.TimerDue) -> None:
    s = b.state
    due = s.pending_timers.get(t.timer_id)
    if due is None:
        closed = s.closed_timers.get(t.timer_id)
        reason = f"timer already {closed}" if closed else "unknown timer"
        b.emit(
            ev.TimerFiringIgnored(
                account_id=b.id, occurred_at=b.at, timer_id=t.timer_id, reason=reason
            )
        )
        return
    purpose = s.timer_purposes[t.timer_id]
    b.emit(
        ev.TimerFired(
            account_id=b.id,
            occurred_at=b.at,
            timer_id=t.timer_id,
            purpose=purpose,
            due_at=due,
            fired_at=t.fired_at,
            lateness=t.fired_at - due,
        )
    )
    handler = TIMER_DISPATCH.get((purpose, b.state.state))
    if handler is not None:
        handler(b, due)


def _stop_overdue(b: _Builder, due: datetime) -> None:
    b.flag("stop_overdue", f"no stop within {b.settings.stop_grace} of the first auth")
    _ask_provider(
        b,
        f"{b.id}:provider_check:{b.state.cycle}",
        "no account.stopped received; check the account at the provider",
    )
    # Without a stop nothing else is scheduled: stall where a neglected second step would.
    b.schedule("stall", f"{b.id}:stall:{b.state.cycle}:stop", b.first_auth_at + _patience(b))


def _running_overdue(b: _Builder, due: datetime) -> None:
    if broken(b):
        not_moved(b, due, not_repaired(b))
        return
    grace = b.settings.running_grace
    b.flag("running_overdue", f"not running {grace} after the second step")
    _ask_provider(
        b,
        f"{b.id}:provider_check:{b.state.cycle}:step:{b.state.second_steps}",
        f"no account.running within {grace} of the second step; check whether the provider "
        "moved the account",
    )
    s = b.state
    b.schedule(
        "stall", f"{b.id}:stall:{s.cycle}:step:{s.second_steps}", due + b.settings.stall_after
    )


def _ask_provider(b: _Builder, key: str, reason: str) -> None:
    """Have the outbox read the account at the provider; its answer comes back an observation."""
    b.emit(
        ev.ProviderCheckRequested(
            account_id=b.id, occurred_at=b.at, idempotency_key=key, reason=reason
        )
    )


def _second_step_due(b: _Builder, due: datetime) -> None:
    b.move("second_step_due", due, "the delay since the first auth has passed")
    request_step(b, 0)


def _remind(b: _Builder, due: datetime) -> None:
    request_step(b, b.state.reminders)


def _stall(reason: str) -> Callable[[_Builder, datetime], None]:
    def stall(b: _Builder, due: datetime) -> None:
        b.move("stalled", due, reason)

    return stall


def _no_stop_stall(b: _Builder, due: datetime) -> None:
    b.move("stalled", due, f"no stop observed {due - b.first_auth_at} after the first auth")


TIMER_DISPATCH: dict[tuple[TimerPurpose, State], Callable[[_Builder, datetime], None]] = {
    ("stop_grace", "first_auth"): _stop_overdue,
    ("running_grace", "second_auth"): _running_overdue,
    ("second_step", "stopped_waiting"): _second_step_due,
    ("reminder", "second_step_due"): _remind,
    ("stall", "second_step_due"): _stall("no second step after the last reminder"),
    ("stall", "first_auth"): _no_stop_stall,
    ("stall", "second_auth"): _stall("the account never ran after the second step"),
}
"""(purpose, state) -> what a pending timer's firing does, given its due time. A pair not listed
does nothing beyond recording the firing (a timer outlived by a move the other way)."""


def _patience(b: _Builder) -> timedelta:
    """How long after the first auth a neglected migration stalls: delay, reminders, stall."""
    schedule = b.settings.reminder_schedule
    last = schedule[-1] if schedule else timedelta(0)
    return b.settings.delay + last + b.settings.stall_after


class _EffectEventHead(TypedDict):
    """The fields every event about an effect's outcome starts with."""

    account_id: str
    occurred_at: datetime
    idempotency_key: str


def _on_outcome(b: _Builder, at: datetime, o: inp.EffectOutcome) -> None:
    pending = b.state.pending_effects.get(o.effect_key)
    common = _EffectEventHead(account_id=b.id, occurred_at=b.at, idempotency_key=o.effect_key)
    if pending is None:
        b.emit(
            ev.EffectOutcomeIgnored(
                **common,
                outcome=o.outcome,
                attempt=o.attempt,
                reason="effect not pending (done, abandoned or unknown)",
            )
        )
        return
    if o.outcome == "progressed":
        b.emit(ev.EffectProgressed(**common, attempt=o.attempt, step=o.step, detail=o.detail))
    elif o.outcome == "failed_retrying":
        b.emit(
            ev.EffectAttemptFailed(
                **common, attempt=o.attempt, detail=o.detail, next_attempt_at=o.next_attempt_at
            )
        )
    elif o.outcome == "gave_up":
        b.emit(ev.EffectAbandoned(**common, attempt=o.attempt, detail=o.detail or "gave up"))
        b.flag("effect_gave_up", f"gave up on {o.effect_key}")
    else:
        b.emit(ev.EffectSucceeded(**common, attempt=o.attempt, detail=o.detail))
        effect = pending.effect
        if isinstance(effect, ev.SyncRestartRequested) and b.state.state in (
            "second_step_due",
            "stalled",
        ):
            # Requested once due, so it cannot have happened earlier than due (clock skew).
            second_step(b, max(at, effect.due_at), "sync restart")
