"""Property (a) through the real pipeline: codec, event store, engine, live projection, snapshots.

The domain's property test (tests/domain/test_properties.py) checks the rules on an in-memory
harness. Here the same random input sequences go, input by input, through `Engine.submit` into a
real SQLite log, with a `LiveProjection` folding each commit and random restarts that load a
snapshot saved at a random earlier point plus the log's tail. Whatever happens, the live
projection must equal a fresh replay of the stored log and its own snapshot round trip, indexes
and all, and every input must be decided exactly as the harness decided it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import anyio.abc
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

from daemon.domain import STATES, Input, decode_event
from daemon.runtime import live as live_module
from daemon.runtime.audit import replay
from daemon.runtime.engine import Engine
from daemon.runtime.live import LiveProjection
from daemon.runtime.projections import Projection
from eventstore import EventStore
from tests.domain.test_properties import SETTINGS, Run, step

ANSWER_WITHIN = 10.0  # seconds; a projection that stopped folding would otherwise hang submit


class PipelineRun(Run):
    """The domain property test's run, also queueing each input (with its time and events)."""

    def __init__(self, policy: str) -> None:
        self.queue: list[tuple[str, Input | None, datetime, list]] = []
        super().__init__(policy)

    def give(self, inp) -> None:
        before = len(self.h.log)
        super().give(inp)
        events = [logged.event for logged in self.h.log[before:]]
        self.queue.append(("input", inp, self.now, events))

    def restart(self) -> None:
        super().restart()
        # What the harness's projection was at this point, to compare after the real restart.
        self.queue.append(("restart", None, self.now, [self.live.to_snapshot()]))


class Pipeline:
    """The daemon's write path on one SQLite file: store, live projection, engine."""

    def __init__(self, tg: anyio.abc.TaskGroup, path: Path, snapshot_after: set[int]) -> None:
        self.tg = tg
        self.path = path
        self.snapshot_after = snapshot_after
        self.now: datetime | None = None
        self.submitted = 0
        self.restarts = 0

    async def open(self) -> None:
        self.store = await EventStore.open(self.path, synchronous="NORMAL")
        self.live = await LiveProjection.load(self.store)
        self.engine = Engine(self.store, self.live, SETTINGS, clock=lambda: self.now)
        # As in the daemon, `run` raises the projection's failure, ending the whole run at once.
        self.watch = anyio.CancelScope()
        self.tg.start_soon(self._run_live, self.live, self.engine, self.watch)

    @staticmethod
    async def _run_live(live: LiveProjection, engine: Engine, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.run)
                await live.run()

    async def close(self) -> None:
        self.watch.cancel()
        await self.store.close()

    async def restart(self) -> None:
        await self.close()
        await self.open()
        self.restarts += 1

    async def submit(self, inp: Input, now: datetime, expected_events: list) -> None:
        self.now = now
        with anyio.move_on_after(ANSWER_WITHIN) as scope:
            [decision] = await self.engine.submit([inp], source="property")
        if scope.cancelled_caught:
            raise AssertionError(f"{inp.input_id} unanswered; projection: {self.live.failed!r}")
        assert self.live.failed is None
        # The live projection feeds `decide` the same states the harness's evolve built.
        assert list(decision.events) == expected_events, inp.input_id
        assert decision.duplicate == (not expected_events)
        self.submitted += 1
        if self.submitted in self.snapshot_after:
            await self.live.write_snapshot()  # what changed since the last one

    async def drain(self, run: PipelineRun) -> None:
        for kind, inp, now, events in run.queue:
            if kind == "restart":
                await self.restart()
                # Snapshot + tail gives what the harness's projection was at that point.
                assert self.live.projection == Projection.from_snapshot(events[0])
            else:
                assert inp is not None
                await self.submit(inp, now, events)
        run.queue.clear()


def assert_same_answers(a: Projection, b: Projection) -> None:
    """Equal projections, and every query the daemon and the operator make agrees."""
    assert a == b
    assert a.digest() == b.digest()
    assert a.check_indexes() == []
    assert b.check_indexes() == []
    assert a.position == b.position
    assert a.application == b.application
    assert a.funnel() == b.funnel()
    for state in STATES:
        assert a.ids_in(state) == b.ids_in(state)
    assert a.pending_timers() == b.pending_timers()
    assert a.due_soonest(3) == b.due_soonest(3)
    assert a.pending_effects() == b.pending_effects()
    assert a.waves() == b.waves()
    assert a.list_accounts(limit=1000) == b.list_accounts(limit=1000)


