"""The engine's passes: many submits decided in one pass, appended in one transaction, in order.

Every test runs the real write path on a SQLite file: store, live projection, engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import structlog.testing

import daemon.runtime.engine
import daemon.runtime.planner
from daemon.domain import (
    AuthReported,
    EnableMigration,
    Enroll,
    MigrationSettings,
    ProviderNotified,
    account_stream,
)
from daemon.runtime.engine import Engine
from daemon.runtime.live import LiveProjection
from eventstore import EventStore, WrongExpectedVersion
from tests.daemon.test_planner import T0, running

pytestmark = pytest.mark.anyio


class WritePath:
    """An engine on a real store and live projection, with a spy on the store's id lookups."""

    def __init__(self, store: EventStore, live: LiveProjection) -> None:
        self.store, self.live = store, live
        self.engine = Engine(
            store,
            live,
            MigrationSettings(),
            clock=lambda: T0,
            on_appended=lambda source, new: self.on_appended(source, new),
        )
        self.lookups = 0  # deliveries of several inputs whose recorded ones were looked up
        real_lookup = store.stored_event_ids

        async def lookup(ids: Any) -> set[str]:
            found = await real_lookup(ids)
            self.lookups += 1
            return found

        store.stored_event_ids = lookup  # type: ignore[method-assign]  # a spy for the tests

    def on_appended(self, source: str, new: int) -> None:
        """The metrics callback; a test may replace it."""

    async def submit(self, *inputs: ProviderNotified) -> list[daemon.runtime.engine.Decision]:
        return await asyncio.wait_for(self.engine.submit(list(inputs), source="test"), 10)

    async def stream(self, account: str) -> list[str]:
        return [r.event_id async for r in self.store.read_stream(account_stream(account))]


@pytest.fixture
async def path(tmp_path: Path) -> AsyncIterator[WritePath]:
    async with EventStore.open(tmp_path / "log.db", synchronous="NORMAL") as store:
        live = await LiveProjection.load(store)
        path = WritePath(store, live)
        async with anyio.create_task_group() as tg:
            await tg.start(path.engine.run)
            yield path
            tg.cancel_scope.cancel()


async def test_concurrent_inputs_for_one_account_are_all_recorded_in_arrival_order(
    path: WritePath,
) -> None:
    """Decided in one pass, each input sees the ones before it: versions follow arrival order."""
    answers = await asyncio.gather(*(path.submit(running(n)) for n in range(40)))
    assert [d.duplicate for [d] in answers] == [False] * 40
    assert await path.stream("acc-1") == [f"v2:acc-1:{n}#0" for n in range(40)]
    assert path.live.projection.account("acc-1").version == 40


async def test_a_redelivery_queued_before_a_new_input_does_not_lose_the_new_one(
    path: WritePath,
) -> None:
    """The redelivery's decision is dropped unwritten; the input decided after it is decided
    again on the state without it, not lost."""
    await path.submit(running(1))
    [again], [new] = await asyncio.gather(path.submit(running(1)), path.submit(running(2)))
    assert again.duplicate
    assert not new.duplicate
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:2#0"]
    assert path.live.projection.account("acc-1").version == 2


async def test_the_same_input_twice_in_flight_is_recorded_once(path: WritePath) -> None:
    """One delivery and its redelivery, both queued: one is recorded, the other is a duplicate."""
    first, second = await asyncio.gather(path.submit(running(7)), path.submit(running(7)))
    assert sorted(d.duplicate for [d] in (first, second)) == [False, True]
    assert await path.stream("acc-1") == ["v2:acc-1:7#0"]


