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
import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

import msgspec
from msgspec.structs import replace

from daemon.domain import (
    APPLICATION_STREAM,
    FLAGS,
    STATES,
    TIMER_PURPOSES,
    AccountsEnrolled,
    AccountState,
    ApplicationState,
    Event,
    PendingEffect,
    State,
    StateChanged,
    decode_event,
    evolve_stream,
    stream_of,
)
from eventstore import RecordedEvent

SNAPSHOT_FORMAT = 1

HISTORY_BUCKETS = 120
"""The funnel's history keeps at most this many samples, however long the migration runs."""

DURATION_RATIO = 1.05
"""Times from first auth to `static` are counted in buckets this many times wider than the
previous one; a median read from them is within 2.5 % of the exact one."""

WAITING: tuple[State, ...] = ("first_auth", "stopped_waiting", "second_step_due", "second_auth")
"""The states of an account on its way to `static` (started, neither static nor stalled)."""


class FunnelHistory(msgspec.Struct, kw_only=True):
    """Accounts per state over time, in at most `HISTORY_BUCKETS` buckets of equal width.

    `counts[i]` is the funnel (in `STATES` order) at the end of the bucket starting
    `start + i * bucket_seconds`, as the log's event times say. When time runs past the last
    bucket, neighbouring buckets merge pairwise and the width doubles, so memory stays fixed
    and the whole migration stays in view.
    """

    start: datetime | None = None
    bucket_seconds: int = 1
    states: list[str] = []
    counts: list[list[int]] = []
    last: datetime | None = None  # the latest time recorded

    def record(self, at: datetime, counts: list[int]) -> None:
        """Note the funnel `counts` as they are at `at` (an earlier time counts as the last)."""
        if self.start is None or self.states != list(STATES):
            self.start = at.replace(microsecond=0)
            self.bucket_seconds = 1
            self.states = list(STATES)
            self.counts = []
        index = max(int((at - self.start).total_seconds()) // self.bucket_seconds, 0)
        while index >= HISTORY_BUCKETS:
            last = len(self.counts) - 1
            self.counts = [self.counts[min(2 * i + 1, last)] for i in range((last + 2) // 2)]
            self.bucket_seconds *= 2
            index = int((at - self.start).total_seconds()) // self.bucket_seconds
        index = max(index, len(self.counts) - 1)
        self.last = at if self.last is None or at > self.last else self.last
        while len(self.counts) < index:
            self.counts.append(self.counts[-1] if self.counts else counts)
        if len(self.counts) == index:
            self.counts.append(counts)
        else:
            self.counts[index] = counts

    def times(self) -> list[datetime]:
        """The end of each bucket (of the last, the latest time recorded in it)."""
        if self.start is None or self.last is None:
            return []
        width = timedelta(seconds=self.bucket_seconds)
        ends = [self.start + width * (i + 1) for i in range(len(self.counts))]
        ends[-1] = max(min(ends[-1], self.last), ends[-2] if len(ends) > 1 else self.start)
        return ends


class _Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    position: int
    application: ApplicationState
    accounts: list[AccountState]
    # Not derivable from the accounts; a snapshot without it starts the history anew.
    history: FunnelHistory | None = None


class WaveProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One wave's accounts per state, and how long its static accounts took from first auth."""

    states: dict[str, int]
    static_seconds_median: float | None
    static_seconds_p90: float | None

    @property
    def enrolled(self) -> int:
        return sum(self.states.values())

    @property
    def waiting(self) -> int:
        return sum(self.states[s] for s in WAITING)


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; pass `next_cursor` as `after` for the next one (None: the end)."""

    accounts: list[AccountState]
    next_cursor: str | None


_encoder = msgspec.json.Encoder(order="deterministic")
_snapshot_decoder = msgspec.json.Decoder(_Snapshot)


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
        # Aggregates for the status page and the summary, kept as accounts change (never
        # recomputed by a scan): per enrolment wave the accounts per state and a histogram of
        # times from first auth to static, accounts per flag, pending timers per purpose, and
        # pending effects whose last attempt failed.
        self._wave_states: dict[str, dict[str, int]] = {}
        self._static_times: dict[str, dict[int, int]] = {}
        self._flags: dict[str, int] = {}
        self._timers: dict[str, int] = {}
        self._retrying = 0
        self.history = FunnelHistory()

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
        enrolled = isinstance(event, AccountsEnrolled) and stream == APPLICATION_STREAM
        enrolled_ids = event.account_ids if isinstance(event, AccountsEnrolled) else ()
        if enrolled:
            # A re-enrolment moves the account's counts to its new wave.
            for account_id in enrolled_ids:
                if (known := self._accounts.get(account_id)) is not None:
                    self._count(known, self._wave_of(account_id), -1)
        evolve_stream(self, stream, event)
        if enrolled:
            for account_id in enrolled_ids:
                if (known := self._accounts.get(account_id)) is not None:
                    self._count(known, self._wave_of(account_id), 1)
                else:  # enrolment is the first sight of an account for the funnel
                    self.put_account(AccountState(account_id=account_id))
        if enrolled or isinstance(event, StateChanged):
            self.history.record(event.occurred_at, list(self.funnel().values()))
        self.position = position
        return True

    def put_account(self, state: AccountState) -> None:
        """Keep an account's new state, and index it."""
        old = self._accounts.get(state.account_id)
        wave = self._wave_of(state.account_id)
        if old is not None:
            self._count(old, wave, -1)
        self._count(state, wave, 1)
        if old is not None and old.state != state.state:
            self._by_state.setdefault(old.state, set()).discard(state.account_id)
        self._by_state.setdefault(state.state, set()).add(state.account_id)
        self._accounts[state.account_id] = state
        if state.pending_effects:
            self._with_effects.add(state.account_id)
        else:
            self._with_effects.discard(state.account_id)
        self._index_due(state)

    def _wave_of(self, account_id: str) -> str | None:
        enrollment = self.application.enrollments.get(account_id)
        return enrollment.wave if enrollment is not None else None

    def _count(self, state: AccountState, wave: str | None, sign: int) -> None:
        """Add (`sign` 1) or take away (-1) the account's part in the aggregates."""
        if wave is not None:
            states = self._wave_states.setdefault(wave, dict.fromkeys(STATES, 0))
            states[state.state] = states.get(state.state, 0) + sign
            if state.state == "static" and (took := _static_seconds(state)) is not None:
                times = self._static_times.setdefault(wave, {})
                bucket = _duration_bucket(took)
                times[bucket] = times.get(bucket, 0) + sign
                if not times[bucket]:
                    del times[bucket]
        for flag in state.flags:
            self._flags[flag] = self._flags.get(flag, 0) + sign
        for purpose in state.timer_purposes.values():
            self._timers[purpose] = self._timers.get(purpose, 0) + sign
        if state.pending_effects:
            self._retrying += sign * sum(1 for p in state.pending_effects.values() if p.attempts)

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
        """Per enrolment wave, the number of its accounts per state (every state present)."""
        return {
            wave: {s: counts.get(s, 0) for s in STATES}
            for wave, counts in sorted(self._wave_states.items())
            if any(counts.values())
        }

    def wave_progress(self) -> dict[str, WaveProgress]:
        """Per enrolment wave, its accounts per state and how long `static` took them."""
        result = {}
        for wave, states in self.waves().items():
            times = self._static_times.get(wave, {})
            result[wave] = WaveProgress(
                states=states,
                static_seconds_median=_quantile(times, 0.5),
                static_seconds_p90=_quantile(times, 0.9),
            )
        return result

    def flag_counts(self) -> dict[str, int]:
        """Accounts per flag, every flag present."""
        return {flag: self._flags.get(flag, 0) for flag in FLAGS}

    def timer_counts(self) -> dict[str, int]:
        """Pending timers per purpose (stop_grace, second_step, reminder, ...)."""
        return {p: self._timers.get(p, 0) for p in TIMER_PURPOSES}

    @property
    def effects_retrying(self) -> int:
        """Pending effects whose last attempt failed and that will be tried again."""
        return self._retrying

    def due_within(self, purpose: str, until: datetime, limit: int = 2000) -> tuple[int, bool]:
        """How many pending `purpose` timers are due by `until`, looking at no more than the
        `limit` earliest timers; and whether that many were looked at (so there may be more)."""
        soonest = self.due_soonest(limit)
        found = sum(
            1
            for due, account_id, timer_id in soonest
            if due <= until and self._accounts[account_id].timer_purposes.get(timer_id) == purpose
        )
        return found, len(soonest) == limit and soonest[-1][0] <= until

    def with_enrollment(self, state: AccountState) -> AccountState:
        """The account as the operator sees it: one not in a migration cycle (none started, or
        reset) shows the wave and policy it is enrolled with, from its enrolment on."""
        enrollment = self.application.enrollments.get(state.account_id)
        if enrollment is None or (state.wave is not None and state.state != "dynamic"):
            return state
        return replace(state, wave=enrollment.wave, policy=enrollment.policy)

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
            history=self.history,
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
        if snapshot.history is not None:
            projection.history = snapshot.history
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
                "aggregates": self._aggregates(),
            }
        )

    def _aggregates(self) -> dict[str, object]:
        """The counts kept for the status page, without the zeros."""
        return {
            "waves": self.waves(),
            "static_times": {
                w: {str(b): n for b, n in t.items()} for w, t in self._static_times.items() if t
            },
            "flags": {f: n for f, n in self._flags.items() if n},
            "timers": {p: n for p, n in self._timers.items() if n},
            "retrying": self._retrying,
        }

    def check_indexes(self) -> list[str]:
        """What the indexes say that the accounts do not ([] when they agree).

        The indexes are built incrementally by `apply`; this recomputes them from the
        accounts, so a test (or an operator's check) can catch a wrong funnel or a lost timer.
        """
        fresh = Projection()
        fresh.application = self.application
        for account in self._accounts.values():
            fresh.put_account(account)
        problems = []
        if self._aggregates() != fresh._aggregates():
            problems.append(
                f"aggregates: kept {self._aggregates()}, accounts {fresh._aggregates()}"
            )
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


def _static_seconds(state: AccountState) -> float | None:
    if state.first_auth_at is None or state.static_at is None:
        return None
    return max((state.static_at - state.first_auth_at).total_seconds(), 0.0)


def _duration_bucket(seconds: float) -> int:
    """0 for under a millisecond; then n for [ratio**(n-1), ratio**n) milliseconds."""
    milliseconds = seconds * 1000
    if milliseconds < 1:
        return 0
    return 1 + int(math.log(milliseconds) / math.log(DURATION_RATIO))


def _quantile(histogram: dict[int, int], q: float) -> float | None:
    """The nearest-rank `q` quantile of the histogram, as its bucket's geometric middle."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(math.ceil(q * total), 1)
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return 0.0 if bucket == 0 else DURATION_RATIO ** (bucket - 0.5) / 1000
    raise AssertionError("unreachable: the ranks add up to the total")
