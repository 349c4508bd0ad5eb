"""The engine: every input becomes durable events before anyone is told it was accepted.

Callers queue inputs; a pass decides everything queued (pure, on the projection's state plus
the pass's own earlier decisions) -> appends one call per submit, with expected stream versions
-> once committed and applied to the projection, answers. Passes overlap (the next is decided
while the previous commits), but an input whose stream has events in flight waits for them, so
a decision always sees the committed state it is appended on; a version conflict (another
writer, or an earlier call of the pass that was dropped) is decided again.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import structlog

from daemon.clock import utc_now
from daemon.domain import (
    APPLICATION_STREAM,
    AccountInput,
    AccountState,
    ApplicationState,
    Event,
    Input,
    InputQuarantined,
    MigrationSettings,
    decide,
    encode_event,
    evolve_account,
    evolve_application,
    stream_for,
    stream_of,
)
from daemon.runtime.live import LiveProjection
from eventstore import (
    AppendCall,
    AppendResult,
    EventStore,
    NewEvent,
    StoreClosed,
    WrongExpectedVersion,
)

log = structlog.get_logger(__name__)

_CONFLICT_RETRIES = 5
_MAX_PASS = 512  # submits decided (and appended in one transaction) per engine pass
_MAX_IN_FLIGHT = 8  # passes appended and not yet committed; a ninth waits for the oldest


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one input: its events, or that it had been recorded before."""

    input: Input
    duplicate: bool
    events: tuple[Event, ...]


class _Request:
    """One `submit` call waiting in the engine's inbox."""

    __slots__ = ("attempt", "correlation_id", "future", "inputs", "known", "source")

    def __init__(
        self,
        inputs: Sequence[Input],
        source: str,
        correlation_id: str | None,
        known: set[str],
        future: asyncio.Future[list[Decision]],
    ) -> None:
        self.inputs = inputs
        self.source = source
        self.correlation_id = correlation_id
        self.known = known  # first event ids of these inputs found in the log before queueing
        self.future = future
        self.attempt = 0


class _Decided:
    """A request's decisions and the append call that records them.

    `streams`: the streams whose versions that call expects (none without a call); they are
    busy while it is in flight.
    """

    __slots__ = ("call", "decisions", "request", "streams")

    def __init__(
        self,
        request: _Request,
        decisions: list[Decision],
        call: AppendCall | None = None,
        streams: tuple[str, ...] = (),
    ) -> None:
        self.request = request
        self.decisions = decisions
        self.call = call
        self.streams = streams


