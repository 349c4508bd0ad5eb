"""Timing and policy settings of the migration, passed to `decide` as an argument.

Every duration is a `timedelta` and nothing assumes minutes: the demo runs the whole flow
with seconds-long values.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from .vocabulary import Policy as Policy  # re-exported: it was defined here first


class MigrationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How long to wait, when to remind, when to give up and which second step to use.

    - `delay`: the provider's minimum time between the first auth and the second step.
    - `reminder_schedule`: offsets after the second step came due at which the second step
      is requested again (a reminder to the user, or another restart).
    - `stall_after`: time after the last reminder after which the account is `stalled`.
    - `stop_grace`: if no stop is observed this long after the first auth, ask for a
      provider check (the webhook may have been lost).
    - `running_grace`: if the account is not seen running this long after the second step,
      ask for a provider check; a provider that still reports it stopped did not move it
      (its own delay was longer than ours, or it ignored the step), so the second step is
      requested again.
    - `default_policy`: the second step for enrolments that do not name one.
    """

    delay: timedelta = timedelta(minutes=30)
    reminder_schedule: tuple[timedelta, ...] = (
        timedelta(hours=1),
        timedelta(hours=24),
        timedelta(hours=72),
    )
    stall_after: timedelta = timedelta(hours=96)
    stop_grace: timedelta = timedelta(minutes=15)
    running_grace: timedelta = timedelta(minutes=15)
    default_policy: Policy = "notify"

    def __post_init__(self) -> None:
        if self.delay < timedelta(0) or self.stall_after < timedelta(0):
            raise ValueError("delay and stall_after must not be negative")
        if self.stop_grace <= timedelta(0) or self.running_grace <= timedelta(0):
            raise ValueError("stop_grace and running_grace must be positive")
        if list(self.reminder_schedule) != sorted(self.reminder_schedule) or any(
            r <= timedelta(0) for r in self.reminder_schedule
        ):
            raise ValueError("reminder_schedule must be positive and increasing")
