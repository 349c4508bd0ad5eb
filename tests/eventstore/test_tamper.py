"""Tampering through plain sqlite3 is refused by triggers or named by verify() with its position."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from eventstore import AppendCall, EventStore, NewEvent
from eventstore.chain import canonical_row, key_fingerprint, row_hash
from eventstore.connections import connect_readonly
from eventstore.schema import MIGRATIONS
from eventstore.verify import verify_log

pytestmark = pytest.mark.anyio
KEY = b"auditor-key"
N = 10


@pytest.fixture
async def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.db"
    async with await EventStore.open(path) as store:
        for i in range(N):
            await store.append([NewEvent(f"s{i % 3}", "T", b'{"n": %d}' % i)])
    return path


def tamper(path: Path, *statements: str, params: tuple = ()) -> None:
    """Drop the guard triggers, run the statements, put the triggers back (a careful attacker)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_refuse_update")
        conn.execute("DROP TRIGGER IF EXISTS events_refuse_delete")
        for sql in statements:
            conn.execute(sql, params if "?" in sql else ())
        for stmt in MIGRATIONS[1].split(";"):
            if "CREATE TRIGGER" in stmt:
                conn.execute(stmt + "; END")
    finally:
        conn.close()


def rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT position, stream, version, type, schema, data, metadata, event_id,"
            " recorded_at, prev_hash, hash FROM events ORDER BY position"
        ).fetchall()
    finally:
        conn.close()


def recompute_from(path: Path, start: int) -> None:
    """Rewrite every hash from `start` on so the stored chain is self-consistent again."""
    all_rows = rows(path)
    prev = all_rows[start - 2][10] if start > 1 else "0" * 64
    updates = []
    for r in all_rows[start - 1 :]:
        h = row_hash(
            prev, canonical_row(r[1], r[2], r[3], r[4], r[7], r[8], r[5].encode(), r[6].encode())
        )
        updates.append((prev, h, r[0]))
        prev = h
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_refuse_update")
        conn.executemany("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?", updates)
    finally:
        conn.close()
    tamper(path)  # puts the trigger back


async def verify(path: Path, key: bytes | None = KEY):
    async with await EventStore.open(path, create=False) as store:
        return await store.verify(key)


async def test_triggers_refuse_update_and_delete(log: Path) -> None:
    """UPDATE and DELETE on events are refused by the database itself."""
    conn = sqlite3.connect(log)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET data = '{}' WHERE position = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events WHERE position = 1")
    finally:
        conn.close()
    assert (await verify(log)).ok


async def test_dropped_triggers_are_reported(log: Path) -> None:
    """A log whose guard triggers were dropped fails verify() with triggers_missing."""
    conn = sqlite3.connect(log)
    conn.execute("DROP TRIGGER IF EXISTS events_refuse_delete")
    conn.close()
    report = await verify(log)
    assert not report.ok
    assert [(d.position, d.kind) for d in report.damage] == [(0, "triggers_missing")]


async def test_edited_row(log: Path) -> None:
    """Changing one row's data is reported as edited at that position, and only that."""
    tamper(log, "UPDATE events SET data = '{\"n\": 999}' WHERE position = 5")
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "edited")]
    assert report.events_checked == N


async def test_deleted_row_leaves_a_gap(log: Path) -> None:
    """Deleting a row is reported as missing at its position."""
    tamper(log, "DELETE FROM events WHERE position = 6")
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(6, "missing")]


async def test_an_edit_right_after_a_gap_is_reported_too(log: Path) -> None:
    """A deleted row does not hide an edit of the row after it: both are reported."""
    tamper(
        log,
        "DELETE FROM events WHERE position = 5",
        "UPDATE events SET data = '{\"n\": 999}' WHERE position = 6",
    )
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "missing"), (6, "edited")]


async def test_deleted_and_renumbered(log: Path) -> None:
    """Deleting a row and renumbering the rest is reported as missing at that position."""
    tamper(
        log,
        "DELETE FROM events WHERE position = 4",
        "UPDATE events SET position = position - 1 WHERE position > 4",
    )
    report = await verify(log)
    assert report.damage[0].position == 4
    assert report.damage[0].kind == "missing"
    assert len(report.damage) == 1


# Make room at position 5 by moving every later row up by one.
_SHIFT_UP_FROM_5 = (
    "UPDATE events SET position = position + 1000 WHERE position >= 5",
    "UPDATE events SET position = position - 999 WHERE position >= 1000",
)