class Engine:
    """Decides inputs against the live projection and appends the resulting events durably.

    Callers queue their inputs (`submit`). A pass takes what is queued, decides it in arrival
    order (each decision sees the events of the ones before it in the pass), appends one call
    per submit (`EventStore.append_many`: one transaction for the pass, or shared with passes
    queued beside it) and, once committed, answers. Passes do not wait for each other's commits,
    but an input whose stream has events still in flight waits for them, and everything waits
    while application events (enrolments, commands) are in flight, since every decision reads
    the application's state: each decision is made on committed state plus its own pass, without
    a lock per stream. A call whose basis was dropped (a conflict, or an earlier call of the pass
    that failed) fails its expected versions, and a delivery of several inputs some of which
    were recorded meanwhile is skipped whole (`if_absent`); either is decided again later.
    """

    def __init__(
        self,
        store: EventStore,
        live: LiveProjection,
        settings: MigrationSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        enqueue_timeout: float | None = 5.0,
        on_appended: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.settings = settings
        self._clock = clock
        self._enqueue_timeout = enqueue_timeout
        self._on_appended = on_appended
        self._inbox: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: deque[asyncio.Task[None]] = deque()
        self._busy: dict[str, int] = {}  # stream -> in-flight calls writing to it

    async def submit(
        self, inputs: Sequence[Input], *, source: str, correlation_id: str | None = None
    ) -> list[Decision]:
        """Record `inputs` (one delivery, one transaction) and return what each became."""
        known: set[str] = set()
        if len(inputs) > 1:
            # Several inputs: those recorded before are looked up first (one query), so the
            # others are decided without them. Any recorded meanwhile are caught at commit by
            # the call's `if_absent` guards, as a single input's redelivery always is.
            known = await self.store.stored_event_ids({f"{i.input_id}#0" for i in inputs})
        future: asyncio.Future[list[Decision]] = asyncio.get_running_loop().create_future()
        self._inbox.append(_Request(inputs, source, correlation_id, known, future))
        self._start()
        return await future

    def _start(self) -> None:
        if (self._task is None or self._task.done()) and self._inbox:
            # A fresh context: the engine's log lines must not carry the request id (or account)
            # of whichever request happened to start it.
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name="staticipd-engine", context=contextvars.Context()
            )

    async def _drain(self) -> None:
        """Start passes while inputs can be decided; a submit or a settled pass starts the next."""
        batch: list[_Request] = []
        try:
            while self._inbox:
                while len(self._in_flight) >= _MAX_IN_FLIGHT:
                    await asyncio.wait({self._in_flight[0]})
                batch = self._take()
                if not batch:
                    break  # what is queued waits for streams in flight; settling restarts us
                self._begin_pass(batch)
                batch = []
        except BaseException as exc:
            # Nobody is left waiting for an answer that will not come.
            _fail((*batch, *self._inbox), exc)
            self._inbox.clear()
            raise
        finally:
            self._task = None

    def _take(self) -> list[_Request]:
        """The next pass: queued requests in order, skipping (for now) those that must wait.

        A request waits while a stream it is about has events in flight, or while an earlier
        request of this pass carries one of its inputs (the second is decided after the first
        committed). Everything waits while application events (enrolments, commands) are in
        flight: every decision reads the application's state.
        """
        if APPLICATION_STREAM in self._busy:
            return []
        batch: list[_Request] = []
        held: list[_Request] = []
        ids: set[str] = set()
        streams: set[str] = set()
        scanned = 0
        while self._inbox and len(batch) < _MAX_PASS and scanned < 4 * _MAX_PASS:
            request = self._inbox.popleft()
            scanned += 1
            if request.future.done():
                continue  # its caller gave up before it was decided: nothing of it is written
            mine = {i.input_id for i in request.inputs}
            about = {stream_for(i) for i in request.inputs}
            if (
                not mine.isdisjoint(ids)
                or not about.isdisjoint(streams)
                or any(s in self._busy for s in about)
            ):
                held.append(request)
                streams |= about  # later requests about these streams keep their order
                continue
            ids |= mine
            batch.append(request)
        self._inbox.extendleft(reversed(held))
        return batch

    def _begin_pass(self, batch: list[_Request]) -> None:
        overlay = _Overlay(self.live.projection)
        now = self._clock()
        decided: list[_Decided] = []
        for index, request in enumerate(batch):
            try:
                d = self._decide(request, overlay, now)
            except Exception as exc:  # a bug in one decision must not fail the others
                overlay.forget()
                request.future.set_exception(exc)
                continue
            decided.append(d)
            if APPLICATION_STREAM in d.streams:
                # Later requests would read application state not yet committed: they wait.
                self._inbox.extendleft(reversed(batch[index + 1 :]))
                break
        streams = [s for d in decided for s in d.streams]
        for stream in streams:
            self._busy[stream] = self._busy.get(stream, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._finish_pass(decided), context=contextvars.Context()
        )
        self._in_flight.append(task)
        task.add_done_callback(lambda t: self._settle(t, decided, streams))

    def _settle(
        self, task: asyncio.Task[None], decided: list[_Decided], streams: list[str]
    ) -> None:
        """A pass ended, however: free its streams, answer anyone it left waiting, go on."""
        self._in_flight.remove(task)
        for stream in streams:  # the projection now holds whatever the pass wrote
            if self._busy[stream] == 1:
                del self._busy[stream]
            else:
                self._busy[stream] -= 1
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("engine.pass_failed", error=repr(task.exception()))
            _fail([d.request for d in decided], StoreClosed("the engine stopped; retry"))
        self._start()  # requests held for these streams can be decided now

    async def _finish_pass(self, decided: list[_Decided]) -> None:
        """Append the pass, then answer each of its submits (or queue it to be decided again).

        Whatever this leaves unanswered (it was cancelled, or failed) `_settle` answers.
        """
        calls = [d.call for d in decided if d.call is not None]
        try:
            outcomes = (
                await self.store.append_many(calls, enqueue_timeout=self._enqueue_timeout)
                if calls
                else []
            )
            last = max(
                (o.last_position for o in outcomes if isinstance(o, AppendResult)), default=0
            )
            await self.live.wait_for(last)  # at once: the writer hands each commit to it first
        except Exception as exc:
            _fail([d.request for d in decided], exc)
            return
        results = iter(outcomes)
        retry: list[_Request] = []
        try:
            for d in decided:
                request = d.request
                if d.call is None:
                    _answer(request, d.decisions)
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
                    retry.append(request)
                    continue
                if isinstance(outcome, WrongExpectedVersion):
                    # Decided on state that changed (another writer, or an earlier call of the
                    # pass that was dropped): decide again, on the state as it is now.
                    request.attempt += 1
                    if request.attempt < _CONFLICT_RETRIES:
                        log.info("engine.version_conflict_retry", attempt=request.attempt)
                        retry.append(request)
                        continue
                if isinstance(outcome, Exception):  # including a conflict retried too often
                    _fail((request,), outcome)
                    continue
                if outcome.skipped:  # recorded before: the decision just made is dropped
                    (inp,) = request.inputs
                    _answer(request, [Decision(inp, True, ())])
                    continue
                if self._on_appended is not None:
                    self._on_appended(request.source, sum(outcome.created))
                _answer(request, d.decisions)
        finally:
            if retry:
                self._inbox.extendleft(reversed(retry))

    def _decide(self, request: _Request, overlay: _Overlay, now: datetime) -> _Decided:
        new: list[NewEvent] = []
        decisions: list[Decision] = []
        expected: dict[str, int] = {}
        seen_ids: set[str] = set()
        for inp in request.inputs:
            first_id = f"{inp.input_id}#0"
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
                expected.setdefault(stream, overlay.version(stream))
                streams.append(stream)
                if stream == APPLICATION_STREAM:
                    overlay.application = evolve_application(overlay.application, event)
                else:
                    account_id = event.account_id  # type: ignore[attr-defined]  # an AccountEvent
                    overlay.put(account_id, evolve_account(overlay.account(account_id), event))
            first_metadata, rest_metadata = _metadata(
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
                        event_id=f"{inp.input_id}#{index}",
                    )
                )
            decisions.append(Decision(inp, False, tuple(events)))
        if not new:
            return _Decided(request, decisions)
        # Each input recorded here is written under its own id, `<input_id>#0`: if any of them
        # was recorded meanwhile (a redelivery in flight), nothing of the call is written.
        guards = [f"{d.input.input_id}#0" for d in decisions if not d.duplicate]
        call = AppendCall(new, expected, if_absent=guards)
        return _Decided(request, decisions, call, streams=tuple(expected))

    async def quarantine(self, body: bytes, *, source: str, field: str, reason: str) -> bool:
        """Keep a signed but unreadable body in the log once, however often it is redelivered.

        Returns True when it was new. The body is kept as text where it decodes, else as hex.
        """
        digest = hashlib.sha256(body).hexdigest()
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        event = InputQuarantined(
            occurred_at=self._clock(),
            source=source,
            sha256=digest,
            field=field,
            reason=reason,
            body=text,
            body_hex=None if text is not None else body.hex(),
        )
        encoded = encode_event(event)
        result = await self.store.append(
            [
                NewEvent(
                    stream=stream_of(event),
                    type=encoded.type,
                    data=encoded.data,
                    schema=encoded.schema,
                    metadata=msgspec.json.encode({"source": source}),
                    event_id=f"quarantine:{digest}#0",
                )
            ],
            enqueue_timeout=self._enqueue_timeout,
        )
        await self.live.wait_for(result.records[0].position)
        return result.created[0]