async def test_a_failing_decision_fails_only_its_own_submit(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug deciding one input fails that caller; the inputs queued beside it are recorded."""
    real_decide = daemon.runtime.planner.decide

    def decide(state: Any, inp: Any, *args: Any) -> Any:
        if inp.input_id == "v2:acc-2:0":
            raise RuntimeError("a bug in one decision")
        return real_decide(state, inp, *args)

    monkeypatch.setattr(daemon.runtime.planner, "decide", decide)
    results = await asyncio.gather(
        path.submit(running(0, "acc-1")),
        path.submit(running(0, "acc-2")),
        path.submit(running(1, "acc-1")),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert await path.stream("acc-1") == ["v2:acc-1:0#0", "v2:acc-1:1#0"]
    assert await path.stream("acc-2") == []


async def test_a_storage_failure_answers_every_submit_of_the_pass(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody waits for ever: the pass's callers all get the error, and the next pass works."""
    from eventstore import StorageUnavailable

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("disk I/O error (simulated)")

    monkeypatch.setattr(path.store, "append_many", broken)
    results = await asyncio.gather(
        *(path.submit(running(n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StorageUnavailable) for r in results)
    monkeypatch.undo()
    [decision] = await path.submit(running(9))
    assert not decision.duplicate
    assert await path.stream("acc-1") == ["v2:acc-1:9#0"]


async def test_a_delivery_of_several_inputs_is_one_call_and_skips_known_ones(
    path: WritePath,
) -> None:
    """A delivery of several inputs looks up the recorded ones once and writes only the new."""
    await path.submit(running(1))
    decisions = await path.submit(running(1), running(2), running(3, "acc-2"))
    assert path.lookups == 1
    assert [d.duplicate for d in decisions] == [True, False, False]
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:2#0"]
    assert await path.stream("acc-2") == ["v2:acc-2:3#0"]


async def test_an_input_waits_for_its_streams_events_in_flight_not_for_a_conflict(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes overlap; an input about a stream with events still in flight is held until they
    commit, then decided on them: no conflict (one would fail at once here), nothing lost."""
    monkeypatch.setattr(daemon.runtime.planner, "CONFLICT_RETRIES", 1)
    gate, appending = hold_commits(path, monkeypatch)
    first = asyncio.ensure_future(path.submit(running(1)))
    await until(lambda: appending)  # the first pass is appended, not yet committed
    other = asyncio.ensure_future(path.submit(running(1, "acc-2")))
    second = asyncio.ensure_future(path.submit(running(2)))
    await until(lambda: len(appending) == 2)  # acc-2's pass; acc-1's second input is held
    gate.set()
    [a], [b], [c] = await asyncio.gather(first, other, second)
    assert [a.duplicate, b.duplicate, c.duplicate] == [False, False, False]
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:2#0"]
    assert path.live.projection.account("acc-1").version == 2


def hold_commits(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, list[object]]:
    """Passes are appended only once the returned event is set: they stay in flight till then.

    The list gets the calls of each pass that reached the store meanwhile.
    """
    gate = asyncio.Event()
    appending: list[object] = []
    real = path.store.append_many

    async def gated(calls: Any, **kwargs: Any) -> Any:
        appending.append(calls)
        await gate.wait()
        return await real(calls, **kwargs)

    monkeypatch.setattr(path.store, "append_many", gated)
    return gate, appending


async def until(condition: Any) -> None:
    for _ in range(2_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never met")


async def test_a_redelivery_inside_a_delivery_of_several_is_recognised_when_it_raced(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[x] is in flight when [x, y] arrives (its lookup cannot see x yet): x is answered as a
    duplicate once x commits, y is recorded, and nothing of x is written twice."""
    gate, appending = hold_commits(path, monkeypatch)
    first = asyncio.ensure_future(path.submit(running(1)))
    await until(lambda: appending)
    both = asyncio.ensure_future(path.submit(running(1), running(2)))
    await until(lambda: path.lookups == 1)  # looked up (x not committed yet), then queued
    gate.set()
    [a] = await first
    x, y = await both
    assert not a.duplicate
    assert x.duplicate
    assert not y.duplicate
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:2#0"]


async def test_inputs_about_one_account_are_written_in_arrival_order_when_held(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held delivery about acc-1 and acc-3 holds the later one about acc-3 and acc-2, which
    holds the still later one about acc-2: acc-2's inputs are written in arrival order."""
    gate, appending = hold_commits(path, monkeypatch)
    busy = asyncio.ensure_future(path.submit(running(1, "acc-1")))
    await until(lambda: appending)
    first = asyncio.ensure_future(path.submit(running(2, "acc-1"), running(1, "acc-3")))
    await until(lambda: path.lookups == 1)
    second = asyncio.ensure_future(path.submit(running(2, "acc-3"), running(1, "acc-2")))
    await until(lambda: path.lookups == 2)
    third = asyncio.ensure_future(path.submit(running(2, "acc-2")))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(busy, first, second, third)
    assert await path.stream("acc-2") == ["v2:acc-2:1#0", "v2:acc-2:2#0"]
    assert await path.stream("acc-3") == ["v2:acc-3:1#0", "v2:acc-3:2#0"]


async def test_no_account_decision_reads_application_state_that_was_not_committed(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enable and an auth queued together: the enable is dropped (a quarantined body took the
    application's next version first, and no retry is allowed here). The auth, decided after
    it, must not start a migration that was never enabled."""
    monkeypatch.setattr(daemon.runtime.planner, "CONFLICT_RETRIES", 1)
    await path.submit(
        Enroll(input_id="enrol", occurred_at=T0, account_ids=("acc-1",), wave="w1", actor="op")
    )
    real = path.store.append_many
    interfered = False

    async def quarantine_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal interfered
        if not interfered:
            interfered = True
            await path.engine.quarantine(b"{junk", source="webhook", field="$", reason="bad")
        return await real(*args, **kwargs)

    monkeypatch.setattr(path.store, "append_many", quarantine_first)
    enable = path.submit(EnableMigration(input_id="enable", occurred_at=T0, actor="op"))
    auth = path.submit(
        AuthReported(input_id="auth", account_id="acc-1", occurred_at=T0 + timedelta(seconds=5))
    )
    results = await asyncio.gather(enable, auth, return_exceptions=True)
    assert isinstance(results[0], WrongExpectedVersion)
    assert not path.live.projection.application.migration_enabled
    assert path.live.projection.account("acc-1").state == "dynamic"


async def test_a_failure_while_answering_a_pass_answers_everyone(path: WritePath) -> None:
    """A bug after the commit (here in the metrics callback) leaves nobody waiting."""
    calls = 0

    def on_appended(source: str, new: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the metrics")

    path.on_appended = on_appended  # type: ignore[method-assign]
    results = await asyncio.gather(
        path.submit(running(1)), path.submit(running(2)), return_exceptions=True
    )
    assert not any(isinstance(r, TimeoutError) for r in results)
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:2#0"]


async def test_a_stopped_engine_answers_whoever_waits_and_can_run_again(
    path: WritePath,
) -> None:
    """An engine stopped as soon as it started leaves no caller waiting; run again, it decides."""
    engine = Engine(path.store, path.live, MigrationSettings(), clock=lambda: T0)
    waiting = asyncio.ensure_future(engine.submit([running(1)], source="test"))
    await asyncio.sleep(0)  # queued before the engine runs
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        tg.cancel_scope.cancel()
    [result] = await asyncio.gather(asyncio.wait_for(waiting, 5), return_exceptions=True)
    assert not isinstance(result, TimeoutError)
    with pytest.raises(daemon.runtime.engine.StoreClosed):
        await engine.submit([running(2)], source="test")
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        [decision] = await asyncio.wait_for(engine.submit([running(2)], source="test"), 10)
        tg.cancel_scope.cancel()
    assert not decision.duplicate


async def test_inputs_without_a_request_are_correlated_by_the_accounts_migration_cycle(
    path: WritePath,
) -> None:
    """With no request id, an input's events carry `account-<id>/cycle-<n>` of the cycle it
    leaves the account in: a first auth opens cycle 1, a later stop belongs to the same one."""
    await path.submit(EnableMigration(input_id="enable", occurred_at=T0, actor="op"))
    await path.submit(
        Enroll(input_id="enrol", occurred_at=T0, account_ids=("acc-1",), wave="w1", actor="op")
    )
    await path.submit(
        AuthReported(input_id="auth", account_id="acc-1", occurred_at=T0 + timedelta(seconds=5))
    )
    stopped = ProviderNotified(
        input_id="v2:stop",
        account_id="acc-1",
        trigger="account.stopped",
        occurred_at=T0 + timedelta(seconds=9),
    )
    await path.submit(stopped)
    correlations = {
        r.event_id: json.loads(r.metadata)["correlation_id"]
        async for r in path.store.read_stream("account-acc-1")
    }
    assert correlations["auth#0"] == "account-acc-1/cycle-1"
    assert correlations["v2:stop#0"] == "account-acc-1/cycle-1"
    assert set(correlations.values()) == {"account-acc-1/cycle-1"}


async def test_the_engines_log_lines_do_not_carry_the_ids_of_a_request(path: WritePath) -> None:
    """A pass decides many callers' inputs: its log lines (here the failure of its metrics
    callback) never name a request, not even one bound where the engine was started."""

    def on_appended(source: str, new: int) -> None:
        raise RuntimeError("a bug in the metrics")

    engine = Engine(
        path.store, path.live, MigrationSettings(), clock=lambda: T0, on_appended=on_appended
    )
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-1", account_id="acc-1"):
            async with anyio.create_task_group() as tg:
                await tg.start(engine.run)
                await asyncio.wait_for(engine.submit([running(1)], source="test"), 10)
                structlog.get_logger().info("caller.line")  # the binding itself works
                tg.cancel_scope.cancel()
    finally:
        structlog.reset_defaults()
    [caller] = [e for e in capture.entries if e["event"] == "caller.line"]
    engine_lines = [e for e in capture.entries if e["event"] == "engine.pass_failed"]
    assert caller["request_id"] == "r-1"
    assert engine_lines
    assert all("request_id" not in e and "account_id" not in e for e in engine_lines)


async def test_stopping_the_intake_refuses_queued_requests_and_finishes_those_in_flight(
    path: WritePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At SIGTERM a refused source's queued request fails (nothing written) and new ones are
    refused; its request already appended is answered once committed; other sources go on."""
    gate, appending = hold_commits(path, monkeypatch)
    engine = path.engine
    in_flight = asyncio.ensure_future(engine.submit([running(1)], source="webhook"))
    await until(lambda: appending)  # appended, not yet committed
    queued = asyncio.ensure_future(engine.submit([running(2)], source="webhook"))
    other = asyncio.ensure_future(engine.submit([running(3)], source="timer"))
    await until(lambda: len(engine._planner) == 2)  # both held behind acc-1's events in flight
    assert engine.stop_intake({"webhook"}) == 1
    with pytest.raises(daemon.runtime.engine.StoreClosed):
        await asyncio.wait_for(queued, 5)
    with pytest.raises(daemon.runtime.engine.StoreClosed):
        await engine.submit([running(4)], source="webhook")
    with pytest.raises(daemon.runtime.engine.StoreClosed):
        await engine.quarantine(b"?", source="webhook", field="$", reason="unreadable")
    gate.set()
    [first], [third] = await asyncio.wait_for(asyncio.gather(in_flight, other), 10)
    assert not first.duplicate
    assert not third.duplicate
    assert await path.stream("acc-1") == ["v2:acc-1:1#0", "v2:acc-1:3#0"]
