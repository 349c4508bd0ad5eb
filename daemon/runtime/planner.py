"""Pure engine passes: which queued requests a pass takes, what they decide, what to answer.

Kept free of asyncio, I/O and clocks (the time of a pass is an argument), so the engine's rules
(arrival order, requests held while their streams are in flight, decisions made on the pass's
own earlier ones, duplicates, conflict retries) can be read and tested on plain data. The
engine (`engine.py`) is the shell: it queues submits, appends each pass and answers the callers.
A request carries an opaque `token` for the shell (the engine's future); the planner never
looks into it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import msgspec

from daemon.domain import (
    APPLICATION_STREAM,
    AccountInput,
    AccountState,
    ApplicationState,
    Event,
    Input,
    MigrationSettings,
    account_of,
    account_stream,
    decide,
    encode_event,
    event_id,
    evolve_stream,
    first_event_id,
    is_input_record,
    stream_for,
    stream_of,
)
from eventstore import AppendCall, AppendResult, EventStoreError, NewEvent, WrongExpectedVersion

__all__ = [
    "CONFLICT_RETRIES",
    "MAX_PASS",
    "Decided",
    "Decision",
    "Pass",
    "PassPlanner",
    "Request",
    "Settled",
    "metadata",
]

CONFLICT_RETRIES = 5  # decisions of one request refused for a version conflict before it fails
MAX_PASS = 512  # requests decided (and appended in one transaction) per pass

T = TypeVar("T")


class ProjectionView(Protocol):
    """What a pass reads of the committed state."""

    @property
    def application(self) -> ApplicationState: ...

    def account(self, account_id: str) -> AccountState | None: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one input: its events, or that it had been recorded before."""

    input: Input
    duplicate: bool
    events: tuple[Event, ...]


@dataclass(slots=True, eq=False)
class Request(Generic[T]):
    """One submit waiting for a pass: its inputs, who sent them, and the shell's `token`.

    `known`: first event ids of these inputs found in the log (looked up before queueing, or
    learnt from a skipped call); `attempt`: version conflicts met so far.
    """

    inputs: Sequence[Input]
    source: str
    token: T
    correlation_id: str | None = None
    known: set[str] = field(default_factory=set)
    attempt: int = 0


@dataclass(slots=True, eq=False)
class Decided(Generic[T]):
    """A request's decisions and the append call recording them (None: nothing to write).

    `streams`: the streams whose versions that call expects; busy while it is in flight.
    """

    request: Request[T]
    decisions: list[Decision]
    call: AppendCall | None = None
    streams: tuple[str, ...] = ()


@dataclass(slots=True, eq=False)
class Pass(Generic[T]):
    """One pass: its decided requests in order, and those whose decision raised (a bug)."""

    decided: list[Decided[T]]
    failed: list[tuple[Request[T], Exception]]

    @property
    def calls(self) -> list[AppendCall]:
        """The append calls of the pass, in order: one per decided request that writes."""
        return [d.call for d in self.decided if d.call is not None]

    @property
    def requests(self) -> list[Request[T]]:
        return [d.request for d in self.decided]


@dataclass(slots=True)
class Settled(Generic[T]):
    """What a pass's outcomes mean for its requests.

    `answers`: each answered request with its decisions; `failures`: each with its error;
    `retried`: requeued to be decided again (a conflict, or inputs found recorded meanwhile),
    `conflicted` the ones of them that met a version conflict; `appended`: (source, events
    created) per call written, for the metrics.
    """

    answers: list[tuple[Request[T], list[Decision]]] = field(default_factory=list)
    failures: list[tuple[Request[T], Exception]] = field(default_factory=list)
    retried: list[Request[T]] = field(default_factory=list)
    conflicted: list[Request[T]] = field(default_factory=list)
    appended: list[tuple[str, int]] = field(default_factory=list)


class PassPlanner(Generic[T]):
    """The engine's queue and rules, with no I/O: take a pass, decide it, settle its outcomes.

    Streams written by a pass are busy from `decide_pass` to `release`: requests about them are
    held in the queue (in order), and everything is held while the application's stream is busy,
    since every decision reads the application's state.
    """

    def __init__(self, settings: MigrationSettings, *, max_pass: int = MAX_PASS) -> None:
        self.settings = settings
        self._max_pass = max_pass
        self._queue: deque[Request[T]] = deque()
        self._busy: dict[str, int] = {}  # stream -> calls in flight writing to it

    def __len__(self) -> int:
        """Requests queued (held ones included)."""
        return len(self._queue)

    @property
    def busy(self) -> frozenset[str]:
        """The streams with events in flight."""
        return frozenset(self._busy)

    def add(self, request: Request[T]) -> None:
        """Queue a request behind the others."""
        self._queue.append(request)

    def clear(self) -> list[Request[T]]:
        """Empty the queue (the engine stops); the requests that were waiting, in order."""
        waiting = list(self._queue)
        self._queue.clear()
        return waiting

    def take(self, dropped: Callable[[T], bool] = lambda _: False) -> list[Request[T]]:
        """The next pass: queued requests in order, skipping (for now) those that must wait.

        A request waits while a stream it is about has events in flight, or while an earlier
        request waits for that stream (order per stream is kept), or while an earlier request of
        this pass carries one of its inputs (the second is decided after the first committed).
        Everything waits while application events are in flight. Requests whose token is
        `dropped` (their caller gave up) are forgotten: nothing of them is written.
        """
        if APPLICATION_STREAM in self._busy:
            return []
        queue, busy, limit = self._queue, self._busy, self._max_pass
        batch: list[Request[T]] = []
        held: list[Request[T]] = []
        ids: set[str] = set()
        streams: set[str] = set()
        scanned = 0
        while queue and len(batch) < limit and scanned < 4 * limit:
            request = queue.popleft()
            scanned += 1
            if dropped(request.token):
                continue
            mine = {i.input_id for i in request.inputs}
            about = {stream_for(i) for i in request.inputs}
            if (
                not mine.isdisjoint(ids)
                or not about.isdisjoint(streams)
                or any(s in busy for s in about)
            ):
                held.append(request)
                streams |= about  # later requests about these streams keep their order
                continue
            ids |= mine
            batch.append(request)
        queue.extendleft(reversed(held))
        return batch

    def decide_pass(
        self, batch: list[Request[T]], projection: ProjectionView, now: datetime
    ) -> Pass[T]:
        """Decide `batch` in order, each request on the state the ones before it left.

        The streams the pass writes become busy until `release`. After a request that writes
        the application's stream, the rest of the batch goes back to the front of the queue:
        it would read application state not yet committed.
        """
        overlay = _Overlay(projection)
        decided: list[Decided[T]] = []
        failed: list[tuple[Request[T], Exception]] = []
        for index, request in enumerate(batch):
            overlay.begin()
            try:
                d = self._decide(request, overlay, now)
            except Exception as exc:  # a bug in one decision must not fail the others
                overlay.rollback()
                failed.append((request, exc))
                continue
            decided.append(d)
            if APPLICATION_STREAM in d.streams:
                self._queue.extendleft(reversed(batch[index + 1 :]))
                break
        busy = self._busy
        for d in decided:
            for stream in d.streams:
                busy[stream] = busy.get(stream, 0) + 1
        return Pass(decided, failed)

    def settle(
        self, pass_: Pass[T], outcomes: Sequence[AppendResult | EventStoreError]
    ) -> Settled[T]:
        """Map the outcomes of `pass_.calls` (in order) to answers, failures and retries.

        Retried requests go back to the front of the queue. The pass's streams stay busy until
        `release`, which the shell calls once the projection holds what the pass wrote.
        """
        settled: Settled[T] = Settled()
        results = iter(outcomes)
        for d in pass_.decided:
            request = d.request
            if d.call is None:
                settled.answers.append((request, d.decisions))
                continue
            outcome = next(results)
            if (
                isinstance(outcome, AppendResult)
                and outcome.skipped
                and len(request.inputs) > 1
                and _learn_recorded(request, outcome)
            ):
                # Some of its inputs were recorded meanwhile (a redelivery in flight): the
                # records say which; decide the others again, on the state as it is now.
                settled.retried.append(request)
                continue
            if isinstance(outcome, WrongExpectedVersion):
                # Decided on state that changed (another writer, or an earlier call of the pass
                # that was dropped): decide again, on the state as it is now.
                request.attempt += 1
                if request.attempt < CONFLICT_RETRIES:
                    settled.retried.append(request)
                    settled.conflicted.append(request)
                    continue
            if isinstance(outcome, Exception):  # including a conflict retried too often
                settled.failures.append((request, outcome))
                continue
            if outcome.skipped:  # recorded before: the decision just made is dropped
                (inp,) = request.inputs
                settled.answers.append((request, [Decision(inp, True, ())]))
                continue
            settled.appended.append((request.source, sum(outcome.created)))
            settled.answers.append((request, d.decisions))
        self.retry(settled.retried)
        return settled

    def retry(self, requests: Sequence[Request[T]]) -> None:
        """Put requests back at the front of the queue, in their order."""
        self._queue.extendleft(reversed(requests))

    def release(self, pass_: Pass[T]) -> None:
        """The pass ended, however: its streams are no longer busy."""
        busy = self._busy
        for d in pass_.decided:
            for stream in d.streams:
                if busy[stream] == 1:
                    del busy[stream]
                else:
                    busy[stream] -= 1

    def _decide(self, request: Request[T], overlay: _Overlay, now: datetime) -> Decided[T]:
        new: list[NewEvent] = []
        decisions: list[Decision] = []
        expected: dict[str, int] = {}
        seen_ids: set[str] = set()
        for inp in request.inputs:
            first_id = first_event_id(inp.input_id)
            if first_id in seen_ids or first_id in request.known:
                decisions.append(Decision(inp, True, ()))
                continue
            seen_ids.add(first_id)
            stream = stream_for(inp)
            expected.setdefault(stream, overlay.version(stream))
            app = overlay.application
            state = overlay.account(inp.account_id) if isinstance(inp, AccountInput) else app
            events = decide(state, inp, now, self.settings, app)
            streams = []
            for event in events:
                stream = stream_of(event)
                if stream not in expected:
                    expected[stream] = overlay.version(stream)
                streams.append(stream)
                evolve_stream(overlay, stream, event)
            first_metadata, rest_metadata = metadata(
                inp, overlay.account_of(inp), request.source, request.correlation_id
            )
            for index, (event, stream) in enumerate(zip(events, streams, strict=True)):
                encoded = encode_event(event)
                new.append(
                    NewEvent(
                        stream=stream,
                        type=encoded.type,
                        data=encoded.data,
                        schema=encoded.schema,
                        metadata=first_metadata if index == 0 else rest_metadata,
                        event_id=event_id(inp.input_id, index),
                    )
                )
            decisions.append(Decision(inp, False, tuple(events)))
        if not new:
            return Decided(request, decisions)
        # Each input recorded here is written under its own first event id: if any of them was
        # recorded meanwhile (a redelivery in flight), nothing of the call is written.
        guards = [first_event_id(d.input.input_id) for d in decisions if not d.duplicate]
        call = AppendCall(new, expected, if_absent=guards)
        return Decided(request, decisions, call, streams=tuple(expected))


