"""The event collector of one decision: emits events and folds them into a working state.

Every move goes through `Builder.move`, checked against the transition table for the kind of
input being decided (`on`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from . import events as ev
from .settings import MigrationSettings
from .state import AccountState, ApplicationState, evolve_account
from .transitions import InputKind, TransitionError, check
from .vocabulary import Flag, State, TimerPurpose

Action = Callable[["Builder"], None] | None


class Builder:
    """Collects the events of one decision, folding each into a working copy of the state.

    `on` is the kind of input decided: each move must be one the transition table allows on it
    (None: an input that moves nothing, such as a timer that is not pending).
    """

    def __init__(
        self,
        state: AccountState,
        at: datetime,
        settings: MigrationSettings,
        app: ApplicationState,
        on: InputKind | None,
    ) -> None:
        self.state, self.at, self.settings, self.app, self.on = state, at, settings, app, on
        self.events: list[ev.Event] = []

    @property
    def id(self) -> str:
        return self.state.account_id

    # The times a migration under way has set; asking for one that is not set is a bug.

    @property
    def first_auth_at(self) -> datetime:
        """The current cycle's first auth (set from `first_auth` until the cycle ends)."""
        return self._known(self.state.first_auth_at, "first_auth_at")

    @property
    def second_step_due_at(self) -> datetime:
        """When the second step came (or comes) due (set from `stopped_waiting` on)."""
        return self._known(self.state.second_step_due_at, "second_step_due_at")

    @property
    def second_step_at(self) -> datetime:
        """When the latest second step was recorded (set from `second_auth` on)."""
        return self._known(self.state.second_step_at, "second_step_at")

    def _known(self, value: datetime | None, name: str) -> datetime:
        if value is None:
            raise TransitionError(f"{name} is not set in state {self.state.state}")
        return value

    def emit(self, event: ev.Event) -> None:
        """Record `event` and fold it into the working state; a move goes through `move`."""
        if isinstance(event, ev.StateChanged):
            # Emitted here it would skip the table's check, so only `move` may emit one.
            raise TransitionError("a state change is made with Builder.move, not emitted")
        self._append(event)

    def _append(self, event: ev.Event) -> None:
        self.events.append(event)
        self.state = evolve_account(self.state, event)

    def move(self, to_state: State, at: datetime, reason: str, **extra: object) -> None:
        """Move to `to_state`; `TransitionError` if the table does not allow it on `self.on`."""
        if self.on is None:
            raise TransitionError(
                f"{self.state.state} -> {to_state} on an input that moves nothing"
            )
        check(self.state.state, to_state, self.on)
        self._append(
            ev.StateChanged(
                account_id=self.id,
                occurred_at=self.at,
                from_state=self.state.state,
                to_state=to_state,
                at=at,
                reason=reason,
                # `extra` holds StateChanged's optional fields, which callers name as keywords.
                cycle=extra.pop("cycle", self.state.cycle),  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )
        )

    def clear_flags(self, reason: str) -> None:
        for flag in sorted(self.state.flags):
            self.flag(flag, reason, on=False)

    def flag(self, flag: Flag, reason: str, *, on: bool = True) -> None:
        if (flag in self.state.flags) == on:
            return
        cls = ev.FlagRaised if on else ev.FlagCleared
        self.emit(cls(account_id=self.id, occurred_at=self.at, flag=flag, reason=reason))

    def schedule(self, purpose: TimerPurpose, timer_id: str, due_at: datetime) -> None:
        self.emit(
            ev.TimerScheduled(
                account_id=self.id,
                occurred_at=self.at,
                timer_id=timer_id,
                purpose=purpose,
                due_at=due_at,
            )
        )

    def cancel_timers(self, reason: str, purposes: tuple[TimerPurpose, ...] | None = None) -> None:
        for timer_id, purpose in sorted(self.state.timer_purposes.items()):
            if purposes is None or purpose in purposes:
                self.emit(
                    ev.TimerCancelled(
                        account_id=self.id, occurred_at=self.at, timer_id=timer_id, reason=reason
                    )
                )

    def abandon_effects(self, reason: str, kinds: tuple[type, ...] | None = None) -> None:
        for key, pending in sorted(self.state.pending_effects.items()):
            if kinds is None or isinstance(pending.effect, kinds):
                self.emit(
                    ev.EffectAbandoned(
                        account_id=self.id,
                        occurred_at=self.at,
                        idempotency_key=key,
                        attempt=pending.attempts,
                        detail=reason,
                    )
                )