_INSERT = (
    "INSERT INTO events (position, stream, version, type, schema, data, metadata, event_id,"
    " recorded_at, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def test_inserted_row_with_bogus_hash(log: Path) -> None:
    """A row slipped in between two others is reported as inserted at its position."""
    before = rows(log)[3]
    forged = (5, "intruder", 1, "T", 1, "{}", "{}", "forged", before[8], before[10], "f" * 64)
    tamper(log, *_SHIFT_UP_FROM_5, _INSERT, params=forged)
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "inserted")]


async def test_inserted_row_with_consistent_hash(log: Path) -> None:
    """A forged row with a correctly computed hash is still reported as inserted."""
    before = rows(log)[3]
    canon = canonical_row("intruder", 1, "T", 1, "forged", before[8], b"{}", b"{}")
    forged = (
        5,
        "intruder",
        1,
        "T",
        1,
        "{}",
        "{}",
        "forged",
        before[8],
        before[10],
        row_hash(before[10], canon),
    )
    tamper(log, *_SHIFT_UP_FROM_5, _INSERT, params=forged)
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "inserted")]


async def test_swapped_rows(log: Path) -> None:
    """Two rows swapped in place are reported as reordered at the first of them."""
    tamper(
        log,
        "UPDATE events SET position = -1 WHERE position = 4",
        "UPDATE events SET position = 4 WHERE position = 5",
        "UPDATE events SET position = 5 WHERE position = -1",
    )
    report = await verify(log)
    assert report.damage[0].position == 4
    assert report.damage[0].kind == "reordered"
    assert len(report.damage) == 1


async def test_rows_swapped_far_apart(log: Path) -> None:
    """Swapping two rows that are not neighbours is one finding, at the first of them."""
    tamper(
        log,
        "UPDATE events SET position = -1 WHERE position = 4",
        "UPDATE events SET position = 4 WHERE position = 7",
        "UPDATE events SET position = 7 WHERE position = -1",
    )
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(4, "reordered")]


async def test_edited_hash_is_one_finding(log: Path) -> None:
    """Editing a row's stored hash is reported as edited there, not also at the next row."""
    tamper(log, "UPDATE events SET hash = ? WHERE position = 5", params=("f" * 64,))
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "edited")]


async def test_rewritten_row_chained_onto_an_earlier_one(log: Path) -> None:
    """A row re-chained onto an earlier row, its own hash recomputed, is a broken_link there."""
    r = rows(log)
    third, sixth = r[2], r[5]
    canon = canonical_row(*sixth[1:5], sixth[7], sixth[8], sixth[5].encode(), sixth[6].encode())
    tamper(
        log,
        "UPDATE events SET prev_hash = ?, hash = ? WHERE position = 6",
        params=(third[10], row_hash(third[10], canon)),
    )
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(6, "broken_link")]
    assert "position 3" in report.damage[0].detail


async def test_inserted_row_chained_past_its_neighbour(log: Path) -> None:
    """A forged row at 5 chained onto row 3 is inserted at 5 (row 4 is genuine)."""
    third = rows(log)[2]
    canon = canonical_row("intruder", 1, "T", 1, "forged", third[8], b"{}", b"{}")
    forged = (5, "intruder", 1, "T", 1, "{}", "{}", "forged", third[8], third[10])
    tamper(log, *_SHIFT_UP_FROM_5, _INSERT, params=(*forged, row_hash(third[10], canon)))
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "inserted")]


async def test_two_inserted_rows(log: Path) -> None:
    """Two forged rows slipped in together, each chained onto the one before, are found at 5."""
    prev, at = rows(log)[3][10], rows(log)[3][8]
    tamper(log, *_SHIFT_UP_FROM_5, *_SHIFT_UP_FROM_5)  # positions 5 and 6 free
    for i in range(2):
        canon = canonical_row("intruder", i + 1, "T", 1, f"forged{i}", at, b"{}", b"{}")
        digest = row_hash(prev, canon)
        row = (5 + i, "intruder", i + 1, "T", 1, "{}", "{}", f"forged{i}", at, prev, digest)
        tamper(log, _INSERT, params=row)
        prev = digest
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "inserted")]


@pytest.mark.parametrize("position", [0, -3])
async def test_row_before_position_1(log: Path, position: int) -> None:
    """A row stored below position 1, where no reader looks, is reported as inserted there."""
    first = rows(log)[0]
    forged = (position, "intruder", 1, "T", 1, "{}", "{}", "forged", first[8], "0" * 64, "f" * 64)
    tamper(log, _INSERT, params=forged)
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(position, "inserted")]
    assert report.events_checked == N