async def check_pipeline(
    path: Path, policy: str, steps: list, snapshot_after: set[int], restart_before: set[int]
) -> None:
    async with anyio.create_task_group() as tg:
        pipeline = Pipeline(tg, path, snapshot_after)
        await pipeline.open()
        try:
            await drive(pipeline, policy, steps, restart_before)
        finally:
            await pipeline.close()


async def drive(pipeline: Pipeline, policy: str, steps: list, restart_before: set[int]) -> None:
    run = PipelineRun(policy)
    await pipeline.drain(run)
    for i, s in enumerate(steps):
        if i in restart_before:
            run.step(("restart",))
        run.step(s)
        await pipeline.drain(run)

    records = [r async for r in pipeline.store.read_all()]
    # The stored log is the harness's log: same ids, streams, versions, and events that
    # survive the codec unchanged.
    assert [(r.position, r.stream, r.version, r.event_id) for r in records] == [
        (e.position, e.stream, e.version, e.event_id) for e in run.h.log
    ]
    assert [decode_event(r.type, r.schema, r.data) for r in records] == [e.event for e in run.h.log]

    live = pipeline.live.projection
    replayed = replay(records)
    assert_same_answers(live, replayed)
    assert_same_answers(live, Projection.from_snapshot(live.to_snapshot()))
    assert_same_answers(live, run.live)

    # One more restart from whatever snapshot was saved last (or none): the same again.
    await pipeline.restart()
    assert_same_answers(pipeline.live.projection, replayed)

    # What `status` does: the snapshot kept open, its states counted and read when asked, then
    # the log after it. The counts and the few states asked for first, before anything reads
    # every state's ids.
    reader = await pipeline.store.open_snapshot(live_module.SNAPSHOT_NAME)
    if reader is not None:
        with reader:
            lazy = Projection.from_reader(reader, fetch=reader.blob, lazy=True)
            for record in records[lazy.position :]:
                lazy.apply_record(record)
            assert lazy.funnel() == replayed.funnel()
            assert len(lazy) == len(replayed)
            assert lazy.ids_in("stalled") == replayed.ids_in("stalled")
            assert lazy.due_soonest(3) == replayed.due_soonest(3)
            assert all(
                lazy.application.enrollments.get(a.account_id)
                == replayed.application.enrollments.get(a.account_id)
                for a in replayed
            )
            assert_same_answers(lazy, replayed)
    note_case(f"restarts: {min(pipeline.restarts, 3)}")
    note_case(f"events: {len(records) // 20 * 20}+")
    note_case(f"snapshots: {len(pipeline.snapshot_after & set(range(1, pipeline.submitted + 1)))}")
    reached = {state.state for state in live}
    note_case("reached static" if "static" in reached else "-")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,  # one shrunk failure is enough, and shrinking each costs minutes
)
@given(
    policy=st.sampled_from(["notify", "restart"]),
    # Long enough runs that accounts get far and restarts land mid-migration.
    steps=st.lists(step, min_size=10, max_size=30),
    snapshot_after=st.sets(st.integers(min_value=1, max_value=80), max_size=6),
    restart_before=st.sets(st.integers(min_value=1, max_value=29), max_size=3),
    chunk=st.sampled_from([1, 2, 50_000]),
)
def test_live_projection_through_the_store_equals_a_fresh_replay(
    tmp_path_factory, policy, steps, snapshot_after, restart_before, chunk
):
    """For any inputs, redeliveries and restarts, the live view equals a replay of the log,
    whether a complete snapshot is written in one transaction or a few accounts per one."""
    path = tmp_path_factory.mktemp("live") / "log.db"
    default, live_module.SNAPSHOT_CHUNK = live_module.SNAPSHOT_CHUNK, chunk
    try:
        anyio.run(check_pipeline, path, policy, steps, snapshot_after, restart_before)
    finally:
        live_module.SNAPSHOT_CHUNK = default
