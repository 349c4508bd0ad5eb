"""The read model folded from the log: every account, the application, and their indexes.

`Projection.apply(position, event)` folds one decoded event (in log order; positions already
applied are skipped, so a snapshot plus an overlapping tail is safe). It answers the daemon
(states for `decide`, pending timers for the timer driver, pending effects for the outbox) and
the operator API (funnel, waves, paged listings). `to_snapshot()`/`from_snapshot()` store it
with msgspec; `digest()` and `==` let a live projection be compared with a fresh replay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import datetime

import msgspec

from daemon.domain import (
    STATES,
    AccountsEnrolled,
    AccountState,
    ApplicationState,
    Event,
    PendingEffect,
    evolve_account,
    evolve_application,
    stream_of,
)

SNAPSHOT_FORMAT = 1


class _Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    position: int
    application: ApplicationState
    accounts: list[AccountState]


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; pass `next_cursor` as `after` for the next one (None: the end)."""

    accounts: list[AccountState]
    next_cursor: str | None


_encoder = msgspec.json.Encoder(order="deterministic")
_snapshot_decoder = msgspec.json.Decoder(_Snapshot)


class Projection:
    """Accounts by id with indexes by state and by pending work, plus the application state."""

    def __init__(self) -> None:
        self.position = 0
        self.application = ApplicationState()
        self._accounts: dict[str, AccountState] = {}
        self._by_state: dict[str, set[str]] = {state: set() for state in STATES}
        self._with_timers: set[str] = set()
        self._with_effects: set[str] = set()

    # --- folding ---------------------------------------------------------------------------

    def apply(self, position: int, event: Event) -> bool:
        """Fold the event at `position`; False (and no change) if that position was applied."""
        if position <= self.position:
            return False
        stream = stream_of(event)
        if stream == "application":
            self.application = evolve_application(self.application, event)
            if isinstance(event, AccountsEnrolled):
                # Enrolment is the first sight of an account for the funnel.
                for account_id in event.account_ids:
                    if account_id not in self._accounts:
                        self._put(AccountState(account_id=account_id))
        else:
            account_id = stream.removeprefix("account-")
            self._put(evolve_account(self._accounts.get(account_id), event))
        self.position = position
        return True

    def apply_all(self, events: Iterable[tuple[int, Event]]) -> None:
        for position, event in events:
            self.apply(position, event)

    def _put(self, state: AccountState) -> None:
        old = self._accounts.get(state.account_id)
        if old is not None and old.state != state.state:
            self._by_state.setdefault(old.state, set()).discard(state.account_id)
        self._by_state.setdefault(state.state, set()).add(state.account_id)
        self._accounts[state.account_id] = state
        for index, present in (
            (self._with_timers, bool(state.pending_timers)),
            (self._with_effects, bool(state.pending_effects)),
        ):
            if present:
                index.add(state.account_id)
            else:
                index.discard(state.account_id)

    # --- queries ---------------------------------------------------------------------------

    def account(self, account_id: str) -> AccountState | None:
        return self._accounts.get(account_id)

    def __len__(self) -> int:
        return len(self._accounts)

    def ids_in(self, state: str) -> frozenset[str]:
        """The ids of the accounts in `state`."""
        return frozenset(self._by_state.get(state, ()))

    def pending_timers(self) -> list[tuple[datetime, str, str]]:
        """Every pending timer as (due_at, account_id, timer_id), earliest first."""
        timers = [
            (due_at, account_id, timer_id)
            for account_id in self._with_timers
            for timer_id, due_at in self._accounts[account_id].pending_timers.items()
        ]
        timers.sort()
        return timers

    def pending_effects(self) -> list[tuple[str, str, PendingEffect]]:
        """Every pending effect as (account_id, idempotency_key, pending), by account and key."""
        return [
            (account_id, key, pending)
            for account_id in sorted(self._with_effects)
            for key, pending in sorted(self._accounts[account_id].pending_effects.items())
        ]

    def funnel(self) -> dict[str, int]:
        """Number of accounts per state, every state present, in funnel order."""
        return {state: len(self._by_state.get(state, ())) for state in STATES}

    def waves(self) -> dict[str, dict[str, int]]:
        """Per enrolment wave, the number of its accounts per state."""
        result: dict[str, dict[str, int]] = {}
        for account_id, enrollment in self.application.enrollments.items():
            counts = result.setdefault(enrollment.wave, dict.fromkeys(STATES, 0))
            state = self._accounts.get(account_id)
            counts[state.state if state else "dynamic"] += 1
        return result

    def list_accounts(
        self,
        *,
        state: str | None = None,
        wave: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Accounts ordered by id, filtered by state and/or wave, after the cursor `after`."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        ids: Iterable[str] = self._by_state.get(state, ()) if state else self._accounts
        if wave is not None:
            enrollments = self.application.enrollments
            ids = [i for i in ids if (e := enrollments.get(i)) is not None and e.wave == wave]
        ordered = sorted(i for i in ids if after is None or i > after)
        chosen = ordered[:limit]
        cursor = chosen[-1] if len(ordered) > limit else None
        return Page([self._accounts[i] for i in chosen], cursor)

    def __iter__(self) -> Iterator[AccountState]:
        return iter(self._accounts.values())

    # --- snapshots and comparison ------------------------------------------------------------

    def to_snapshot(self) -> bytes:
        """The whole projection as bytes (indexes are rebuilt on load)."""
        accounts = [self._accounts[i] for i in sorted(self._accounts)]
        snapshot = _Snapshot(
            format=SNAPSHOT_FORMAT,
            position=self.position,
            application=self.application,
            accounts=accounts,
        )
        return _encoder.encode(snapshot)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Projection:
        """A projection from `to_snapshot()`'s bytes; ValueError for another format."""
        snapshot = _snapshot_decoder.decode(data)
        if snapshot.format != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {snapshot.format}, expected {SNAPSHOT_FORMAT}")
        projection = cls()
        projection.position = snapshot.position
        projection.application = snapshot.application
        for state in snapshot.accounts:
            projection._put(state)
        return projection

    def digest(self) -> str:
        """SHA-256 of the canonical snapshot: equal digests, equal projections."""
        return hashlib.sha256(self.to_snapshot()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return self.to_snapshot() == other.to_snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable
