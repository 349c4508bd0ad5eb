"""The engine's pass rules on plain data: which requests a pass takes, what it decides, what
each append outcome means for its caller. No event loop, no store: tokens are plain strings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import daemon.runtime.planner
from daemon.domain import (
    AuthReported,
    EnableMigration,
    Enroll,
    Input,
    MigrationSettings,
    ProviderNotified,
    stream_for,
)
from daemon.runtime.planner import CONFLICT_RETRIES, PassPlanner, Request
from daemon.runtime.projections import Projection
from eventstore import AppendResult, RecordedEvent, StorageUnavailable, WrongExpectedVersion

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def running(n: int, account: str = "acc-1") -> ProviderNotified:
    """The provider's `account.running` for `account`, `n` seconds after T0 (input id by n)."""
    return ProviderNotified(
        input_id=f"v2:{account}:{n}",
        account_id=account,
        trigger="account.running",
        occurred_at=T0 + timedelta(seconds=n),
    )


def request(token: str, *inputs: Input, correlation_id: str | None = None) -> Request[str]:
    return Request(list(inputs), "test", token, correlation_id)


def planner(*requests: Request[str]) -> PassPlanner[str]:
    p: PassPlanner[str] = PassPlanner(MigrationSettings())
    for r in requests:
        p.add(r)
    return p


def tokens(requests: list[Request[str]]) -> list[str]:
    return [r.token for r in requests]


def written(call: Any, position: int = 1) -> AppendResult:
    """The outcome of `call` had the store written every one of its events."""
    records = tuple(
        RecordedEvent(
            position + i, e.stream, i + 1, e.type, e.schema, e.data, e.metadata, e.event_id, T0, "h"
        )
        for i, e in enumerate(call.events)
    )
    return AppendResult(records, (True,) * len(records))


def stored(*event_ids: str) -> AppendResult:
    """The outcome of a call skipped because these input records were stored before."""
    records = tuple(
        RecordedEvent(i + 1, "account-acc-1", i + 1, "X", 1, b"{}", b"{}", e, T0, "h")
        for i, e in enumerate(event_ids)
    )
    return AppendResult(records, (False,) * len(records), skipped=True)


def busy_with(p: PassPlanner[str], *inputs: Input) -> None:
    """Put a pass about `inputs` in flight, so their streams are busy."""
    p.add(request("in-flight", *inputs))
    p.decide_pass(p.take(), Projection(), T0)


# --- taking a pass --------------------------------------------------------------------------


def test_a_pass_takes_queued_requests_in_arrival_order() -> None:
    """Requests about different accounts and repeated ones about one account go in one pass."""
    p = planner(
        request("a", running(1)), request("b", running(1, "acc-2")), request("c", running(2))
    )
    assert tokens(p.take()) == ["a", "b", "c"]
    assert len(p) == 0


def test_a_request_about_a_stream_in_flight_is_held_and_so_are_later_ones_about_it() -> None:
    """acc-1 is busy: its request waits, a later one about acc-1 and acc-2 waits behind it, and
    so does acc-2's after that; acc-3's is taken."""
    p = planner()
    busy_with(p, running(0))
    p.add(request("held", running(1)))
    p.add(request("behind", running(2), running(1, "acc-2")))
    p.add(request("acc-2", running(2, "acc-2")))
    p.add(request("free", running(1, "acc-3")))
    assert tokens(p.take()) == ["free"]
    assert len(p) == 3
    assert p.busy == {"account-acc-1"}


def test_everything_waits_while_application_events_are_in_flight() -> None:
    """An enablement in flight holds every request: each decision reads the application."""
    p = planner()
    busy_with(p, EnableMigration(input_id="enable", occurred_at=T0, actor="op"))
    p.add(request("a", running(1, "acc-9")))
    assert p.take() == []
    assert len(p) == 1


def test_the_same_input_twice_in_one_pass_waits_for_the_first() -> None:
    """A redelivery queued beside its original is decided only after the original committed."""
    p = planner(request("first", running(1)), request("again", running(1)))
    assert tokens(p.take()) == ["first"]
    assert tokens(p.clear()) == ["again"]


def test_a_request_whose_caller_gave_up_is_forgotten() -> None:
    """Nothing of a request dropped before its pass is decided or written."""
    p = planner(request("gone", running(1)), request("kept", running(2)))
    assert tokens(p.take(dropped=lambda token: token == "gone")) == ["kept"]
    assert len(p) == 0


def test_releasing_a_pass_frees_its_streams() -> None:
    """Held requests can be taken once the pass about their stream ended."""
    p = planner(request("first", running(1)))
    first = p.decide_pass(p.take(), Projection(), T0)
    p.add(request("second", running(2)))
    assert p.take() == []
    p.release(first)
    assert p.busy == frozenset()
    assert tokens(p.take()) == ["second"]


# --- deciding a pass -------------------------------------------------------------------------


