"""`SnapshotReader`: one read transaction over a keyed snapshot (see `save_snapshot_parts`).

A loader of a large snapshot wants its parts in bulk, built by C-level dict and list
operations rather than a Python loop per part: the blobs by key, the keys grouped by label,
and the times by key, the last two read from their indexes without touching a blob. A reader
that needs only some blobs (a one-off command) fetches each by key instead. Everything is
read in the same transaction, so it all agrees with the header.

`SnapshotReader` is the interface; `SqliteSnapshotReader` reads an SQLite log in an open read
transaction, `MemorySnapshotReader` serves parts read at once (a backend without synchronous
reads, eventstore/postgres).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from operator import itemgetter
from types import TracebackType
from typing import Self

from .errors import translate

__all__ = ["MemorySnapshotReader", "SnapshotReader", "SqliteSnapshotReader"]

_first = itemgetter(0)


class SnapshotReader:
    """The snapshot `name` as of one moment: its `position`, `header` and parts. Blocking
    calls: run the bulk ones in a worker thread. Close it (or use `with`)."""

    position: int
    header: bytes

    def blobs(self) -> dict[str, bytes]:
        """Every part's blob by key."""
        raise NotImplementedError

    def labels(self) -> dict[str, list[str]]:
        """The keys of the parts by label, each list in key order."""
        raise NotImplementedError

    def times(self) -> dict[str, str]:
        """The time of each part that has one, by key."""
        raise NotImplementedError

    def blob(self, key: str) -> bytes | None:
        """One part's blob (None if the snapshot has no part `key`)."""
        raise NotImplementedError

    def label_counts(self) -> dict[str, int]:
        """How many parts carry each label, in label order (no key read)."""
        return {label: len(keys) for label, keys in self.labels().items()}

    def keys_labelled(self, label: str) -> list[str]:
        """The keys of the parts labelled `label`, in key order."""
        return self.labels().get(label, [])

    def label(self, key: str) -> str | None:
        """One part's label (None if the snapshot has no part `key`)."""
        return next((lb for lb, keys in self.labels().items() if key in keys), None)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemorySnapshotReader(SnapshotReader):
    """A snapshot whose parts, `(key, blob, label, at)`, were all read at once (in one
    transaction, with the header): every call is served from memory."""

    def __init__(
        self, position: int, header: bytes, parts: Iterable[tuple[str, bytes, str, str | None]]
    ) -> None:
        self.position = position
        self.header = header
        rows = sorted(parts, key=_first)
        self._blobs = {key: blob for key, blob, _, _ in rows}
        self._labels: dict[str, list[str]] = {}  # in label order, as SQLite's reader gives them
        for key, _, label, _ in sorted(rows, key=itemgetter(2, 0)):
            self._labels.setdefault(label, []).append(key)
        self._times = {key: at for key, _, _, at in rows if at is not None}
        self._label_of = {key: label for key, _, label, _ in rows}

    def blobs(self) -> dict[str, bytes]:
        return dict(self._blobs)

    def labels(self) -> dict[str, list[str]]:
        return {label: list(keys) for label, keys in self._labels.items()}

    def times(self) -> dict[str, str]:
        return dict(self._times)

    def blob(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    def label(self, key: str) -> str | None:
        return self._label_of.get(key)

    def close(self) -> None:
        self._blobs, self._labels, self._times, self._label_of = {}, {}, {}, {}


class SqliteSnapshotReader(SnapshotReader):
    """The snapshot `name` of an SQLite log, read in one read transaction; None from `open`
    when there is none."""

    def __init__(self, conn: sqlite3.Connection, name: str, position: int, header: bytes) -> None:
        self._conn = conn
        self._name = name
        self.position = position
        self.header = header
        self._labelled: bool | None = None  # whether the parts have labels, once asked

    @classmethod
    def open(cls, uri: str, name: str, busy_timeout: float) -> SqliteSnapshotReader | None:
        try:
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=busy_timeout, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        try:
            conn.execute("BEGIN")
            row = conn.execute(
                "SELECT position, blob FROM snapshots WHERE name = ?", (name,)
            ).fetchone()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        if row is None:
            conn.close()
            return None
        return cls(conn, name, int(row[0]), bytes(row[1]))

    def blobs(self) -> dict[str, bytes]:
        """Every part's blob by key."""
        if not self._has("snapshot_parts"):
            return {}
        return dict(self._rows("SELECT key, blob FROM snapshot_parts WHERE name = ?"))

    def labels(self) -> dict[str, list[str]]:
        """The keys of the parts by label, each list in key order."""
        if not self._has("snapshot_parts"):
            return {}
        if not self._has_labels():  # written before parts had labels: all under ""
            return {"": list(map(_first, self._rows(_KEYS)))} if self._any() else {}
        # One query per label, each reading its keys off the label index and joining them in
        # SQLite: one string per label, split in C, costs half of a row (a tuple) per key.
        labels = sorted(
            map(_first, self._rows("SELECT DISTINCT label FROM snapshot_parts WHERE name = ?"))
        )
        return {label: self._keys_labelled(label) for label in labels}

    def label_counts(self) -> dict[str, int]:
        if not self._has("snapshot_parts"):
            return {}
        if not self._has_labels():
            return super().label_counts()
        return dict(self._rows(_LABEL_COUNTS))

    def keys_labelled(self, label: str) -> list[str]:
        if not self._has("snapshot_parts") or not self._has_labels():
            return super().keys_labelled(label)
        return self._keys_labelled(label)

    def label(self, key: str) -> str | None:
        if self._labelled is None:  # asked once: a loader asks this for many keys
            self._labelled = self._has("snapshot_parts") and self._has_labels()
        if not self._labelled:  # every part of an unlabelled snapshot is under ""
            return None if self.blob(key) is None else ""
        found = next(self._rows(_LABEL_OF, key), None)
        return None if found is None else str(found[0])

    def _keys_labelled(self, label: str) -> list[str]:
        joined, count = next(self._rows(_JOINED_KEYS, label))
        keys: list[str] = joined.split(_SEPARATOR) if count else []
        if len(keys) != count:  # a key holding the separator: read them a row each
            keys = list(map(_first, self._rows(_KEYS + " AND label = ? ORDER BY key", label)))
        return keys

    def times(self) -> dict[str, str]:
        """The time of each part that has one, by key."""
        if not self._has("snapshot_parts") or not self._has_labels():
            return {}
        return dict(
            self._rows("SELECT key, at FROM snapshot_parts WHERE name = ? AND at IS NOT NULL")
        )

    def blob(self, key: str) -> bytes | None:
        """One part's blob (None if the snapshot has no part `key`)."""
        if not self._has("snapshot_parts"):
            return None
        row = self._rows("SELECT blob FROM snapshot_parts WHERE name = ? AND key = ?", key)
        found = next(row, None)
        return None if found is None else bytes(found[0])

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, *more: object) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, (self._name, *more))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _any(self) -> bool:
        return next(self._rows(_KEYS + " LIMIT 1"), None) is not None

    def _has(self, table: str) -> bool:
        # A log of an older schema opened read-only (not migrated) may lack the table.
        return (
            self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            is not None
        )

    def _has_labels(self) -> bool:
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(snapshot_parts)")}
        return "label" in columns


_KEYS = "SELECT key FROM snapshot_parts WHERE name = ?"
_LABEL_COUNTS = (
    "SELECT label, count(*) FROM snapshot_parts WHERE name = ? GROUP BY label ORDER BY label"
)
_LABEL_OF = "SELECT label FROM snapshot_parts WHERE name = ? AND key = ?"
_SEPARATOR = "\x1f"  # the unit separator: not a character an account id or key is made of
_JOINED_KEYS = (
    "SELECT group_concat(key, char(31)), count(*) FROM"
    " (SELECT key FROM snapshot_parts WHERE name = ? AND label = ? ORDER BY key)"
)
