"""The engine: every input becomes durable events before anyone is told it was accepted.

decide (pure, on the projection's state) -> append (one transaction per call, expected stream
versions) -> wait until the projection has applied the new events -> answer. Inputs about the
same stream are serialised by a per-stream lock, so a decision always sees the state it is
appended on; a version conflict (another writer) is retried on fresh state.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import structlog

from daemon.clock import utc_now
from daemon.domain import (
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
from daemon.live import LiveProjection
from eventstore import EventStore, NewEvent, WrongExpectedVersion

log = structlog.get_logger(__name__)

_CONFLICT_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one input: its events, or that it had been recorded before."""

    input: Input
    duplicate: bool
    events: tuple[Event, ...]
    account: AccountState | None


class _StreamLocks:
    """One lock per stream, held only while someone uses it.

    On the ingest hot path nearly every stream is free: taking it costs a dict insert and no
    suspension; waiters queue in arrival order and the lock is handed to the next directly.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, streams: Sequence[str]) -> None:
        taken: list[str] = []
        try:
            for stream in sorted(set(streams)):  # one global order: no deadlocks
                waiters = self._waiters.get(stream)
                if waiters is None:
                    self._waiters[stream] = deque()
                else:
                    future = asyncio.get_running_loop().create_future()
                    waiters.append(future)
                    try:
                        await future
                    except BaseException:
                        if future.done() and not future.cancelled():
                            self._release_one(stream)  # handed to us as we were cancelled
                        else:
                            waiters.remove(future)
                        raise
                taken.append(stream)
        except BaseException:
            self.release(taken)
            raise

    def release(self, streams: Sequence[str]) -> None:
        for stream in sorted(set(streams)):
            self._release_one(stream)

    def _release_one(self, stream: str) -> None:
        waiters = self._waiters[stream]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # ownership passes straight to the next waiter
                return
        del self._waiters[stream]


class _Batch:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.done = asyncio.Event()
        self.found: set[str] = set()
        self.error: BaseException | None = None


class _RecordedInputs:
    """Answers "was this input recorded already?" for many concurrent requests in one query.

    The store's reads share one connection (a thread hop each), so checks that arrive while a
    query is in flight wait in the next batch instead of queueing a query each: the read-side
    twin of the writer's group commit.
    """

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._open: _Batch | None = None
        self._lock = asyncio.Lock()

    async def contains(self, event_id: str) -> bool:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            batch.ids.add(event_id)
            async with self._lock:  # while the previous batch's query runs, this one fills
                self._open = None
                try:
                    batch.found = await self._store.stored_event_ids(batch.ids)
                except BaseException as exc:
                    batch.error = exc
                    raise
                finally:
                    batch.done.set()
        else:
            batch.ids.add(event_id)
            await batch.done.wait()
            if batch.error is not None:
                raise batch.error
        return event_id in batch.found


class Engine:
    """Decides inputs against the live projection and appends the resulting events durably."""

    def __init__(
        self,
        store: EventStore,
        live: LiveProjection,
        settings: MigrationSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        enqueue_timeout: float | None = 5.0,
        on_appended: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.settings = settings
        self._clock = clock
        self._enqueue_timeout = enqueue_timeout
        self._locks = _StreamLocks()
        self._recorded = _RecordedInputs(store)
        self._on_appended = on_appended

    async def submit(
        self, inputs: Sequence[Input], *, source: str, correlation_id: str | None = None
    ) -> list[Decision]:
        """Record `inputs` (one delivery, one transaction) and return what each became."""
        streams = [stream_for(i) for i in inputs]
        await self._locks.acquire(streams)
        try:
            for attempt in range(_CONFLICT_RETRIES):
                try:
                    return await self._submit_locked(inputs, source, correlation_id)
                except WrongExpectedVersion:
                    if attempt == _CONFLICT_RETRIES - 1:
                        raise
                    log.info("engine.version_conflict_retry", attempt=attempt + 1)
            raise AssertionError("unreachable")
        finally:
            self._locks.release(streams)

    async def _submit_locked(
        self, inputs: Sequence[Input], source: str, correlation_id: str | None
    ) -> list[Decision]:
        projection = self.live.projection
        accounts: dict[str, AccountState | None] = {}
        app: ApplicationState = projection.application
        expected: dict[str, int] = {}
        new: list[NewEvent] = []
        decisions: list[Decision] = []
        seen_ids: set[str] = set()
        now = self._clock()
        # One input (nearly every request): the writer checks for a redelivery in the commit's
        # own transaction (`if_absent`). Several: each is looked up first, in shared queries.
        guard = f"{inputs[0].input_id}#0" if len(inputs) == 1 else None
        for inp in inputs:
            first_id = f"{inp.input_id}#0"
            if first_id in seen_ids or (guard is None and await self._recorded.contains(first_id)):
                decisions.append(Decision(inp, True, (), _account_of(projection, inp)))
                continue
            seen_ids.add(first_id)
            stream = stream_for(inp)
            state: AccountState | ApplicationState | None
            if isinstance(inp, AccountInput):
                state = accounts.get(inp.account_id, projection.account(inp.account_id))
                expected.setdefault(stream, state.version if state else 0)
            else:
                state = app
                expected.setdefault(stream, app.version)
            events = decide(state, inp, now, self.settings, app)
            for event in events:
                if stream_of(event) == "application":
                    app = evolve_application(app, event)
                else:
                    account_id = event.account_id  # type: ignore[attr-defined]
                    accounts[account_id] = evolve_account(
                        accounts.get(account_id, projection.account(account_id)), event
                    )
            after = accounts.get(inp.account_id) if isinstance(inp, AccountInput) else app
            first_metadata, rest_metadata = _metadata(inp, after, source, correlation_id)
            for index, event in enumerate(events):
                encoded = encode_event(event)
                event_stream = stream_of(event)
                expected.setdefault(event_stream, _version_of(projection, event_stream))
                new.append(
                    NewEvent(
                        stream=event_stream,
                        type=encoded.type,
                        data=encoded.data,
                        schema=encoded.schema,
                        metadata=first_metadata if index == 0 else rest_metadata,
                        event_id=f"{inp.input_id}#{index}",
                    )
                )
            account_id = getattr(inp, "account_id", None)
            decisions.append(
                Decision(
                    inp, False, tuple(events), accounts.get(account_id) if account_id else None
                )
            )
        if new:
            result = await self.store.append(
                new, expected, enqueue_timeout=self._enqueue_timeout, if_absent=guard
            )
            if result.skipped:  # recorded before: the decision just made is dropped unwritten
                (inp,) = inputs
                return [Decision(inp, True, (), _account_of(projection, inp))]
            await self.live.wait_for(max(r.position for r in result.records))
            if self._on_appended is not None:
                self._on_appended(source, len(result.new_records), len(result.duplicates))
        return decisions

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
    inp: Input, state: object, source: str, request_id: str | None
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
        cycle = state.cycle if isinstance(state, AccountState) else 0
        request_id = f"account-{account_id}/cycle-{cycle}"
    common = {"source": source, "input_id": inp.input_id, "correlation_id": request_id}
    first = msgspec.json.encode({**common, "causation_id": outside})
    rest = msgspec.json.encode({**common, "causation_id": f"{inp.input_id}#0"})
    return first, rest


def _account_of(projection: Any, inp: Input) -> AccountState | None:
    account_id = getattr(inp, "account_id", None)
    return projection.account(account_id) if account_id else None


def _version_of(projection: Any, stream: str) -> int:
    if stream == "application":
        return projection.application.version
    state = projection.account(stream.removeprefix("account-"))
    return state.version if state else 0
