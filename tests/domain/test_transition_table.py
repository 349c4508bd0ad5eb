"""The transition table: every move decide makes is in it, nothing else moves, README shows it.

Run as a module (`.venv/bin/python -m tests.domain.test_transition_table`) it rewrites README's
table of moves from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.domain import (
    STATES,
    TIMER_PURPOSES,
    TRANSITIONS,
    AccountState,
    ApplicationState,
    Event,
    StateChanged,
    TransitionError,
)
from daemon.domain._builder import Builder
from daemon.domain.transitions import (
    INPUT_KINDS,
    NEXT_STATES,
    TIMER_INPUT_KINDS,
    allows,
    input_kind_of,
    markdown_table,
)
from tests.domain.test_properties import SETTINGS, T0, Run, step

README = Path(__file__).parents[2] / "README.md"
BEGIN = (
    "<!-- moves: drawn from daemon/domain/transitions.py by tests/domain/test_transition_table.py"
    " -->\n"
)
END = "<!-- end of moves -->\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["notify", "restart"]), steps=st.lists(step, max_size=40))
def test_every_recorded_move_is_in_the_table(policy, steps):
    """Whatever the inputs, each state change in the log is a move the table allows for the
    kind of input its record names, from the state the account was in."""
    run = Run(policy)
    for s in steps:
        run.step(s)
    current: dict[str, str] = {}
    records: dict[str, Event] = {}
    for logged in run.h.log:
        input_id, _, index = logged.event_id.rpartition("#")
        event = logged.event
        if index == "0":
            records[input_id] = event
        if isinstance(event, StateChanged):
            on = input_kind_of(records[input_id])
            assert on is not None, records[input_id]
            assert event.from_state == current.get(logged.stream, "dynamic")
            assert allows(event.from_state, event.to_state, on), (event, on)
            current[logged.stream] = event.to_state
    assert records  # every input is recorded, so the log was not empty


def test_a_move_outside_the_table_raises_at_once():
    """decide cannot move an account along a path the table does not list: it raises."""
    b = Builder(AccountState(account_id="a"), T0, SETTINGS, ApplicationState(), "auth")
    with pytest.raises(TransitionError, match="dynamic -> static on auth"):
        b.move("static", T0, "forged")
    assert b.events == []
    first_auth = AccountState(account_id="a", state="first_auth", first_auth_at=T0)
    b = Builder(first_auth, T0, SETTINGS, ApplicationState(), "provider")
    with pytest.raises(TransitionError):
        b.move("second_auth", T0, "a provider fact is not a second step")
    b.move("stopped_waiting", T0, "stop observed")
    assert b.state.state == "stopped_waiting"


def test_a_state_change_cannot_be_emitted_past_the_table():
    """decide cannot record a move without the table's check by emitting the event itself."""
    b = Builder(AccountState(account_id="a"), T0, SETTINGS, ApplicationState(), "auth")
    forged = StateChanged(
        account_id="a",
        occurred_at=T0,
        from_state="dynamic",
        to_state="static",
        at=T0,
        reason="forged",
        cycle=0,
    )
    with pytest.raises(TransitionError, match=r"Builder\.move"):
        b.emit(forged)
    assert b.events == []
    assert b.state.state == "dynamic"


def test_an_input_that_moves_nothing_cannot_move():
    """A timer that is not pending (its firing only recorded) may not move the account."""
    b = Builder(
        AccountState(account_id="a", state="first_auth"), T0, SETTINGS, ApplicationState(), None
    )
    with pytest.raises(TransitionError, match="moves nothing"):
        b.move("stalled", T0, "no such timer")


def test_a_missing_cycle_time_is_a_clear_error():
    """A migrating state without its first auth time is reported as the bug it is."""
    b = Builder(
        AccountState(account_id="a", state="first_auth"), T0, SETTINGS, ApplicationState(), "auth"
    )
    with pytest.raises(TransitionError, match="first_auth_at is not set in state first_auth"):
        b.first_auth_at  # noqa: B018 — the property read is the test


def test_the_table_names_every_state_and_only_known_ones():
    """Each state has a row, and every move leads to a state that has one."""
    assert tuple(TRANSITIONS) == STATES
    assert all(to in STATES for targets in NEXT_STATES.values() for to in targets)
    assert all(on in INPUT_KINDS for row in TRANSITIONS.values() for on in row)
    assert set(TIMER_INPUT_KINDS) == set(TIMER_PURPOSES)
    assert not allows("dynamic", "static")
    assert not allows("weird", "static")
    assert not allows("dynamic", "weird")


def _readme_moves(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def test_readme_shows_the_table_of_the_code():
    """README's table of moves is exactly the code's."""
    text = README.read_text()
    assert BEGIN in text
    assert END in text
    assert _readme_moves(text) == markdown_table(), (
        "README's table of moves differs from daemon/domain/transitions.py: run "
        "`.venv/bin/python -m tests.domain.test_transition_table` to rewrite it"
    )


def test_readme_state_table_lists_every_state():
    """README's per-account table explains each state of the code, and no other."""
    section = README.read_text().split("Per account:", 1)[1].split("\n\n", 2)[1]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert tuple(documented) == STATES


if __name__ == "__main__":
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(head + BEGIN + markdown_table() + END + rest.split(END, 1)[1])
