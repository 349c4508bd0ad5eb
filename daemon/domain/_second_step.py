"""The second step of the move: requesting it, recording it, and what follows.

The request follows the account's policy (ask the user, or restart the sync) with reminders
and then a stall; once the step is recorded the account waits for the provider to run it, and
if the provider still has it stopped after `running_grace` the step is requested again. An
account flagged `invalid`/`sync_error` is always asked to re-authenticate, whatever the policy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import get_args

from . import events as ev
from ._builder import Action
from ._builder import Builder as _Builder
from .vocabulary import BrokenFlag, Policy

# Provider webhooks carry whole seconds (v2 `date`, v3 `time`), while the application reports
# auths to the millisecond: a stop stamped in the same second as the auth may well follow it.
PROVIDER_TIME_RESOLUTION = timedelta(seconds=1)

BROKEN: tuple[BrokenFlag, ...] = get_args(BrokenFlag)
"""Flags only the user's re-authentication can repair: a restart cannot.

See docs/provider.md#the-trigger-table.
"""


def broken(b: _Builder) -> list[BrokenFlag]:
    """The account's flags that need the user to re-authenticate, in a stable order."""
    return [flag for flag in BROKEN if flag in b.state.flags]


def not_before(provider_time: datetime, reference: datetime) -> bool:
    """Whether a provider-stamped time can be at or after `reference`, given its resolution."""
    return provider_time + PROVIDER_TIME_RESOLUTION > reference


def second_step(b: _Builder, at: datetime, how: str) -> None:
    """Record the second step; wait for the account to run, for `running_grace` at most."""
    b.move("second_auth", at, f"{how} recorded")
    b.cancel_timers("second step done")
    # A flagged account still needs the user's re-auth even after a restart: keep asking.
    kinds = (
        (ev.SyncRestartRequested,) if broken(b) else (ev.ReauthRequested, ev.SyncRestartRequested)
    )
    b.abandon_effects("second step already done", kinds)
    running = b.state.last_running_at
    if running is not None and not_before(running, at):
        b.move(
            "static", max(running, at), f"running at {running.isoformat()} was delivered earlier"
        )
        return
    # The provider may not move the account (its delay longer than ours, clock skew, a step it
    # ignored): without a deadline the account would wait in second_auth forever.
    s = b.state
    b.schedule(
        "running_grace",
        f"{b.id}:running_grace:{s.cycle}:{s.second_steps}",
        at + b.settings.running_grace,
    )


def arrived(b: _Builder, at: datetime, reason: str) -> None:
    """The account runs after its second step: the move is done."""
    b.cancel_timers("the account runs after the second step")
    b.flag("running_overdue", "the account runs", on=False)
    b.move("static", at, reason)


def not_moved(b: _Builder, at: datetime, why: str | None = None) -> None:
    """The provider still has the account stopped well after the second step: ask again.

    `why` replaces the default explanation (a stop seen at `at`), e.g. for an account flagged
    invalid that the step could not repair.

    The retry continues the reminder numbering (never resetting the cycle) and shifts what is
    left of the reminder schedule so the retry stands where its reminder would have, giving
    the user the usual time before the next reminder and the stall.
    """
    s = b.state
    due_at = b.second_step_due_at
    retry = s.reminders + 1
    schedule = b.settings.reminder_schedule
    offset = schedule[min(retry, len(schedule)) - 1] if schedule else timedelta(0)
    base = max(due_at, s.reminder_base or due_at, at - offset)
    why = why or (
        f"the provider reports the account stopped at {at.isoformat()}, "
        f"{at - b.second_step_at} after the second step: the move did not happen"
    )
    b.cancel_timers("the second step is requested again")
    b.flag("running_overdue", "the second step is requested again", on=False)
    b.move(
        "second_step_due",
        at,
        f"{why}; requesting the second step again (request {retry})",
        due_at=base,
    )
    request_step(b, retry, retry=True)


def _which(b: _Builder, reminder: int, retry: bool) -> str:
    """Which request of the second step this is, as the audit shows it: `reminder 1/2`."""
    if retry:
        return "second step again (the last one did not move the account)"
    if reminder == 0:
        return "second step"
    return f"reminder {reminder}/{len(b.settings.reminder_schedule)}"


def _why_reauth(b: _Builder, policy: Policy, which: str) -> str:
    flags = broken(b)
    if not flags:
        return f"{which}: the user is asked to re-authenticate"
    return (
        f"{which}: the account is flagged {' and '.join(flags)}: only the user's "
        f"re-authentication can repair it, so the user is asked whatever the policy ({policy})"
    )


