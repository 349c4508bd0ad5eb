"""The read model folded from the log: every account, the application, and their indexes.

`Projection.apply(position, event)` folds one decoded event (in log order; positions already
applied are skipped, so a snapshot plus an overlapping tail is safe). It answers the daemon
(states for `decide`, pending timers for the timer driver, pending effects for the outbox) and
the operator API (funnel, waves, paged listings, the status page's counts). Accounts are kept
encoded (MessagePack, about 300 bytes each) with the most recently used decoded, which keeps
memory per account small (bench/bench_scale.py measures it). A snapshot is a header and one
labelled, timed part per account (`take_snapshot()`; docs/log-format.md), each written with
only the accounts changed since the last; `from_reader()` builds the indexes from the labels
and times in bulk and, given a fetcher, reads an account's part only when it is first needed.
`to_snapshot()`/`from_snapshot()` give the same as one value, for tests and comparisons.
`digest()` and `==` (which cover the derived indexes too) let a live projection be compared
with a fresh replay, and `check_indexes()` says where the indexes drifted.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
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
from daemon.domain.enrollments import Enrollment, Enrollments
from daemon.domain.state import decode_hook, encode_hook
from eventstore import RecordedEvent, SnapshotReader

SNAPSHOT_FORMAT = 4
# Accounts kept decoded (the most recently used); the others are kept encoded, about 300 bytes
# each, and decoded (a couple of microseconds) when read.
HOT_ACCOUNTS = 50_000

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


_record_encoder = msgspec.msgpack.Encoder(order="deterministic", enc_hook=encode_hook)
_record_decoder = msgspec.msgpack.Decoder(AccountState)


class _Aggregates(msgspec.Struct, frozen=True, array_like=True):
    """The counts kept as accounts change (see `Projection.__init__`)."""

    wave_states: dict[str, dict[str, int]]
    static_times: dict[str, list[tuple[int, int]]]  # (bucket, accounts), by bucket
    flags: dict[str, int]
    timers: dict[str, int]
    retrying: int


class _Header(msgspec.Struct, frozen=True, array_like=True):
    """A snapshot's header: the application's state but its enrolments, which are kept with
    their accounts so that no value grows with the number of accounts, and what is not
    derivable from the parts' labels and times: the counts and the funnel over time."""

    format: int
    position: int
    head_hash: str  # the hash of the log's row at `position` ("" if unknown)
    application: ApplicationState
    history: FunnelHistory
    # Every distinct enrolment made, in order: a part's label names its enrolment by index.
    enrollments: tuple[Enrollment, ...]
    aggregates: _Aggregates


class _Whole(msgspec.Struct, frozen=True, array_like=True):
    header: msgspec.Raw
    parts: list[tuple[str, msgspec.Raw, str, str | None]]


class _Format(msgspec.Struct, frozen=True, array_like=True):
    format: int  # a header's first field, whatever its format


_format_decoder = msgspec.msgpack.Decoder(_Format)
_header_decoder = msgspec.msgpack.Decoder(_Header, dec_hook=decode_hook)
_whole_decoder = msgspec.msgpack.Decoder(_Whole)


def _label(state: AccountState, wave: int) -> str:
    """A part's label: the account's state, its enrolment's index (-1: none) and whether it has
    pending effects, what a start-up groups accounts by to build the indexes in bulk."""
    return f"{state.state} {wave} {1 if state.pending_effects else 0}"


def _parse_label(label: str) -> tuple[str, int | None, bool]:
    """What `_label` wrote: the state, the enrolment's index (None: none) and whether the
    account has pending effects."""
    state, wave, effects = label.split(" ")
    return state, None if wave == "-1" else int(wave), effects == "1"


class Page(msgspec.Struct, frozen=True):
    """One page of a listing; pass `next_cursor` as `after` for the next one (None: the end)."""

    accounts: list[AccountState]
    next_cursor: str | None


_encoder = msgspec.json.Encoder(order="deterministic", enc_hook=encode_hook)


