"""The engine: every input becomes durable events before anyone is told it was accepted.

Callers queue inputs; a pass decides everything queued (pure, on the projection's state plus
the pass's own earlier decisions) -> appends one call per submit, with expected stream versions
-> once committed and applied to the projection, answers. Passes overlap (the next is decided
while the previous commits), but an input whose stream has events in flight waits for them, so
a decision always sees the committed state it is appended on; a version conflict (another
writer, or an earlier call of the pass that was dropped) is decided again. The rules live in
`planner.py` (pure); this module is the shell that queues, appends and answers.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.clock import utc_now
from daemon.domain import (
    Input,
    InputQuarantined,
    MigrationSettings,
    encode_event,
    first_event_id,
    stream_of,
)
from daemon.runtime.live import LiveProjection
from daemon.runtime.planner import Decision, Pass, PassPlanner, Request
from eventstore import AppendResult, EventStore, NewEvent, StoreClosed

__all__ = ["Decision", "Engine"]

log = structlog.get_logger(__name__)

_MAX_IN_FLIGHT = 8  # passes appended and not yet committed; a ninth waits for the oldest

_Answer = asyncio.Future[list[Decision]]


class Engine:
    """Decides inputs against the live projection and appends the resulting events durably.

    Callers queue their inputs (`submit`); `run()` (a long-running task in the owner's task
    group) takes passes from the queue, decides them in arrival order (each decision sees the
    events of the ones before it in the pass), appends one call per submit
    (`EventStore.append_many`: one transaction for the pass, or shared with passes queued beside
    it) and, once committed, answers. Passes do not wait for each other's commits, but an input
    whose stream has events still in flight waits for them, and everything waits while
    application events (enrolments, commands) are in flight, since every decision reads the
    application's state: each decision is made on committed state plus its own pass, without a
    lock per stream. A call whose basis was dropped (a conflict, or an earlier call of the pass
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
        self._planner: PassPlanner[_Answer] = PassPlanner(settings)
        self._wake = anyio.Event()
        self._in_flight = 0
        self._stopped = False
        self._refused: frozenset[str] = frozenset()

    async def submit(
        self, inputs: Sequence[Input], *, source: str, correlation_id: str | None = None
    ) -> list[Decision]:
        """Record `inputs` (one delivery, one transaction) and return what each became.

        Queued until `run()` takes it; raises StoreClosed once the engine has stopped, or once
        `stop_intake` refused `source`.
        """
        known: set[str] = set()
        if len(inputs) > 1:
            # Several inputs: those recorded before are looked up first (one query), so the
            # others are decided without them. Any recorded meanwhile are caught at commit by
            # the call's `if_absent` guards, as a single input's redelivery always is.
            known = await self.store.stored_event_ids({first_event_id(i.input_id) for i in inputs})
        if self._stopped:
            raise StoreClosed("the engine stopped; retry")
        if source in self._refused:
            raise StoreClosed("the daemon is stopping; retry")
        future: _Answer = asyncio.get_running_loop().create_future()
        self._planner.add(Request(inputs, source, future, correlation_id, known))
        self._wake.set()
        return await future

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take and append passes until cancelled; every caller still waiting is then answered.

        Passes run as tasks of a group this owns, at most `_MAX_IN_FLIGHT` at once. It never
        returns by itself: its owner supervises it like any other part.
        """
        self._stopped = False
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    batch = self._next_batch()
                    if batch:
                        self._begin_pass(tg, batch)
                        continue
                    await self._wake.wait()  # a submit, or a pass that settled
                    self._wake = anyio.Event()
        finally:
            self._stopped = True
            # Nobody is left waiting for an answer that will not come.
            _fail(self._planner.clear(), StoreClosed("the engine stopped; retry"))

    def stop_intake(self, sources: Collection[str]) -> int:
        """Refuse `sources` from now on and fail their requests not yet decided (StoreClosed).

        Nothing of a failed request is written: it was still in the queue, so no pass holds it.
        Requests already decided run on and are answered once committed (or failed). Other
        sources (timers, outbox, pollers) are still served. Returns how many were failed.
        """
        self._refused = self._refused | frozenset(sources)
        refused: list[Request[_Answer]] = []
        for request in self._planner.clear():
            if request.source in self._refused:
                refused.append(request)
            else:
                self._planner.add(request)
        _fail(refused, StoreClosed("the daemon is stopping; retry"))
        return len(refused)

    def _next_batch(self) -> list[Request[_Answer]]:
        if self._in_flight >= _MAX_IN_FLIGHT:
            return []
        # A caller that gave up before its request was decided: nothing of it is written.
        return self._planner.take(dropped=asyncio.Future.done)

    def _begin_pass(self, tg: TaskGroup, batch: list[Request[_Answer]]) -> None:
        pass_ = self._planner.decide_pass(batch, self.live.projection, self._clock())
        for request, exc in pass_.failed:
            _fail((request,), exc)
        self._in_flight += 1
        # A fresh context (start_soon copies the current one): the engine's log lines must not
        # carry the request id (or account) of whichever request was queued first.
        contextvars.Context().run(tg.start_soon, self._finish_pass, pass_)

    async def _finish_pass(self, pass_: Pass[_Answer]) -> None:
        """Append the pass, then answer each of its submits (or queue it to be decided again).

        A pass that fails (storage) or is cancelled answers every one of its callers; a bug
        while answering is logged and answered too, never raised into the engine's group.
        """
        done = False
        try:
            await self._append_and_answer(pass_)
            done = True
        except Exception as exc:
            log.error("engine.pass_failed", error=repr(exc))
        finally:
            self._in_flight -= 1
            self._planner.release(pass_)  # the projection now holds whatever the pass wrote
            if not done:
                _fail(pass_.requests, StoreClosed("the engine stopped; retry"))
            self._wake.set()  # requests held for these streams can be decided now

    async def _append_and_answer(self, pass_: Pass[_Answer]) -> None:
        calls = pass_.calls
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
            _fail(pass_.requests, exc)
            return
        settled = self._planner.settle(pass_, outcomes)
        for request in settled.conflicted:
            log.info("engine.version_conflict_retry", attempt=request.attempt)
        for request, error in settled.failures:
            _fail((request,), error)
        for request, decisions in settled.answers:
            if not request.token.done():
                request.token.set_result(decisions)
        if self._on_appended is not None:
            for source, created in settled.appended:
                self._on_appended(source, created)

    async def quarantine(self, body: bytes, *, source: str, field: str, reason: str) -> bool:
        """Keep a signed but unreadable body in the log once, however often it is redelivered.

        Returns True when it was new. The body is kept as text where it decodes, else as hex.
        Refused (StoreClosed, nothing written) like `submit` once `stop_intake` named `source`.
        """
        if source in self._refused:
            raise StoreClosed("the daemon is stopping; retry")
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
                    event_id=first_event_id(f"quarantine:{digest}"),
                )
            ],
            enqueue_timeout=self._enqueue_timeout,
        )
        await self.live.wait_for(result.records[0].position)
        return result.created[0]


def _fail(requests: Iterable[Request[_Answer]], exc: Exception) -> None:
    """Answer every request still waiting with `exc`."""
    for request in requests:
        if not request.token.done():
            request.token.set_exception(exc)
