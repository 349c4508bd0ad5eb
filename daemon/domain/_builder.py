"""The event collector of one decision: emits events and folds them into a working state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from . import events as ev
from .settings import MigrationSettings
from .state import AccountState, ApplicationState, evolve_account

MIGRATING = ("first_auth", "stopped_waiting", "second_step_due", "second_auth", "stalled")
Action = Callable[["Builder"], None] | None


class Builder:
    """Collects the events of one decision, folding each into a working copy of the state."""

    def __init__(
        self, state: AccountState, at: datetime, settings: MigrationSettings, app: ApplicationState
    ) -> None:
        self.state, self.at, self.settings, self.app = state, at, settings, app
        self.events: list[ev.Event] = []

    @property
    def id(self) -> str:
        return self.state.account_id

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)
        self.state = evolve_account(self.state, event)

    def move(self, to_state: str, at: datetime, reason: str, **extra: object) -> None:
        self.emit(
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

    def flag(self, flag: str, reason: str, *, on: bool = True) -> None:
        if (flag in self.state.flags) == on:
            return
        cls = ev.FlagRaised if on else ev.FlagCleared
        self.emit(cls(account_id=self.id, occurred_at=self.at, flag=flag, reason=reason))

    def schedule(self, purpose: str, timer_id: str, due_at: datetime) -> None:
        self.emit(
            ev.TimerScheduled(
                account_id=self.id,
                occurred_at=self.at,
                timer_id=timer_id,
                purpose=purpose,
                due_at=due_at,
            )
        )

    def cancel_timers(self, reason: str, purposes: tuple[str, ...] | None = None) -> None:
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
