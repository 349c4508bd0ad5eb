"""The projection: indexes, listings, snapshots and equality with a fresh replay."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.domain import (
    STATES,
    AccountsEnrolled,
    ApplicationState,
    Enroll,
    TimerCancelled,
    TimerScheduled,
)
from daemon.domain.state import encode_hook
from daemon.runtime.projections import (
    HISTORY_BUCKETS,
    SNAPSHOT_FORMAT,
    FunnelHistory,
    Projection,
    _duration_bucket,
    _quantile,
)


def build(flow) -> Projection:
    projection = Projection()
    for logged in flow.h.log:
        projection.apply(logged.position, logged.event)
    return projection


def busy_flow(flow):
    flow.setup("a", "b", "c", "d")
    flow.auth(1, account="a")
    flow.hook("account.stopped", 2, account="a")
    flow.auth(1, account="b")
    flow.auth(1, account="c")
    flow.operator("exclude", account="d")
    return flow


def test_projection_states_match_the_harness(flow):
    """Folding the log gives every account the state the decisions saw."""
    projection = build(busy_flow(flow))
    for account_id, state in flow.h.accounts.items():
        assert projection.account(account_id) == state
    assert projection.position == len(flow.h.log)


def test_funnel_and_state_index(flow):
    """Accounts are counted per state, and enrolled-but-unseen accounts count as dynamic."""
    flow.setup("z")
    projection = build(busy_flow(flow))
    funnel = projection.funnel()
    assert funnel["first_auth"] == 2
    assert funnel["stopped_waiting"] == 1
    assert funnel["excluded"] == 1
    assert funnel["dynamic"] == 1  # "z", only enrolled
    assert projection.ids_in("first_auth") == {"b", "c"}
    assert projection.waves() == {"w1": funnel}


def test_pending_timers_and_effects_rebuild_the_drivers(flow):
    """Pending timers come out earliest first, pending effects with their keys."""
    busy_flow(flow)
    flow.fire("second_step", account="a")
    projection = build(flow)
    timers = projection.pending_timers()
    assert [t[0] for t in timers] == sorted(t[0] for t in timers)
    assert {(a, t) for _, a, t in timers} == {
        ("a", "a:reminder:1:1"),
        ("b", "b:stop_grace:1"),
        ("c", "c:stop_grace:1"),
    }
    assert [(a, k) for a, k, _ in projection.pending_effects()] == [("a", "a:reauth:1:0")]


def test_paged_listing_with_cursor(flow):
    """Listing by state pages through ids in order and ends with no cursor."""
    projection = build(busy_flow(flow))
    page = projection.list_accounts(limit=2)
    assert [s.account_id for s in page.accounts] == ["a", "b"]
    page2 = projection.list_accounts(after=page.next_cursor, limit=2)
    assert [s.account_id for s in page2.accounts] == ["c", "d"]
    assert page2.next_cursor is None
    first_auth = projection.list_accounts(state="first_auth", wave="w1")
    assert [s.account_id for s in first_auth.accounts] == ["b", "c"]
    assert projection.list_accounts(wave="other").accounts == []


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.text("abc0123", min_size=1, max_size=4), max_size=30),
    limit=st.integers(1, 7),
)
def test_paging_visits_every_account_once_in_order(ids: set[str], limit: int) -> None:
    """Following the cursor from the first page to the last lists each account once, by id."""
    projection = Projection()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    projection.apply(1, AccountsEnrolled(occurred_at=at, account_ids=tuple(ids), wave="w",
                                         policy="notify", actor="ops", reason="test"))  # fmt: skip
    seen: list[str] = []
    cursor = None
    for _ in range(len(ids) + 1):
        page = projection.list_accounts(after=cursor, limit=limit)
        assert len(page.accounts) <= limit
        seen += [a.account_id for a in page.accounts]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert seen == sorted(ids)


def test_snapshot_round_trip_and_tail_equal_a_full_replay(flow):
    """Snapshot + tail gives the same projection as replaying everything."""
    busy_flow(flow)
    half = len(flow.h.log) // 2
    partial = Projection()
    for logged in flow.h.log[:half]:
        partial.apply(logged.position, logged.event)
    restored = Projection.from_snapshot(partial.to_snapshot())
    assert restored == partial
    for logged in flow.h.log[half - 2 :]:  # an overlap is skipped
        restored.apply(logged.position, logged.event)
    full = build(flow)
    assert restored == full
    assert restored.digest() == full.digest()
    assert restored.funnel() == full.funnel()


def test_projections_that_differ_are_not_equal(flow):
    """Equality really compares content: one more event makes them differ."""
    busy_flow(flow)
    shorter = Projection()
    for logged in flow.h.log[:-1]:
        shorter.apply(logged.position, logged.event)
    assert shorter != build(flow)


def test_snapshot_of_another_format_is_refused():
    """A snapshot written by another format version is not loaded silently."""
    header = msgspec.msgpack.encode(
        [9, 0, "", ApplicationState(), FunnelHistory()], enc_hook=encode_hook
    )
    with pytest.raises(ValueError, match="format 9"):
        Projection.from_parts(header, [])
    with pytest.raises(ValueError, match=f"format {SNAPSHOT_FORMAT}"):
        Projection.from_snapshot(b'{"format": 1, "accounts": []}')  # the old JSON snapshots


def test_ip_lists_are_kept(flow):
    """The application projection holds the latest static and dynamic IP lists."""
    from daemon.domain import IpListObserved

    for i, addresses in enumerate((("1.1.1.1",), ("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"))):
        events = flow.h.handle(
            IpListObserved(
                input_id=f"ip-{i}", kind="dynamic", addresses=addresses, observed_at=flow.at(i)
            ),
            flow.now,
        )
    assert type(events[0]).__name__ == "IpListUnchanged"
    projection = build(flow)
    assert projection.application.ip_lists["dynamic"].addresses == ("1.1.1.1", "2.2.2.2")


# --- derived indexes: equality, consistency, the due-time index --------------------------------

T0 = datetime(2025, 3, 1, tzinfo=UTC)
TIMER_ACCOUNTS = ("a", "b", "c", "d", "e")
timer_op = st.tuples(
    st.sampled_from(["schedule", "cancel"]),
    st.sampled_from(TIMER_ACCOUNTS),
    st.integers(0, 3),  # timer number within the account: reschedules and cancels collide
    st.integers(0, 6),  # due minute: few values, so due times often tie across accounts
)


def timer_events(ops) -> list[tuple[int, object]]:
    """Positioned timer events for `ops` (a cancel of a timer not pending is left out)."""
    pending: set[tuple[str, int]] = set()
    events: list[tuple[int, object]] = []
    for kind, account_id, number, minute in ops:
        timer_id = f"{account_id}:t:{number}"
        if kind == "schedule":
            event: object = TimerScheduled(
                account_id=account_id,
                occurred_at=T0,
                timer_id=timer_id,
                purpose="second_step",
                due_at=T0 + timedelta(minutes=minute),
            )
            pending.add((account_id, number))
        elif (account_id, number) in pending:
            event = TimerCancelled(
                account_id=account_id, occurred_at=T0, timer_id=timer_id, reason="test"
            )
            pending.discard((account_id, number))
        else:
            continue
        events.append((len(events) + 1, event))
    return events


def brute_force_timers(projection: Projection) -> list[tuple[datetime, str, str]]:
    return sorted(
        (due, state.account_id, timer_id)
        for state in projection
        for timer_id, due in state.pending_timers.items()
    )


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(timer_op, max_size=150), cut=st.integers(0, 150))
def test_due_soonest_equals_a_full_sort(ops, cut):
    """The earliest timers by due time are those a full sort finds, at every step and limit."""
    events = timer_events(ops)
    projection = Projection()
    for position, event in events:
        projection.apply(position, event)  # type: ignore[arg-type]
        if position == cut:  # once, mid-run: the heap agrees with a full sort for every limit
            expected = brute_force_timers(projection)
            for limit in range(len(expected) + 2):
                assert projection.due_soonest(limit) == expected[:limit]
    expected = brute_force_timers(projection)
    assert projection.pending_timers() == expected
    assert projection.due_soonest(3) == expected[:3]
    assert projection.check_indexes() == []
    restored = Projection.from_snapshot(projection.to_snapshot())
    assert restored == projection
    assert restored.due_soonest(None) == expected


def test_due_index_stays_small_under_churn():
    """Rescheduling one timer many times keeps the due-time index bounded and correct."""
    ops = [("schedule", "a", 0, minute) for minute in [5, 1, 6, 2] * 100]
    ops += [("schedule", "b", 1, 3)]
    projection = Projection()
    for position, event in timer_events(ops):
        projection.apply(position, event)  # type: ignore[arg-type]
    assert [(a, t) for _, a, t in projection.due_soonest(5)] == [("a", "a:t:0"), ("b", "b:t:1")]
    assert len(projection._due_heap) <= 2 * 2 + 64
    assert projection.check_indexes() == []


def test_equality_sees_a_drifted_state_index(flow):
    """A projection whose funnel drifted from its accounts no longer equals a fresh replay."""
    projection = build(busy_flow(flow))
    fresh = build(flow)
    assert projection == fresh
    assert projection.check_indexes() == []
    projection._by_state["stalled"].add("a")  # the drift a wrong `_put` would cause
    assert projection != fresh
    assert projection.digest() != fresh.digest()
    assert projection.funnel() != fresh.funnel()
    assert any("stalled" in problem for problem in projection.check_indexes())


def test_equality_sees_a_lost_timer_in_the_due_index(flow):
    """A pending timer missing from the due-time index makes the projection differ."""
    projection = build(busy_flow(flow))
    fresh = build(flow)
    account_id = next(a for a in projection._earliest)
    del projection._earliest[account_id]
    assert projection != fresh
    assert projection.digest() != fresh.digest()
    assert projection.check_indexes() != []
    assert len(projection.due_soonest(None)) < len(fresh.pending_timers())


def test_equality_sees_a_drifted_effect_index(flow):
    """An account left out of the pending-effects index makes the projection differ."""
    busy_flow(flow)
    flow.fire("second_step", account="a")
    projection, fresh = build(flow), build(flow)
    projection._with_effects.clear()
    assert projection != fresh
    assert projection.pending_effects() == []
    assert any("effects" in problem for problem in projection.check_indexes())


# --- the aggregates kept for the status page and the summary -----------------------------------


def test_wave_progress_counts_states_and_times_to_static(flow):
    """Per wave: accounts per state, and first auth → static median and 90th percentile."""
    flow.setup("a", "b", "c")
    for account, minutes in (("a", 36), ("b", 50)):
        flow.auth(1, account=account)
        flow.hook("account.stopped", 2, account=account)
        flow.fire("second_step", account=account)
        flow.auth(minutes - 1, account=account)
        flow.hook("account.running", minutes, account=account)
        assert flow.state(account).state == "static"
    projection = build(flow)
    [(wave, progress)] = projection.wave_progress().items()
    assert wave == "w1"
    assert (progress.enrolled, progress.waiting) == (3, 0)
    assert (progress.states["static"], progress.states["dynamic"]) == (2, 1)
    # Nearest rank of [35 min, 49 min]: the median is the first, the 90th percentile the second.
    assert progress.static_seconds_median == pytest.approx(35 * 60, rel=0.025)
    assert progress.static_seconds_p90 == pytest.approx(49 * 60, rel=0.025)
    assert projection.check_indexes() == []


def test_re_enrolment_moves_an_account_to_its_new_wave(flow):
    """An account enrolled again in another wave counts there, and only there."""
    flow.setup("a", "b")
    flow.h.handle(
        Enroll(input_id="again", occurred_at=T0, actor="op", account_ids=("b",), wave="w2"),
        T0,
    )
    projection = build(flow)
    assert {w: p.enrolled for w, p in projection.wave_progress().items()} == {"w1": 1, "w2": 1}
    assert projection.waves() == {w: p.states for w, p in projection.wave_progress().items()}
    assert projection.check_indexes() == []
    shown = projection.with_enrollment(projection.account("b"))  # type: ignore[arg-type]
    assert (shown.wave, shown.policy) == ("w2", "notify")


def test_flag_timer_and_retry_counts_follow_the_accounts(flow):
    """Flags, pending timers per purpose and failing effects are counted as accounts change."""
    flow.to_second_step_due()
    projection = build(flow)
    assert projection.timer_counts()["reminder"] == 1
    [key] = flow.state().pending_effects
    flow.outcome(key, "failed_retrying", next_attempt_at=flow.now + timedelta(minutes=1))
    projection = build(flow)
    assert projection.effects_retrying == 1
    flow.outcome(key, "gave_up", attempt=2)
    projection = build(flow)
    assert projection.effects_retrying == 0
    assert projection.flag_counts()["effect_gave_up"] == 1
    assert projection.check_indexes() == []


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=-5, max_value=4000), st.integers(0, 50)), max_size=300
    )
)
def test_funnel_history_stays_bounded_and_ends_on_the_latest_counts(steps):
    """However long the run, the history keeps at most HISTORY_BUCKETS samples, its times
    never go back, and its last sample is the latest funnel recorded."""
    history = FunnelHistory()
    at = T0
    for seconds, n in steps:
        at += timedelta(seconds=seconds)
        counts = [n] * len(STATES)
        history.record(at, counts)
        assert len(history.counts) <= HISTORY_BUCKETS
        assert history.counts[-1] == counts
        times = history.times()
        assert times == sorted(times)
        assert len(times) == len(history.counts)


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(st.floats(min_value=0.001, max_value=1e7), min_size=1, max_size=60),
    q=st.sampled_from([0.5, 0.9]),
)
def test_time_to_static_quantiles_are_within_two_and_a_half_percent(durations, q):
    """The median and 90th percentile read from the histogram are within 2.5 % of the exact
    nearest-rank ones, for any times from a millisecond to months."""
    histogram: dict[int, int] = {}
    for d in durations:
        bucket = _duration_bucket(d)
        histogram[bucket] = histogram.get(bucket, 0) + 1
    exact = sorted(durations)[max(math.ceil(q * len(durations)), 1) - 1]
    estimate = _quantile(histogram, q)
    assert estimate == pytest.approx(exact, rel=0.025)


def test_snapshot_keeps_the_funnel_history(flow):
    """The funnel's history survives a snapshot (it is in the snapshot's header)."""
    projection = build(busy_flow(flow))
    assert projection.history.counts
    restored = Projection.from_snapshot(projection.to_snapshot())
    assert restored.history == projection.history
    assert restored == projection
