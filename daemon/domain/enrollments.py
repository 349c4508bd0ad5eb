"""`Enrollments`: which wave each account is enrolled in, as a persistent mapping.

Two layers: a base dict, built once in bulk (a start-up loads a million enrolments from a
snapshot in C-level dict operations) and never changed after, under a persistent map of the
enrolments made since. Enrolling a wave copies nothing but the overlay's changed paths, so it
costs in proportion to the wave, and each state keeps its own value while sharing the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
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
_MISSES_KEPT = 65_536  # ids a loaded layer remembers not having


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

    @classmethod
    def from_groups(
        cls,
        groups: Iterable[tuple[int, Iterable[str]]],
        made: tuple[Enrollment, ...],
        *,
        absent: Iterable[str] = (),
    ) -> Enrollments:
        """The enrolments given as groups of account ids, each with the index in `made` of
        their enrolment (as a snapshot stores them); an account is in one group at most.
        `absent`: accounts known to have none (looked up without asking every group)."""
        sets: dict[int, set[str]] = {}
        for index, account_ids in groups:
            sets.setdefault(index, set()).update(account_ids)
        # The latest enrolments first: their accounts are the ones migrating, so looked up most.
        latest_first = sorted(sets.items(), reverse=True)
        base = _Grouped([(made[index], ids) for index, ids in latest_first], set(absent))
        return cls(None, _len=len(base), _made=made)._taking(base)

    @classmethod
    def from_lookup(
        cls,
        lookup: Callable[[str], int | None],
        made: tuple[Enrollment, ...],
        size: int,
        groups: Callable[[], Iterable[tuple[int, Iterable[str]]]],
    ) -> Enrollments:
        """`size` enrolments answered an account at a time by `lookup` (the index in `made` of
        its enrolment, None for none), as a snapshot still open can; `groups()` gives them all
        (as for `from_groups`), read only if every enrolment is asked for."""
        base = _Looked(lookup, made, size, groups)
        return cls(None, _len=size, _made=made)._taking(base)

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
            base = dict(self._base.items())
            base.update(finished.items())
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


class _Remembered(Mapping[str, Enrollment]):
    """A base layer that finds an account's enrolment one way or another (`_find`) and
    remembers what it found, and the ids it did not find (bounded: unknown ids are anyone's to
    send). Right for good: the layer never changes."""

    __slots__ = ("_found", "_missed", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._found: dict[str, Enrollment] = {}
        self._missed: set[str] = set()

    def _find(self, account_id: str) -> Enrollment | None:
        raise NotImplementedError

    def get(self, account_id: str, default: Any = None) -> Any:
        found = self._found.get(account_id)
        if found is None:
            if account_id in self._missed:
                return default
            found = self._find(account_id)
            if found is None:
                if len(self._missed) >= _MISSES_KEPT:
                    self._missed.clear()
                self._missed.add(account_id)
                return default
            self._found[account_id] = found
        return found

    def __getitem__(self, account_id: str) -> Enrollment:
        found = self.get(account_id, _MISSING)
        if found is _MISSING:
            raise KeyError(account_id)
        return found

    def __contains__(self, account_id: object) -> bool:
        return isinstance(account_id, str) and self.get(account_id) is not None

    def __len__(self) -> int:
        return self._size


class _Grouped(_Remembered):
    """A base layer kept as one set of account ids per enrolment: a million ids fill sets
    several times faster than a dict (a start-up's cost), and a lookup asks each set in turn
    (one per distinct enrolment, a few per wave), the accounts known to have none first."""

    __slots__ = ("_absent", "_groups")

    def __init__(self, groups: list[tuple[Enrollment, set[str]]], absent: set[str]) -> None:
        super().__init__(sum(len(ids) for _, ids in groups))
        self._groups = groups
        self._absent = absent

    def _find(self, account_id: str) -> Enrollment | None:
        if account_id in self._absent:
            return None
        return next((e for e, ids in self._groups if account_id in ids), None)

    def __iter__(self) -> Iterator[str]:
        for _, ids in self._groups:
            yield from ids

    def items(self) -> Iterator[tuple[str, Enrollment]]:  # type: ignore[override]
        for enrollment, ids in self._groups:
            yield from zip(ids, itertools.repeat(enrollment))


class _Looked(_Remembered):
    """A base layer asked an account at a time (`lookup`: the index in `made` of its
    enrolment); read whole (`groups`) only when iterated."""

    __slots__ = ("_groups", "_lookup", "_made", "_whole")

    def __init__(
        self,
        lookup: Callable[[str], int | None],
        made: tuple[Enrollment, ...],
        size: int,
        groups: Callable[[], Iterable[tuple[int, Iterable[str]]]],
    ) -> None:
        super().__init__(size)
        self._lookup, self._made, self._groups = lookup, made, groups
        self._whole: Mapping[str, Enrollment] | None = None

    def _find(self, account_id: str) -> Enrollment | None:
        index = self._lookup(account_id)
        return None if index is None else self._made[index]

    def _all(self) -> Mapping[str, Enrollment]:
        if self._whole is None:
            self._whole = Enrollments.from_groups(self._groups(), self._made)._base
        return self._whole

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def items(self) -> Iterator[tuple[str, Enrollment]]:  # type: ignore[override]
        return iter(self._all().items())