def test_each_decision_of_a_pass_sees_the_ones_before_it() -> None:
    """Two inputs about one account in one pass: the second expects the version the first left."""
    p = planner(
        request("a", running(1)), request("b", running(2, "acc-2")), request("c", running(2))
    )
    pass_ = p.decide_pass(p.take(), Projection(), T0)
    first, _, third = pass_.calls
    assert first.expected == {"account-acc-1": 0}
    assert third.expected == {"account-acc-1": len(first.events)}
    assert first.events[0].event_id == "v2:acc-1:1#0"
    assert first.if_absent == ["v2:acc-1:1#0"]
    assert p.busy == {"account-acc-1", "account-acc-2"}


def test_inputs_known_to_be_recorded_are_duplicates_and_write_nothing() -> None:
    """A delivery whose inputs were all looked up as recorded gets no append call."""
    r = request("a", running(1), running(2))
    r.known.update({"v2:acc-1:1#0", "v2:acc-1:2#0"})
    pass_ = planner(r).decide_pass([r], Projection(), T0)
    [decided] = pass_.decided
    assert decided.call is None
    assert [d.duplicate for d in decided.decisions] == [True, True]


def test_after_an_application_decision_the_rest_of_the_pass_waits() -> None:
    """Later requests would read application state not yet committed: back to the queue front."""
    enable = EnableMigration(input_id="enable", occurred_at=T0, actor="op")
    p = planner(request("enable", enable), request("a", running(1)), request("b", running(2, "x")))
    pass_ = p.decide_pass(p.take(), Projection(), T0)
    assert tokens(pass_.requests) == ["enable"]
    assert tokens(p.clear()) == ["a", "b"]


def test_a_decision_that_raises_fails_only_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one decision leaves the others decided, on state without its half-applied events."""
    real = daemon.runtime.planner.decide

    def decide(state: Any, inp: Any, *args: Any) -> Any:
        if inp.input_id == "v2:acc-2:0":
            raise RuntimeError("a bug in one decision")
        return real(state, inp, *args)

    monkeypatch.setattr(daemon.runtime.planner, "decide", decide)
    p = planner(
        request("a", running(0)), request("b", running(0, "acc-2")), request("c", running(1))
    )
    pass_ = p.decide_pass(p.take(), Projection(), T0)
    assert tokens(pass_.requests) == ["a", "c"]
    [(failed, error)] = pass_.failed
    assert failed.token == "b"
    assert isinstance(error, RuntimeError)


def test_a_decision_that_raises_keeps_the_earlier_decisions_of_its_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed decision is undone alone: later inputs are decided on the pass's earlier
    decisions and without its half-applied events, so their calls expect the right versions."""
    real = daemon.runtime.planner.metadata

    def metadata(inp: Any, *args: Any) -> Any:
        if inp.input_id == "v2:acc-2:0":  # after its events were folded into the pass's state
            raise RuntimeError("a bug after deciding")
        return real(inp, *args)

    monkeypatch.setattr(daemon.runtime.planner, "metadata", metadata)
    p = planner(
        request("a", running(0)),
        request("b", running(0, "acc-2")),
        request("c", running(1)),
        request("d", running(1, "acc-2")),
    )
    pass_ = p.decide_pass(p.take(), Projection(), T0)
    assert tokens(pass_.requests) == ["a", "c", "d"]
    first, third, fourth = pass_.calls
    assert third.expected == {"account-acc-1": len(first.events)}
    assert fourth.expected == {"account-acc-2": 0}


def test_metadata_names_cause_and_correlation() -> None:
    """The recorded input points at the outside message, what it caused at the recorded input;
    without a request id the account's migration cycle correlates them."""
    enrol = Enroll(input_id="enrol", occurred_at=T0, account_ids=("acc-1",), wave="w", actor="op")
    enable = EnableMigration(input_id="enable", occurred_at=T0, actor="op")
    projection = Projection()
    p = planner()
    for inp in (enable, enrol):
        p.add(request(inp.input_id, inp))
        pass_ = p.decide_pass(p.take(), projection, T0)
        [call] = pass_.calls
        for record in written(call, projection.position + 1).records:
            projection.apply_record(record)  # committed, as the live projection would
        p.release(pass_)
    auth = AuthReported(input_id="auth:1", account_id="acc-1", occurred_at=T0)
    p.add(request("auth", auth))
    [call] = p.decide_pass(p.take(), projection, T0 + timedelta(seconds=1)).calls
    meta = [json.loads(e.metadata) for e in call.events]
    assert len(meta) > 1
    assert meta[0]["causation_id"] == "auth:1"
    assert all(m["causation_id"] == "auth:1#0" for m in meta[1:])
    assert {m["correlation_id"] for m in meta} == {"account-acc-1/cycle-1"}
    assert {m["source"] for m in meta} == {"test"}


def test_a_request_id_is_the_correlation_of_every_event() -> None:
    """An HTTP request's id correlates all the events of its inputs."""
    p = planner(request("a", running(1), correlation_id="req-7"))
    [call] = p.decide_pass(p.take(), Projection(), T0).calls
    assert {json.loads(e.metadata)["correlation_id"] for e in call.events} == {"req-7"}


# --- settling a pass ---------------------------------------------------------------------------


