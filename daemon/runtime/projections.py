"""The read model folded from the log: every account, the application, and their indexes.

`Projection.apply(position, event)` folds one decoded event (in log order; positions already
applied are skipped, so a snapshot plus an overlapping tail is safe). It answers the daemon
(states for `decide`, pending timers for the timer driver, pending effects for the outbox) and
the operator API (funnel, waves, paged listings). `to_snapshot()`/`from_snapshot()` store it
with msgspec; `digest()` and `==` (which cover the derived indexes too) let a live projection
be compared with a fresh replay, and `check_indexes()` says where the indexes drifted.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from datetime import datetime

import msgspec

from daemon.domain import (
    APPLICATION_STREAM,
    STATES,
    AccountsEnrolled,
    AccountState,
    ApplicationState,
    Event,
    PendingEffect,
    State,
    decode_event,
    evolve_stream,
    stream_of,
)
from daemon.domain.state import decode_hook, encode_hook
from eventstore import RecordedEvent

SNAPSHOT_FORMAT = 2


class _Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    position: int
    application: ApplicationState
    accounts: list[AccountState]


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; pass `next_cursor` as `after` for the next one (None: the end)."""

    accounts: list[AccountState]
    next_cursor: str | None


_encoder = msgspec.json.Encoder(order="deterministic", enc_hook=encode_hook)
_snapshot_decoder = msgspec.json.Decoder(_Snapshot, dec_hook=decode_hook)