def _step_effect(
    b: _Builder, policy: Policy, reminder: int, due_at: datetime, *, retry: bool
) -> ev.Event:
    """The second step's side effect under the account's policy (a re-auth if it is broken)."""
    cycle = b.state.cycle
    if policy == "restart" and not broken(b):
        return ev.SyncRestartRequested(
            account_id=b.id,
            occurred_at=b.at,
            idempotency_key=f"{b.id}:restart:{cycle}:{reminder}",
            due_at=due_at,
            reminder=reminder,
            reason=f"{_which(b, reminder, retry)}: the account's sync is restarted",
        )
    return ev.ReauthRequested(
        account_id=b.id,
        occurred_at=b.at,
        idempotency_key=f"{b.id}:reauth:{cycle}:{reminder}",
        stage="retry" if retry else "second_step" if reminder == 0 else "reminder",
        due_at=due_at,
        reminder=reminder,
        email=b.state.email,
        reason=_why_reauth(b, policy, _which(b, reminder, retry)),
    )


def reauth_now(b: _Builder) -> None:
    """Ask a broken account's user to re-authenticate now, when only a restart was requested.

    Under the `restart` policy the due step is a restart, which cannot repair credentials; the
    user is asked at once rather than at the next reminder. The schedule is left as it is.
    """
    s = b.state
    policy = s.policy or b.settings.default_policy
    if any(isinstance(p.effect, ev.ReauthRequested) for p in s.pending_effects.values()):
        return  # the user is being asked already
    # Numbered like the current request, with the stream version: a flag raised again later
    # (after a running cleared it) gets a new key.
    b.emit(
        ev.ReauthRequested(
            account_id=b.id,
            occurred_at=b.at,
            idempotency_key=f"{b.id}:reauth:{s.cycle}:{s.reminders}:broken:{s.version}",
            stage="second_step" if s.reminders == 0 else "reminder",
            due_at=b.second_step_due_at,
            reminder=s.reminders,
            email=s.email,
            reason=_why_reauth(b, policy, _which(b, s.reminders, False)),
        )
    )


def request_step(b: _Builder, reminder: int, *, retry: bool = False) -> None:
    """Request the second step (`reminder` 0 first) and arm the next reminder or the stall."""
    s = b.state
    due_at = b.second_step_due_at
    policy = s.policy or b.settings.default_policy
    restarting = policy == "restart" and any(
        isinstance(p.effect, ev.SyncRestartRequested) for p in s.pending_effects.values()
    )
    # A restart still being retried may already have happened at the provider: superseding it
    # would restart the account twice and ignore the first one's success. Let it finish; a
    # broken account's user is asked to re-authenticate alongside it.
    if not restarting or broken(b):
        kinds = (
            (ev.ReauthRequested,) if restarting else (ev.ReauthRequested, ev.SyncRestartRequested)
        )
        b.abandon_effects(f"superseded by reminder {reminder}", kinds)
        b.emit(_step_effect(b, policy, reminder, due_at, retry=retry))
    schedule = b.settings.reminder_schedule
    base = s.reminder_base or due_at
    if reminder < len(schedule):
        b.schedule(
            "reminder",
            f"{b.id}:reminder:{s.cycle}:{reminder + 1}",
            base + schedule[reminder],
        )
    else:
        last = schedule[-1] if schedule else timedelta(0)
        stall_id = f"{b.id}:stall:{s.cycle}"
        if stall_id in s.closed_timers or stall_id in s.pending_timers:
            stall_id += f":{reminder}"  # a retry after the last reminder: a new stall timer
        b.schedule("stall", stall_id, base + last + b.settings.stall_after)


def on_broken(b: _Builder, at: datetime, meaning: BrokenFlag) -> tuple[str, Action]:
    """An account newly flagged invalid/sync_error: only the user's re-auth repairs it."""
    s = b.state
    policy = s.policy or b.settings.default_policy
    if s.state == "second_step_due" and policy == "restart":

        def ask(b: _Builder) -> None:
            b.flag(meaning, meaning)
            reauth_now(b)

        return f"flagged {meaning}; a restart cannot repair it, the user is asked to re-auth", ask
    if s.state == "second_auth" and "running_grace" not in s.timer_purposes.values():
        # The grace is over and the account is still not running: it will not without the
        # user, so the second step is asked for again as a re-auth.
        def again(b: _Builder) -> None:
            b.flag(meaning, meaning)
            not_moved(b, at, not_repaired(b))

        return f"flagged {meaning} after the running grace; the user is asked to re-auth", again
    return f"flagged {meaning}; the state is kept", lambda b: b.flag(meaning, meaning)


def not_repaired(b: _Builder) -> str:
    """Why the step is requested again: flags a restart cannot repair, only the user."""
    return (
        f"the account is flagged {' and '.join(broken(b))} after the second step, which "
        "cannot repair it: the user must re-authenticate"
    )