class TakenSnapshot:
    """A snapshot captured at `position`, encoded a slice at a time (`encode`)."""

    __slots__ = ("_index", "complete", "enrollments", "header", "items", "position")

    def __init__(
        self,
        position: int,
        header: bytes,
        complete: bool,
        items: list[tuple[str, AccountState | bytes]],
        enrollments: Enrollments,
    ) -> None:
        self.position = position
        self.header = header
        self.complete = complete
        self.items = items
        self.enrollments = enrollments
        self._index = {e: i for i, e in enumerate(enrollments.made)}

    def encode(self, start: int, stop: int) -> list[tuple[str, bytes, str, str | None]]:
        """The parts of items[start:stop]: each account's encoded state, with its label and
        its earliest due time (see `save_snapshot_parts`)."""
        parts = []
        for account_id, held in self.items[start:stop]:
            if isinstance(held, bytes):
                record, state = held, _record_decoder.decode(held)
            else:
                record, state = _record_encoder.encode(held), held
            enrollment = self.enrollments.get(account_id)
            wave = -1 if enrollment is None else self._index[enrollment]
            earliest = min(state.pending_timers.values(), default=None)
            at = None if earliest is None else earliest.isoformat()
            parts.append((account_id, record, _label(state, wave), at))
        return parts


class Projection:
    """Accounts by id with indexes by state, by due time, by pending effects and by flag.

    Each account is kept as its encoded state (`_records`); the most recently used are kept
    decoded too (`_hot`, at most `hot_limit`), and a hot state newer than its record
    (`_stale`) is encoded when it leaves the hot set or goes into a snapshot. `_dirty` holds
    the accounts changed since the last snapshot taken, so a snapshot writes only those.
    """

    def __init__(self, hot_limit: int = HOT_ACCOUNTS) -> None:
        self.position = 0
        # The hash of the row at `position` when folded from stored records: a snapshot with
        # it can be checked against the log before it is trusted.
        self.head_hash = ""
        self.application = ApplicationState()
        self._records: dict[str, bytes] = {}
        # Set when loaded without its records (`from_reader(..., fetch=...)`): an account not in
        # `_records` nor `_hot` is read from the stored snapshot, where its part is its state.
        self._fetch: Callable[[str], bytes | None] | None = None
        self._hot: dict[str, AccountState] = {}
        self._hot_limit = max(1, hot_limit)
        self._stale: set[str] = set()
        self._dirty: set[str] = set()
        # False until the stored parts are known to match this projection but `_dirty`: the
        # next snapshot then writes every account (complete) instead of what changed.
        self._parts_in_step = False
        self._by_state: dict[str, set[str] | _LazyIds] = {state: set() for state in STATES}
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
        if self.apply(record.position, event):
            self.head_hash = record.hash
        return event

    def apply(self, position: int, event: Event) -> bool:
        """Fold the event at `position`; False (and no change) if that position was applied."""
        if position <= self.position:
            return False
        self.head_hash = ""
        stream = stream_of(event)
        enrolled = isinstance(event, AccountsEnrolled) and stream == APPLICATION_STREAM
        enrolled_ids = event.account_ids if isinstance(event, AccountsEnrolled) else ()
        if enrolled:
            # A re-enrolment moves the account's counts to its new wave.
            for account_id in enrolled_ids:
                if (known := self._peek(account_id)) is not None:
                    self._count(known, self._wave_of(account_id), -1)
        evolve_stream(self, stream, event)
        if enrolled:
            for account_id in enrolled_ids:
                if (known := self._peek(account_id)) is not None:
                    self._count(known, self._wave_of(account_id), 1)
                else:  # enrolment is the first sight of an account for the funnel
                    self.put_account(AccountState(account_id=account_id))
                self._dirty.add(account_id)  # its part holds its enrolment
        if enrolled or isinstance(event, StateChanged):
            self.history.record(event.occurred_at, list(self.funnel().values()))
        self.position = position
        return True

    def put_account(self, state: AccountState) -> None:
        """Keep an account's new state, and index it."""
        account_id = state.account_id
        old = self._peek(account_id)
        wave = self._wave_of(account_id)
        if old is not None:
            self._count(old, wave, -1)
        self._count(state, wave, 1)
        if old is None or old.state != state.state:  # an account is in its state's ids only
            if old is not None:
                self._by_state.setdefault(old.state, set()).discard(account_id)
            self._by_state.setdefault(state.state, set()).add(account_id)
        if state.pending_effects:
            self._with_effects.add(account_id)
        else:
            self._with_effects.discard(account_id)
        self._index_due(account_id, min(state.pending_timers.values(), default=None))
        self._records.setdefault(account_id, b"")
        self._stale.add(account_id)
        self._dirty.add(account_id)
        self._remember(state)

    def _remember(self, state: AccountState) -> None:
        """Make `state` the newest of the hot set, and encode what falls out of it."""
        hot = self._hot
        hot.pop(state.account_id, None)
        hot[state.account_id] = state
        while len(hot) > self._hot_limit:
            oldest = next(iter(hot))
            leaving = hot.pop(oldest)
            if oldest in self._stale:
                self._records[oldest] = _record_encoder.encode(leaving)
                self._stale.discard(oldest)

    def _wave_of(self, account_id: str) -> str | None:
        enrollment = self.application.enrollments.get(account_id)
        return enrollment.wave if enrollment is not None else None

    def _count(self, state: AccountState, wave: str | None, sign: int) -> None:
        """Add (`sign` 1) or take away (-1) the account's part in the aggregates."""
        self._add_counts(
            wave, state.state, _static_seconds(state), state.flags,
            state.timer_purposes.values(), _retrying(state), sign,
        )  # fmt: skip

    def _add_counts(
        self,
        wave: str | None,
        state: str,
        static_seconds: float | None,
        flags: Iterable[str],
        timers: Iterable[str],
        retrying: int,
        sign: int,
    ) -> None:
        if wave is not None:
            states = self._wave_states.setdefault(wave, dict.fromkeys(STATES, 0))
            states[state] = states.get(state, 0) + sign
            if state == "static" and static_seconds is not None:
                times = self._static_times.setdefault(wave, {})
                bucket = _duration_bucket(static_seconds)
                times[bucket] = times.get(bucket, 0) + sign
                if not times[bucket]:
                    del times[bucket]
        for flag in flags:
            self._flags[flag] = self._flags.get(flag, 0) + sign
        for purpose in timers:
            self._timers[purpose] = self._timers.get(purpose, 0) + sign
        self._retrying += sign * retrying

    def peek(self, account_id: str) -> AccountState | None:
        """The account's state (None if unknown), without keeping it decoded: for a pass over
        many accounts that must not push the recently used ones out."""
        return self._peek(account_id)

    def ids(self) -> list[str]:
        """Every account's id, unordered."""
        return list(self._ids())

    def _peek(self, account_id: str) -> AccountState | None:
        """The account's state, decoded if it is not hot, without making it hot."""
        state = self._hot.get(account_id)
        if state is not None:
            return state
        record = self._record(account_id)
        return None if record is None else _record_decoder.decode(record)

    def _record(self, account_id: str) -> bytes | None:
        record = self._records.get(account_id)
        if record is None and self._fetch is not None:
            record = self._fetch(account_id)  # not kept: a reading may touch every account
        return record

    def _index_due(self, account_id: str, earliest: datetime | None) -> None:
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
        """The account's state (None if unknown); a cold one joins the hot set (which keeps
        the most recently changed or fetched accounts)."""
        state = self._hot.get(account_id)
        if state is None and (record := self._record(account_id)) is not None:
            state = _record_decoder.decode(record)
            self._remember(state)
        return state

    def __len__(self) -> int:
        if self._fetch is not None:  # not every record is loaded; every account has a state
            return sum(len(ids) for ids in self._by_state.values())
        return len(self._records)

    def _stored(self, account_id: str) -> bytes:
        record = self._record(account_id)
        assert record is not None, account_id
        return record

    def _ids(self) -> Iterable[str]:
        """Every account's id (unordered)."""
        if self._fetch is not None:
            return itertools.chain.from_iterable(self._by_state.values())
        return self._records

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
            account = self._peek(account_id)
            assert account is not None
            for timer_id, timer_due in account.pending_timers.items():
                heapq.heappush(candidates, (timer_due, account_id, timer_id))
        return result

    def pending_effects(self) -> list[tuple[str, str, PendingEffect]]:
        """Every pending effect as (account_id, idempotency_key, pending), by account and key."""
        found: list[tuple[str, str, PendingEffect]] = []
        for account_id in sorted(self._with_effects):
            account = self._peek(account_id)
            assert account is not None
            found.extend((account_id, k, p) for k, p in sorted(account.pending_effects.items()))
        return found

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
            if due <= until and self._known(account_id).timer_purposes.get(timer_id) == purpose
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
        ids: Iterable[str] = self._by_state.get(state, ()) if state else self._ids()
        if wave is not None:
            enrollments = self.application.enrollments
            ids = [i for i in ids if (e := enrollments.get(i)) is not None and e.wave == wave]
        # The page and one more (to know whether there is a next page), without sorting them all.
        chosen = heapq.nsmallest(limit + 1, (i for i in ids if after is None or i > after))
        cursor = chosen[limit - 1] if len(chosen) > limit else None
        return Page([self._known(i) for i in chosen[:limit]], cursor)

    def _known(self, account_id: str) -> AccountState:
        state = self._peek(account_id)
        assert state is not None, account_id
        return state

    def __iter__(self) -> Iterator[AccountState]:
        """Every account's state, decoding each that is not hot (for checks and tests)."""
        return (self._known(i) for i in list(self._ids()))

    # --- snapshots and comparison ------------------------------------------------------------

    def take_snapshot(self, *, head_hash: str | None = None) -> TakenSnapshot:
        """Capture a snapshot at this position: the accounts changed since the last one taken
        (every account, `complete`, when the stored parts may not match). Only references are
        taken here (states and records never change once made); `TakenSnapshot.encode` does
        the work, a slice at a time. `snapshot_failed` gives them back if the write fails."""
        complete = not self._parts_in_step
        ids = sorted(self._ids()) if complete else sorted(self._dirty)
        hot, stale = self._hot, self._stale
        items: list[tuple[str, AccountState | bytes]] = [
            (i, hot[i] if i in stale else self._stored(i)) for i in ids
        ]
        self._dirty = set()
        self._parts_in_step = True
        header = _record_encoder.encode(
            _Header(
                SNAPSHOT_FORMAT,
                self.position,
                self.head_hash if head_hash is None else head_hash,
                replace(self.application, enrollments=Enrollments()),
                self.history,
                self.application.enrollments.made,
                _Aggregates(
                    self._wave_states,
                    {w: sorted(t.items()) for w, t in self._static_times.items()},
                    self._flags, self._timers, self._retrying,
                ),
            )
        )  # fmt: skip
        return TakenSnapshot(self.position, header, complete, items, self.application.enrollments)

    def rewrite_all(self) -> None:
        """Make the next snapshot write every account (the stored parts are gone or unknown)."""
        self._parts_in_step = False

    def snapshot_failed(self, taken: TakenSnapshot) -> None:
        """A snapshot taken was not stored: its accounts go into the next one again."""
        self._dirty.update(account_id for account_id, _ in taken.items)
        if taken.complete:
            self._parts_in_step = False

    @classmethod
    def from_reader(
        cls,
        reader: SnapshotReader,
        *,
        fetch: Callable[[str], bytes | None] | None = None,
        hot_limit: int = HOT_ACCOUNTS,
        lazy: bool = False,
    ) -> Projection:
        """A projection from a stored snapshot; ValueError for another format. Blocking: run it
        in a worker thread. With `lazy` (and `fetch`), the reader must stay open as long as the
        projection is used: a state's ids and an account's enrolment are read when asked for
        (a one-off reading that asks for few of them).

        The indexes come from the parts' labels and times and the counts from the header, in
        bulk, without decoding a single account. Every account's record is read too, unless
        `fetch` is given: then an account that has not changed since is read when it is needed,
        through `fetch(account_id)` (the stored part, which is its state until it changes)."""
        head = cls._decode_header(reader.header)
        with _collector_paused():
            times = reader.times()
            if lazy:
                projection = cls._from_counts(head, reader, times, hot_limit)
            else:
                labels = reader.labels()
                blobs = reader.blobs() if fetch is None else {}
                projection = cls._from_index(head, blobs, labels, times, hot_limit)
        projection._fetch = fetch
        return projection

    @classmethod
    def _from_counts(
        cls, head: _Header, reader: SnapshotReader, times: dict[str, str], hot_limit: int
    ) -> Projection:
        """`_from_index` for a reader that stays open: each state's ids are counted now and
        read when first asked for, and an account's enrolment is read from its part's label."""
        counts = reader.label_counts()
        parsed = {label: _parse_label(label) for label in counts}
        projection = cls._from_index(head, {}, {}, times, hot_limit)
        for state in {state for state, _, _ in parsed.values()}:
            mine = [label for label, (s, _, _) in parsed.items() if s == state]
            projection._by_state[state] = _LazyIds(
                sum(counts[label] for label in mine),
                functools.partial(_keys_of, reader, mine),
            )
        for label, (_, _, effects) in parsed.items():
            if effects:
                projection._with_effects.update(reader.keys_labelled(label))
        waves = [(label, wave) for label, (_, wave, _) in parsed.items() if wave is not None]

        def enrolled(account_id: str) -> int | None:
            label = reader.label(account_id)
            return None if label is None else _parse_label(label)[1]

        projection.application = replace(
            projection.application,
            enrollments=Enrollments.from_lookup(
                enrolled,
                head.enrollments,
                sum(counts[label] for label, _ in waves),
                lambda: [(wave, reader.keys_labelled(label)) for label, wave in waves],
            ),
        )
        return projection

    @staticmethod
    def _decode_header(header: bytes) -> _Header:
        try:
            found = _format_decoder.decode(header).format
            if found != SNAPSHOT_FORMAT:
                raise ValueError(f"snapshot format {found}, expected {SNAPSHOT_FORMAT}")
            return _header_decoder.decode(header)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a snapshot of format {SNAPSHOT_FORMAT}: {exc}") from None

    @classmethod
    def _from_index(
        cls,
        head: _Header,
        records: dict[str, bytes],
        labels: dict[str, list[str]],
        times: dict[str, str],
        hot_limit: int = HOT_ACCOUNTS,
    ) -> Projection:
        projection = cls(hot_limit)
        projection.position = head.position
        projection.head_hash = head.head_hash
        projection.history = head.history
        projection._records = records
        enrolled: list[tuple[int, list[str]]] = []
        not_enrolled: list[str] = []
        by_state: dict[str, set[str]] = {state: set() for state in STATES}
        projection._by_state = dict(by_state)
        for label, ids in labels.items():  # a few hundred labels: the work per id is in C
            state, wave, effects = _parse_label(label)
            if state not in by_state:
                by_state[state] = projection._by_state[state] = set()
            by_state[state].update(ids)
            if effects:
                projection._with_effects.update(ids)
            if wave is not None:
                enrolled.append((wave, ids))
            else:
                not_enrolled.extend(ids)
        due = map(datetime.fromisoformat, times.values())
        projection._earliest = dict(zip(times, due, strict=True))
        projection._rebuild_due_heap()  # one heapify instead of a push per account
        counts = head.aggregates
        projection._wave_states = {w: dict(c) for w, c in counts.wave_states.items()}
        projection._static_times = {w: dict(t) for w, t in counts.static_times.items()}
        projection._flags, projection._timers = dict(counts.flags), dict(counts.timers)
        projection._retrying = counts.retrying
        projection.application = replace(
            head.application,
            enrollments=Enrollments.from_groups(enrolled, head.enrollments, absent=not_enrolled),
        )
        projection._parts_in_step = True
        return projection

    def to_snapshot(self, *, head_hash: str | None = None) -> bytes:
        """The whole projection as one value (for comparisons and tests; the daemon writes
        `take_snapshot`'s parts): the same bytes for equal projections."""
        dirty, in_step = self._dirty, self._parts_in_step
        self._parts_in_step = False
        try:
            taken = self.take_snapshot(head_hash=head_hash)
        finally:
            self._dirty, self._parts_in_step = dirty, in_step
        parts = [(i, msgspec.Raw(p), lb, at) for i, p, lb, at in taken.encode(0, len(taken.items))]
        return _record_encoder.encode(_Whole(msgspec.Raw(taken.header), parts))

    @classmethod
    def from_snapshot(cls, data: bytes) -> Projection:
        """A projection from `to_snapshot()`'s bytes; ValueError for another format."""
        try:
            whole = _whole_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a snapshot of format {SNAPSHOT_FORMAT}: {exc}") from None
        return cls.from_parts(
            bytes(whole.header), ((i, bytes(p), lb, at) for i, p, lb, at in whole.parts)
        )

    @classmethod
    def from_parts(
        cls, header: bytes, parts: Iterable[tuple[str, bytes, str, str | None]]
    ) -> Projection:
        """A projection from a header and `TakenSnapshot.encode`'s parts, as they were written
        (for tests and comparisons; the daemon reads them with `from_reader`)."""
        head = cls._decode_header(header)
        records: dict[str, bytes] = {}
        labels: dict[str, list[str]] = {}
        times: dict[str, str] = {}
        for account_id, record, label, at in sorted(parts):
            records[account_id] = record
            labels.setdefault(label, []).append(account_id)
            if at is not None:
                times[account_id] = at
        return cls._from_index(head, records, labels, times)

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
        for account in self:
            fresh.put_account(account)
        problems = []
        if self._aggregates() != fresh._aggregates():
            problems.append(
                f"aggregates: kept {self._aggregates()}, accounts {fresh._aggregates()}"
            )
        for state in STATES:
            have, want = set(self._by_state.get(state, ())), set(fresh._by_state[state])
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
        return hashlib.sha256(self._canonical() + b"\n" + self._indexes()).hexdigest()

    def _canonical(self) -> bytes:
        # What the projection holds, whether or not it was folded from stored records (which
        # only adds the head's hash).
        return self.to_snapshot(head_hash="")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return self._canonical() == other._canonical() and self._indexes() == other._indexes()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _keys_of(reader: SnapshotReader, labels: list[str]) -> list[str]:
    return [key for label in labels for key in reader.keys_labelled(label)]