async def test_findings_are_in_position_order(log: Path) -> None:
    """An edit comes first in the report even when a later checkpoint's signature is bad too."""
    async with await EventStore.open(log) as store:
        await store.checkpoint(KEY)
    tamper(log, "UPDATE events SET data = '{\"n\": -1}' WHERE position = 3")
    conn = sqlite3.connect(log)
    with conn:
        conn.execute("UPDATE checkpoints SET signature = ?", ("0" * 64,))
    conn.close()
    report = await verify(log)
    assert report.first is not None
    assert (report.first.position, report.first.kind) == (3, "edited")
    assert {(d.position, d.kind) for d in report.damage[1:]} == {
        (N, "checkpoint_signature"),
        (N, "checkpoint_mismatch"),
    }


async def test_verify_while_writing_covers_every_commit(log: Path) -> None:
    """verify() on a store that is appending covers every event committed before the call."""
    async with await EventStore.open(log) as store:
        await store.append([NewEvent("late", "T", b"{}") for _ in range(3)])
        report = await store.verify()
        assert report.ok
        assert (report.events_checked, report.head_position) == (N + 3, N + 3)
        assert report.head_hash == (await store.head())[1]


async def test_full_chain_rewrite_caught_by_checkpoint(log: Path) -> None:
    """An edit with every later hash recomputed passes the chain but fails the signed checkpoint."""
    async with await EventStore.open(log) as store:
        cp = await store.checkpoint(KEY)
    tamper(log, "UPDATE events SET data = '{\"n\": -1}' WHERE position = 3")
    recompute_from(log, 3)
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(cp.position, "checkpoint_mismatch")]
    assert report.checkpoints_checked == 1


async def test_forged_checkpoint_fails_signature(log: Path) -> None:
    """Re-pointing a checkpoint at a rewritten chain is caught by its signature under the key."""
    async with await EventStore.open(log) as store:
        await store.checkpoint(KEY)
    tamper(log, "UPDATE events SET data = '{\"n\": -1}' WHERE position = 3")
    recompute_from(log, 3)
    new_head = rows(log)[-1][10]
    conn = sqlite3.connect(log)
    with conn:
        conn.execute("UPDATE checkpoints SET head_hash = ?", (new_head,))
    conn.close()
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(N, "checkpoint_signature")]
    wrong_key = await verify(log, b"another key")
    assert [d.kind for d in wrong_key.damage] == ["checkpoint_other_key"]
    assert key_fingerprint(KEY) in wrong_key.damage[0].detail


async def test_a_wrong_key_is_told_from_a_forged_checkpoint(log: Path) -> None:
    """Verified with another key, an intact log reports that key, not tampering; with the right
    key, the same checkpoint passes."""
    async with await EventStore.open(log) as store:
        cp = await store.checkpoint(KEY)
    assert cp.key_id == key_fingerprint(KEY)
    report = await verify(log, b"not the key")
    assert [d.kind for d in report.damage] == ["checkpoint_other_key"]
    assert report.signatures_checked == 0
    right = await verify(log, KEY)
    assert right.ok
    assert right.signatures_checked == 1


async def test_truncated_log(log: Path) -> None:
    """Rows removed from the end are reported as truncated by a later checkpoint."""
    async with await EventStore.open(log) as store:
        await store.checkpoint(KEY)
    tamper(log, "DELETE FROM events WHERE position >= ?", params=(N - 1,))
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(N - 1, "truncated")]


async def test_progress_is_reported(log: Path) -> None:
    """verify() calls progress with (done, head) and ends at the head."""
    calls: list[tuple[int, int]] = []
    async with await EventStore.open(log) as store:
        await store.verify(progress=lambda done, head: calls.append((done, head)))
    assert calls[-1] == (N, N)


async def test_rows_at_the_ends_of_the_integer_range(log: Path) -> None:
    """Rows stored at SQLite's smallest and largest positions are reported, not a crash."""
    last = rows(log)[-1]
    for position in (-(2**63), 2**63 - 1):
        forged = (position, "x", position, "T", 1, "{}", "{}", f"f{position}", last[8], "0" * 64)
        tamper(log, _INSERT, params=(*forged, "f" * 64))
    conn = await connect_readonly(str(log), 5.0)
    try:
        report = await verify_log(conn, batch=N + 2)  # the first batch ends at the largest
    finally:
        await conn.close()
    assert [(d.position, d.kind) for d in report.damage] == [
        (-(2**63), "inserted"),
        (N + 1, "missing"),
        (2**63 - 1, "edited"),
    ]


