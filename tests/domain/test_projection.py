"""The projection: indexes, listings, snapshots and equality with a fresh replay."""

from __future__ import annotations

import pytest

from daemon.projections import Projection


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
    data = Projection().to_snapshot().replace(b'"format":1', b'"format":9')
    with pytest.raises(ValueError, match="format 9"):
        Projection.from_snapshot(data)


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