def _metadata(
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
        request_id = f"account-{account_id}/cycle-{cycle}"
    common = {"source": source, "input_id": inp.input_id, "correlation_id": request_id}
    first = msgspec.json.encode({**common, "causation_id": outside})
    rest = msgspec.json.encode({**common, "causation_id": f"{inp.input_id}#0"})
    return first, rest


class _Overlay:
    """The projection as this pass's decisions left it: their events, written or not yet."""

    __slots__ = ("_accounts", "_projection", "application")

    def __init__(self, projection: Any) -> None:
        self._projection = projection
        self._accounts: dict[str, AccountState | None] = {}
        self.application: ApplicationState = projection.application

    def account(self, account_id: str) -> AccountState | None:
        try:
            return self._accounts[account_id]
        except KeyError:
            return self._projection.account(account_id)

    def account_of(self, inp: Input) -> AccountState | None:
        account_id = getattr(inp, "account_id", None)
        return self.account(account_id) if account_id else None

    def put(self, account_id: str, state: AccountState) -> None:
        self._accounts[account_id] = state

    def version(self, stream: str) -> int:
        if stream == APPLICATION_STREAM:
            return self.application.version
        state = self.account(stream.removeprefix("account-"))
        return state.version if state else 0

    def forget(self) -> None:
        """Drop what a failed decision may have left half-applied: start from the projection."""
        self._accounts.clear()
        self.application = self._projection.application


def _fail(requests: Iterable[_Request], exc: BaseException) -> None:
    """Answer every request still waiting with `exc` (a fresh StoreClosed if it is not an error)."""
    for request in requests:
        if not request.future.done():
            request.future.set_exception(
                exc if isinstance(exc, Exception) else StoreClosed("the engine stopped; retry")
            )


def _learn_recorded(request: _Request, outcome: AppendResult) -> bool:
    """Add the inputs a skipped call found recorded to `request.known`; whether any were new."""
    before = len(request.known)
    request.known.update(r.event_id for r in outcome.records if r.event_id.endswith("#0"))
    return len(request.known) > before


def _answer(request: _Request, decisions: list[Decision]) -> None:
    if not request.future.done():
        request.future.set_result(decisions)
