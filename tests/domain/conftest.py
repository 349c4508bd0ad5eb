"""Fixtures for the domain tests: a scripted flow over the in-memory harness."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.domain import (
    AccountObserved,
    AccountState,
    AuthReported,
    EffectOutcome,
    EnableMigration,
    Enroll,
    Event,
    ExcludeAccount,
    MarkResolved,
    MigrationSettings,
    ProviderNotified,
    ResetAccount,
    TimerDue,
)
from daemon.domain.testing import Harness

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = MigrationSettings(
    delay=timedelta(minutes=30),
    reminder_schedule=(timedelta(hours=1), timedelta(hours=24)),
    stall_after=timedelta(hours=24),
    stop_grace=timedelta(minutes=10),
)


class Flow:
    """Drives one account (default "a") through the harness with readable steps."""

    def __init__(self, settings: MigrationSettings = SETTINGS) -> None:
        self.h = Harness(settings)
        self.settings = settings
        self.now = T0
        self._ids = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def at(self, minutes: float) -> datetime:
        self.now = max(self.now, T0 + timedelta(minutes=minutes))
        return T0 + timedelta(minutes=minutes)

    def state(self, account: str = "a") -> AccountState:
        return self.h.accounts[account]

    def setup(self, *accounts: str, policy: str = "notify", enable: bool = True) -> Flow:
        if enable:
            self.h.handle(EnableMigration(input_id="enable", occurred_at=T0, actor="op"), T0)
        self.h.handle(
            Enroll(
                input_id=self._id("enroll"),
                occurred_at=T0,
                actor="op",
                account_ids=accounts or ("a",),
                wave="w1",
                policy=policy,  # type: ignore[arg-type]
            ),
            T0,
        )
        return self

    def auth(self, minutes: float, account: str = "a", **kw: Any) -> list[Event]:
        at = self.at(minutes)
        inp = AuthReported(input_id=self._id("auth"), account_id=account, occurred_at=at, **kw)
        return self.h.handle(inp, self.now)

    def hook(
        self, trigger: str, minutes: float, account: str = "a", version: int = 2, **details: Any
    ) -> list[Event]:
        at = self.at(minutes)
        inp = ProviderNotified(
            input_id=self._id("hook"),
            account_id=account,
            trigger=trigger,
            occurred_at=at,
            api_version=version,  # type: ignore[arg-type]
            details=details,
        )
        return self.h.handle(inp, self.now)

    def observe(self, minutes: float, account: str = "a", **kw: Any) -> list[Event]:
        at = self.at(minutes)
        inp = AccountObserved(input_id=self._id("obs"), account_id=account, observed_at=at, **kw)
        return self.h.handle(inp, self.now)

    def fire(self, purpose: str, account: str = "a", late: timedelta = timedelta(0)):
        """Fire the account's pending timer with `purpose` at its due time (+ late)."""
        s = self.state(account)
        [timer_id] = [t for t, p in s.timer_purposes.items() if p == purpose]
        return self.fire_id(timer_id, account, late)

    def fire_id(self, timer_id: str, account: str = "a", late: timedelta = timedelta(0)):
        due = self.state(account).pending_timers.get(timer_id, self.now)
        fired = due + late
        self.now = max(self.now, fired)
        inp = TimerDue(
            input_id=self._id(f"timer:{timer_id}"),
            account_id=account,
            timer_id=timer_id,
            due_at=due,
            fired_at=fired,
        )
        return self.h.handle(inp, self.now)

    def outcome(self, key: str, outcome: str, account: str = "a", attempt: int = 1, **kw: Any):
        inp = EffectOutcome(
            input_id=self._id(f"{key}:{attempt}"),
            account_id=account,
            effect_key=key,
            outcome=outcome,  # type: ignore[arg-type]
            attempt=attempt,
            occurred_at=self.now,
            **kw,
        )
        return self.h.handle(inp, self.now)

    def operator(self, kind: str, account: str = "a") -> list[Event]:
        cls = {"reset": ResetAccount, "exclude": ExcludeAccount, "resolve": MarkResolved}[kind]
        inp = cls(
            input_id=self._id(kind),
            account_id=account,
            occurred_at=self.now,
            actor="op",
            reason="ticket 42",
        )
        return self.h.handle(inp, self.now)

    def to_second_step_due(self) -> Flow:
        self.setup()
        self.auth(1)
        self.hook("account.stopped", 2)
        self.fire("second_step")
        return self


@pytest.fixture
def flow() -> Flow:
    return Flow()


def names(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]