class _LazyIds:
    """One state's account ids from a snapshot still open: counted at once, read when first
    iterated or searched. Until then an add or a discard is kept aside (the projection adds
    an account only to the state it is not in, and discards it only from the one it is in)."""

    __slots__ = ("_added", "_count", "_ids", "_load", "_removed")

    def __init__(self, count: int, load: Callable[[], list[str]]) -> None:
        self._count, self._load = count, load
        self._ids: set[str] | None = None
        self._added: set[str] = set()
        self._removed: set[str] = set()

    def _read(self) -> set[str]:
        if self._ids is None:
            ids = set(self._load())
            ids -= self._removed
            ids |= self._added
            self._ids = ids
        return self._ids

    def add(self, account_id: str) -> None:
        if self._ids is not None:
            self._ids.add(account_id)
        elif account_id in self._removed:
            self._removed.discard(account_id)
        else:
            self._added.add(account_id)

    def discard(self, account_id: str) -> None:
        if self._ids is not None:
            self._ids.discard(account_id)
        elif account_id in self._added:
            self._added.discard(account_id)
        else:
            self._removed.add(account_id)

    def __len__(self) -> int:
        if self._ids is not None:
            return len(self._ids)
        return self._count - len(self._removed) + len(self._added)

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._read()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: a bulk load makes millions of objects and no
    cycles, and each collection it would trigger walks all of them (a third of a load's time
    at a million accounts). Reference counting frees as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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


def _retrying(state: AccountState) -> int:
    """The account's pending effects whose last attempt failed (they will be tried again)."""
    return (
        sum(1 for p in state.pending_effects.values() if p.attempts) if state.pending_effects else 0
    )