class Projection:
    """Accounts by id with indexes by state, by due time and by pending effects."""

    def __init__(self) -> None:
        self.position = 0
        self.application = ApplicationState()
        self._accounts: dict[str, AccountState] = {}
        self._by_state: dict[str, set[str]] = {state: set() for state in STATES}
        self._with_effects: set[str] = set()
        # The due-time index: each account's earliest pending due time, and a heap of
        # (earliest due, account id) over it. Entries are never removed in place (a heap has
        # no cheap delete); one whose due time is no longer the account's earliest is stale,
        # skipped when read and dropped when the heap is rebuilt.
        self._earliest: dict[str, datetime] = {}
        self._due_heap: list[tuple[datetime, str]] = []

    # --- folding ---------------------------------------------------------------------------

    def apply_record(self, record: RecordedEvent) -> Event:
        """Decode a stored record (upcast to the current schema) and fold it; the event."""
        event = decode_event(record.type, record.schema, record.data)
        self.apply(record.position, event)
        return event

    def apply(self, position: int, event: Event) -> bool:
        """Fold the event at `position`; False (and no change) if that position was applied."""
        if position <= self.position:
            return False
        stream = stream_of(event)
        evolve_stream(self, stream, event)
        if stream == APPLICATION_STREAM and isinstance(event, AccountsEnrolled):
            # Enrolment is the first sight of an account for the funnel.
            for account_id in event.account_ids:
                if account_id not in self._accounts:
                    self.put_account(AccountState(account_id=account_id))
        self.position = position
        return True

    def put_account(self, state: AccountState) -> None:
        """Keep an account's new state, and index it."""
        old = self._accounts.get(state.account_id)
        if old is not None and old.state != state.state:
            self._by_state.setdefault(old.state, set()).discard(state.account_id)
        self._by_state.setdefault(state.state, set()).add(state.account_id)
        self._accounts[state.account_id] = state
        if state.pending_effects:
            self._with_effects.add(state.account_id)
        else:
            self._with_effects.discard(state.account_id)
        self._index_due(state)

    def _index_due(self, state: AccountState) -> None:
        account_id = state.account_id
        earliest = min(state.pending_timers.values(), default=None)
        if earliest == self._earliest.get(account_id):
            return
        if earliest is None:
            del self._earliest[account_id]
        else:
            self._earliest[account_id] = earliest
            heapq.heappush(self._due_heap, (earliest, account_id))
        # Stale entries cost memory and reading time: rebuild once they outnumber live ones.
        if len(self._due_heap) > 2 * len(self._earliest) + 64:
            self._rebuild_due_heap()

    def _rebuild_due_heap(self) -> None:
        self._due_heap = [(due, account_id) for account_id, due in self._earliest.items()]
        heapq.heapify(self._due_heap)

    # --- queries ---------------------------------------------------------------------------

    def account(self, account_id: str) -> AccountState | None:
        return self._accounts.get(account_id)

    def __len__(self) -> int:
        return len(self._accounts)

    def ids_in(self, state: State) -> frozenset[str]:
        """The ids of the accounts in `state`."""
        return frozenset(self._by_state.get(state, ()))

    def pending_timers(self) -> list[tuple[datetime, str, str]]:
        """Every pending timer as (due_at, account_id, timer_id), earliest first."""
        return self.due_soonest(None)

    def due_soonest(self, limit: int | None = 10) -> list[tuple[datetime, str, str]]:
        """The `limit` earliest pending timers (None: all) as (due_at, account_id, timer_id).

        Ordered by due time, then account and timer id. Walks the due-time heap from its root
        and opens only the accounts whose earliest timer can still make the cut, so the cost
        grows with `limit`, not with the number of pending timers.
        """
        if limit is not None and limit < 1:
            return []
        heap = self._due_heap
        result: list[tuple[datetime, str, str]] = []
        frontier: list[tuple[datetime, str, int]] = [(*heap[0], 0)] if heap else []
        candidates: list[tuple[datetime, str, str]] = []  # timers of the opened accounts
        opened: set[str] = set()
        while limit is None or len(result) < limit:
            # An account not yet opened has no timer before (its earliest due, its id), and
            # neither has any account below it in the heap.
            if candidates and (not frontier or candidates[0][:2] < frontier[0][:2]):
                result.append(heapq.heappop(candidates))
                continue
            if not frontier:
                break
            due, account_id, index = heapq.heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (*heap[child], child))
            if self._earliest.get(account_id) != due or account_id in opened:
                continue  # stale, or a second entry after the earliest came back to `due`
            opened.add(account_id)
            for timer_id, timer_due in self._accounts[account_id].pending_timers.items():
                heapq.heappush(candidates, (timer_due, account_id, timer_id))
        return result

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
        # The page and one more (to know whether there is a next page), without sorting them all.
        chosen = heapq.nsmallest(limit + 1, (i for i in ids if after is None or i > after))
        cursor = chosen[limit - 1] if len(chosen) > limit else None
        return Page([self._accounts[i] for i in chosen[:limit]], cursor)

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
            projection.put_account(state)
        projection._rebuild_due_heap()  # one heapify instead of a push per account
        return projection

    def _indexes(self) -> bytes:
        """The derived indexes in canonical form (the heap as the set of its live entries)."""
        live_heap = sorted({(d, a) for d, a in self._due_heap if self._earliest.get(a) == d})
        return _encoder.encode(
            {
                "by_state": {s: sorted(ids) for s, ids in self._by_state.items() if ids},
                "with_effects": sorted(self._with_effects),
                "earliest": self._earliest,
                "due_heap": live_heap,
            }
        )

    def check_indexes(self) -> list[str]:
        """What the indexes say that the accounts do not ([] when they agree).

        The indexes are built incrementally by `apply`; this recomputes them from the
        accounts, so a test (or an operator's check) can catch a wrong funnel or a lost timer.
        """
        fresh = Projection()
        for account in self._accounts.values():
            fresh.put_account(account)
        problems = []
        for state in STATES:
            have, want = self._by_state.get(state, set()), fresh._by_state[state]
            if have != want:
                problems.append(f"state {state}: index {sorted(have)}, accounts {sorted(want)}")
        extra = {s for s, ids in self._by_state.items() if ids and s not in STATES}
        if extra:
            problems.append(f"unknown states in the index: {sorted(extra)}")
        if self._with_effects != fresh._with_effects:
            problems.append(
                f"effects: index {sorted(self._with_effects)}, "
                f"accounts {sorted(fresh._with_effects)}"
            )
        if self._earliest != fresh._earliest:
            problems.append(f"earliest due: index {self._earliest}, accounts {fresh._earliest}")
        missing = set(self._earliest.items()) - {(a, d) for d, a in self._due_heap}
        if missing:
            problems.append(f"due-time heap lacks {sorted(missing)}")
        if any(
            self._due_heap[(i - 1) // 2] > self._due_heap[i] for i in range(1, len(self._due_heap))
        ):
            problems.append("due-time heap is out of order")
        return problems

    def digest(self) -> str:
        """SHA-256 of the canonical snapshot and indexes: equal digests, equal projections."""
        return hashlib.sha256(self.to_snapshot() + b"\n" + self._indexes()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return self.to_snapshot() == other.to_snapshot() and self._indexes() == other._indexes()

    __hash__ = None  # type: ignore[assignment]  # mutable