def decided_pass(*requests: Request[str]) -> tuple[PassPlanner[str], Any]:
    p = planner(*requests)
    return p, p.decide_pass(p.take(), Projection(), T0)


def test_a_written_call_answers_its_decisions_and_counts_its_events() -> None:
    """Committed: the caller gets its decisions, the metrics the events created."""
    p, pass_ = decided_pass(request("a", running(1)))
    [call] = pass_.calls
    settled = p.settle(pass_, [written(call)])
    [(answered, decisions)] = settled.answers
    assert answered.token == "a"
    assert not decisions[0].duplicate
    assert settled.appended == [("test", len(call.events))]


def test_a_single_input_found_recorded_is_answered_as_a_duplicate() -> None:
    """A redelivery caught by the call's guard: its decision is dropped, nothing is retried."""
    p, pass_ = decided_pass(request("a", running(1)))
    settled = p.settle(pass_, [stored("v2:acc-1:1#0")])
    [(_, [decision])] = settled.answers
    assert decision.duplicate
    assert decision.events == ()
    assert settled.appended == []


def test_a_delivery_with_inputs_recorded_meanwhile_is_decided_again_without_them() -> None:
    """The skipped call's records say which inputs were recorded: they are known on the retry."""
    p, pass_ = decided_pass(request("a", running(1), running(2)))
    settled = p.settle(pass_, [stored("v2:acc-1:1#0")])
    assert tokens(settled.retried) == ["a"]
    assert settled.conflicted == []
    p.release(pass_)
    [again] = p.take()
    assert again.known == {"v2:acc-1:1#0"}
    [decided] = p.decide_pass([again], Projection(), T0).decided
    assert [d.duplicate for d in decided.decisions] == [True, False]


def test_a_version_conflict_is_decided_again_until_the_retries_run_out() -> None:
    """Each conflict requeues the request at the front; the last one fails it."""
    p, pass_ = decided_pass(request("a", running(1)))
    conflict = WrongExpectedVersion("account-acc-1", 0, 1)
    for attempt in range(1, CONFLICT_RETRIES):
        settled = p.settle(pass_, [conflict])
        assert tokens(settled.conflicted) == ["a"]
        assert pass_.decided[0].request.attempt == attempt
        p.release(pass_)
        pass_ = p.decide_pass(p.take(), Projection(), T0)
    settled = p.settle(pass_, [conflict])
    assert settled.retried == []
    [(failed, error)] = settled.failures
    assert (failed.token, error) == ("a", conflict)


def test_an_error_of_one_call_fails_only_its_request() -> None:
    """Outcomes map to requests in order; a call's own error is that caller's answer."""
    p, pass_ = decided_pass(request("a", running(1)), request("b", running(1, "acc-2")))
    first, _ = pass_.calls
    error = StorageUnavailable("disk I/O error (simulated)")
    settled = p.settle(pass_, [written(first), error])
    assert tokens([r for r, _ in settled.answers]) == ["a"]
    assert [(r.token, e) for r, e in settled.failures] == [("b", error)]


def test_a_request_with_nothing_to_write_is_answered_without_an_outcome() -> None:
    """Known duplicates take no call, so the outcomes of the others still line up."""
    known = request("known", running(1))
    known.known.add("v2:acc-1:1#0")
    p, pass_ = decided_pass(known, request("new", running(1, "acc-2")))
    [call] = pass_.calls
    settled = p.settle(pass_, [written(call)])
    assert tokens([r for r, _ in settled.answers]) == ["known", "new"]


@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=3),
        max_size=12,
    ),
    st.sets(st.integers(0, 3)),
)
def test_a_pass_keeps_each_streams_order_and_never_writes_a_busy_stream(
    deliveries: list[list[tuple[int, int]]], busy: set[int]
) -> None:
    """For any queue and any streams in flight: no request of a pass is about a busy stream,
    none repeats an input of an earlier one, a stream's requests are taken in arrival order
    (a later one only with every earlier one), and what is left keeps its order."""
    p = planner()
    if busy:
        busy_with(p, *(running(99, f"acc-{a}") for a in sorted(busy)))
    for i, delivery in enumerate(deliveries):
        unique = {(a, n): running(n, f"acc-{a}") for a, n in delivery}
        p.add(request(str(i), *unique.values()))
    busy_before = p.busy
    queued = p.clear()
    for r in queued:
        p.add(r)
    batch = p.take()
    taken = set(tokens(batch))
    ids: set[str] = set()
    for r in batch:
        assert streams_of([r]).isdisjoint(busy_before)
        assert ids.isdisjoint(i.input_id for i in r.inputs)
        ids |= {i.input_id for i in r.inputs}
    for index, later in enumerate(queued):
        if later.token in taken:
            for earlier in queued[:index]:
                if not streams_of([earlier]).isdisjoint(streams_of([later])):
                    assert earlier.token in taken
    left = [int(t) for t in tokens(p.clear())]
    assert left == sorted(left)
    assert sorted(left + [int(t) for t in tokens(batch)]) == list(range(len(deliveries)))


def streams_of(requests: list[Request[str]]) -> set[str]:
    return {stream_for(i) for r in requests for i in r.inputs}