@pytest.mark.parametrize(
    "column", ["stream", "type", "event_id", "recorded_at", "data", "metadata"]
)
async def test_blob_where_text_belongs(log: Path, column: str) -> None:
    """The same bytes stored as a BLOB in a text column are reported as edited, not an error."""
    tamper(log, f"UPDATE events SET {column} = CAST({column} AS BLOB) WHERE position = 5")  # noqa: S608
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "edited")]


@pytest.mark.parametrize(
    ("column", "value"),
    [("prev_hash", "CAST(prev_hash AS BLOB)"), ("prev_hash", "'é' || prev_hash")],
)
async def test_odd_prev_hash(log: Path, column: str, value: str) -> None:
    """A prev_hash that is a BLOB or not ASCII is reported as edited, not an error."""
    tamper(log, f"UPDATE events SET {column} = {value} WHERE position = 5")  # noqa: S608
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(5, "edited")]


async def test_blob_hash_at_the_head(log: Path) -> None:
    """A stored hash turned into a BLOB at the head is edited, and the head hash stays text."""
    tamper(log, f"UPDATE events SET hash = CAST(hash AS BLOB) WHERE position = {N}")  # noqa: S608
    report = await verify(log)
    assert [(d.position, d.kind) for d in report.damage] == [(N, "edited")]
    assert report.head_hash == rows(log)[-1][10].decode()


async def test_a_capped_report_says_it_stopped_and_claims_nothing_past_it(tmp_path: Path) -> None:
    """With more findings than verify lists, it stops and says so; it does not report the
    unread rest of the log as truncated because a checkpoint covers it."""
    path = tmp_path / "big.db"
    async with await EventStore.open(path) as store:
        for i in range(150):
            await store.append([NewEvent(f"s{i % 3}", "T", b'{"n": %d}' % i)])
        await store.checkpoint(KEY)
    tamper(path, """UPDATE events SET data = '{"n": -1}' WHERE position BETWEEN 11 AND 130""")
    conn = await connect_readonly(str(path), 5.0)
    try:  # read in batches of 40 rows, as a long log is read in batches of 5,000
        report = await verify_log(conn, KEY, batch=40)
    finally:
        await conn.close()
    assert not report.ok
    assert not report.complete
    assert {d.kind for d in report.damage} == {"edited"}
    assert report.damage[0].position == 11
    assert report.head_position < 150


async def test_the_cap_holds_within_one_batch(tmp_path: Path) -> None:
    """A log shorter than one batch with hundreds of edited rows is cut off at the cap too:
    about a hundred findings, the report incomplete, its head the last row read."""
    path = tmp_path / "short.db"
    async with await EventStore.open(path) as store:
        await store.append_many(
            [AppendCall([NewEvent(f"s{i % 3}", "T", b'{"n": %d}' % i)]) for i in range(400)]
        )
    tamper(path, """UPDATE events SET data = '{"n": -1}' WHERE position BETWEEN 10 AND 390""")
    async with await EventStore.open(path, readonly=True) as store:
        report = await store.verify()
    assert not report.complete
    assert 100 <= len(report.damage) <= 101
    assert report.head_position == report.damage[-1].position < 390


async def test_a_report_under_the_cap_is_complete(log: Path) -> None:
    """A few findings, or none, leave the report complete: every row and checkpoint was read."""
    async with await EventStore.open(log, readonly=True) as store:
        assert (await store.verify()).complete
    tamper(log, """UPDATE events SET data = '{"n": -1}' WHERE position = 10""")
    async with await EventStore.open(log, readonly=True) as store:
        report = await store.verify()
    assert (report.ok, report.complete) == (False, True)


async def test_verify_shows_each_row_to_a_visitor_in_the_same_pass(log: Path) -> None:
    """A caller checking the rows' content sees every row once, in position order, as stored,
    an inserted one included, from the same pass that checks the chain."""
    before = rows(log)[3]
    forged = (5, "intruder", 1, "T", 1, "{}", "{}", "forged", before[8], before[10], "f" * 64)
    tamper(log, *_SHIFT_UP_FROM_5, _INSERT, params=forged)
    seen: list[tuple[int, str, str, int, str | bytes, str]] = []
    async with await EventStore.open(log, create=False) as store:
        report = await store.verify(visit=lambda *row: seen.append(row))
    assert [(d.position, d.kind) for d in report.damage] == [(5, "inserted")]
    assert seen == [(r[0], r[1], r[3], r[4], r[5], r[7]) for r in rows(log)]
    assert seen[4][1] == "intruder"
