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


@pytest.mark.parametrize("flatten_at", [1, 3, 50_000])
@given(steps=waves)
def test_enrolments_agree_with_a_dict(flatten_at: int, steps: list[tuple[list[str], int]]) -> None:
    """Each enrolment answers lookups, size, iteration and what each account had before as a
    dict does, and an earlier value never changes, merged into one layer or not."""
    default, module._FLATTEN_AT = module._FLATTEN_AT, flatten_at
    try:
        value, model = Enrollments(), {}
        history: list[tuple[Enrollments, dict[str, Enrollment]]] = []
        for ids, wave in steps:
            enrollment = Enrollment(wave=f"w{wave}", policy="notify", enrolled_at=T0)
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
                kept.get(a) == then.get(a) and (a in kept) == (a in then) for a in "abcdefghz"
            )
            assert set(then.values()) <= set(kept.made)
    finally:
        module._FLATTEN_AT = default
