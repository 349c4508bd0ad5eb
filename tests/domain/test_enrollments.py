"""Enrolments behave as a plain dict would, whatever the order of waves and re-enrolments."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.domain import enrollments as module
from daemon.domain.enrollments import Enrollment, Enrollments

T0 = datetime(2026, 1, 1, tzinfo=UTC)
waves = st.lists(
    st.tuples(st.lists(st.sampled_from("abcdefgh"), max_size=6), st.integers(0, 3)), max_size=12
)


def _enrollment(wave: int) -> Enrollment:
    return Enrollment(wave=f"w{wave}", policy="notify", enrolled_at=T0)


@pytest.mark.parametrize("flatten_at", [1, 3, 50_000])
@given(
    loaded=st.none() | st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)),
    asked=st.booleans(),
    steps=waves,
)
def test_enrolments_agree_with_a_dict(
    flatten_at: int,
    loaded: dict[str, int] | None,
    asked: bool,
    steps: list[tuple[list[str], int]],
) -> None:
    """Each enrolment answers lookups, size, iteration and what each account had before as a
    dict does, and an earlier value never changes, merged into one layer or not, whether it
    started empty or loaded from a snapshot: groups of accounts per enrolment, or answered an
    account at a time (`asked`)."""
    default, module._FLATTEN_AT = module._FLATTEN_AT, flatten_at
    misses, module._MISSES_KEPT = module._MISSES_KEPT, 2  # forgotten and asked again
    try:
        value, model = Enrollments(), {}
        if loaded is not None:
            made = tuple(_enrollment(w) for w in range(4))
            groups = [(w, [a for a, x in loaded.items() if x == w]) for w in (3, 0, 2, 1, 0)]
            if asked:
                value = Enrollments.from_lookup(loaded.get, made, len(loaded), lambda: groups)
            else:
                value = Enrollments.from_groups(groups, made, absent=set("xyz") - set(loaded))
            model = {a: made[w] for a, w in loaded.items()}
            assert dict(value) == model
            assert dict(value.items()) == model
        history: list[tuple[Enrollments, dict[str, Enrollment]]] = []
        for ids, wave in steps:
            enrollment = _enrollment(wave)
            value, before = value.enroll(ids, enrollment)
            expected_before = []
            for account_id in ids:
                expected_before.append(model.get(account_id))
                model[account_id] = enrollment
            assert before == expected_before
            history.append((value, dict(model)))
        for kept, then in history:
            assert dict(kept) == then
            assert len(kept) == len(then)
            assert sorted(kept) == sorted(then)
            assert all(
                kept.get(a) == then.get(a) and (a in kept) == (a in then) for a in "abcdefghxyz"
            )
            assert set(then.values()) <= set(kept.made)
    finally:
        module._FLATTEN_AT, module._MISSES_KEPT = default, misses