def metadata(
    inp: Input, account: AccountState | None, source: str, request_id: str | None
) -> tuple[bytes, bytes]:
    """Metadata of an input's first event (the input itself) and of the events it caused.

    causation_id: what caused the event — for the recorded input, the outside message (the
    webhook delivery, the auth event, the timer, the effect an outcome reports); for every other
    event, the recorded input (`<input_id>#0`). correlation_id: the HTTP request, else the
    account's migration cycle, so every step of one migration can be found together.
    """
    outside = getattr(inp, "effect_key", None) or getattr(inp, "timer_id", None) or inp.input_id
    account_id = getattr(inp, "account_id", None)
    if request_id is None and account_id is not None:
        cycle = account.cycle if account is not None else 0
        request_id = f"{account_stream(account_id)}/cycle-{cycle}"
    common = {"source": source, "input_id": inp.input_id, "correlation_id": request_id}
    first = msgspec.json.encode({**common, "causation_id": outside})
    rest = msgspec.json.encode({**common, "causation_id": first_event_id(inp.input_id)})
    return first, rest


class _Overlay:
    """The projection as this pass's decisions left it: their events, written or not yet."""

    __slots__ = ("_accounts", "_application_before", "_before", "_projection", "application")

    def __init__(self, projection: ProjectionView) -> None:
        self._projection = projection
        self._accounts: dict[str, AccountState] = {}
        self.application: ApplicationState = projection.application
        # What the current request's decision replaced, so a failed one can be undone alone.
        self._before: dict[str, AccountState | None] = {}
        self._application_before = self.application

    def account(self, account_id: str) -> AccountState | None:
        try:
            return self._accounts[account_id]
        except KeyError:
            return self._projection.account(account_id)

    def account_of(self, inp: Input) -> AccountState | None:
        account_id = getattr(inp, "account_id", None)
        return self.account(account_id) if account_id else None

    def put_account(self, state: AccountState) -> None:
        account_id = state.account_id
        if account_id not in self._before:
            self._before[account_id] = self._accounts.get(account_id)
        self._accounts[account_id] = state

    def version(self, stream: str) -> int:
        account_id = account_of(stream)
        if account_id is None:
            return self.application.version
        state = self.account(account_id)
        return state.version if state else 0

    def begin(self) -> None:
        """Start a request's decision: what it changes from here on can be rolled back."""
        self._before.clear()
        self._application_before = self.application

    def rollback(self) -> None:
        """Undo what a failed decision may have left half-applied, and nothing before it: the
        pass's earlier decisions stay, so the requests after it are decided on them."""
        for account_id, before in self._before.items():
            if before is None:
                del self._accounts[account_id]
            else:
                self._accounts[account_id] = before
        self._before.clear()
        self.application = self._application_before


def _learn_recorded(request: Request[T], outcome: AppendResult) -> bool:
    """Add the inputs a skipped call found recorded to `request.known`; whether any were new."""
    before = len(request.known)
    request.known.update(r.event_id for r in outcome.records if is_input_record(r.event_id))
    return len(request.known) > before
