"""`Enrollments`: which wave each account is enrolled in, as a persistent mapping.

Two layers: a base dict, built once in bulk (a start-up loads a million enrolments from a
snapshot in C-level dict operations) and never changed after, under a persistent map of the
enrolments made since. Enrolling a wave copies nothing but the overlay's changed paths, so it
costs in proportion to the wave, and each state keeps its own value while sharing the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec
from immutables import Map

from .events import UtcDatetime
from .vocabulary import Policy

__all__ = ["Enrollment", "Enrollments"]


class Enrollment(msgspec.Struct, frozen=True, kw_only=True):
    """An account's place in the migration plan."""

    wave: str
    policy: Policy
    enrolled_at: UtcDatetime


_MISSING: Any = object()
_FLATTEN_AT = 50_000  # overlay entries below which it is never merged into the base


class Enrollments(Mapping[str, Enrollment]):
    """Account id -> its enrolment. Immutable: `enroll` returns a new value."""

    __slots__ = ("_base", "_len", "_overlay", "made")

    def __init__(
        self,
        base: Mapping[str, Enrollment] | None = None,
        *,
        _overlay: Map[str, Enrollment] | None = None,
        _len: int | None = None,
        _made: tuple[Enrollment, ...] | None = None,
    ) -> None:
        # The base is owned from here on: a caller's dict is copied unless it is handed over
        # through `from_dict`.
        self._base: Mapping[str, Enrollment] = dict(base) if base is not None else {}
        self._overlay: Map[str, Enrollment] = _overlay if _overlay is not None else Map()
        self._len = len(self._base) if _len is None else _len
        # Every distinct enrolment made, in the order made (a few per wave): a snapshot names
        # an account's enrolment by its index here, which never changes.
        self.made: tuple[Enrollment, ...] = (
            _made if _made is not None else tuple(dict.fromkeys(self._base.values()))
        )

    @classmethod
    def from_dict(cls, base: dict[str, Enrollment], made: tuple[Enrollment, ...]) -> Enrollments:
        """Take `base` as the bottom layer without copying it (the caller must not change it);
        `made` holds every value of `base`, in the order they were made."""
        return cls(None, _len=len(base), _made=made)._taking(base)

    def _taking(self, base: Mapping[str, Enrollment]) -> Enrollments:
        self._base = base
        return self

    def enroll(
        self, account_ids: Iterable[str], enrollment: Enrollment
    ) -> tuple[Enrollments, list[Enrollment | None]]:
        """A new value with each account enrolled as `enrollment`, and what each had before."""
        before: list[Enrollment | None] = []
        added = 0
        with self._overlay.mutate() as overlay:
            for account_id in account_ids:
                old = overlay.get(account_id, _MISSING)
                if old is _MISSING:
                    old = self._base.get(account_id)
                before.append(old)
                added += old is None
                overlay[account_id] = enrollment
            finished = overlay.finish()
        made = self.made if enrollment in self.made else (*self.made, enrollment)
        if len(finished) > max(_FLATTEN_AT, len(self._base)):
            # The overlay costs several times a dict's memory per entry: once it outgrows the
            # base, both become one new base (a copy as large as all enrolments, made each time
            # they double, so enrolling still costs in proportion to the wave on average).
            base = {**self._base, **dict(finished.items())}
            return Enrollments.from_dict(base, made), before
        grown = Enrollments(None, _overlay=finished, _len=self._len + added, _made=made)
        return grown._taking(self._base), before

    def __getitem__(self, account_id: str) -> Enrollment:
        found = self._overlay.get(account_id, _MISSING)
        return self._base[account_id] if found is _MISSING else found

    def get(self, account_id: str, default: Any = None) -> Any:
        found = self._overlay.get(account_id, _MISSING)
        return self._base.get(account_id, default) if found is _MISSING else found

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._overlay or account_id in self._base

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        overlay = self._overlay
        yield from (k for k in self._base if k not in overlay)
        yield from overlay

    def __repr__(self) -> str:
        return f"Enrollments({len(self)} accounts)"
