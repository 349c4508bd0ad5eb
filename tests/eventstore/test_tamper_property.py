"""Property: after any one tampering with a small log, verify()'s first finding names the first
position the tampering touched and says what was done; an untouched log gives no finding."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import EventStore, NewEvent
from eventstore.chain import GENESIS, canonical_row, row_hash

KEY = b"auditor-key"
COLUMNS = (
    "position, stream, version, type, schema, data, metadata, event_id, recorded_at,"
    " prev_hash, hash"
)
EDITABLE = COLUMNS.split(", ")[1:]
FORGED_HASH = "f" * 64


@dataclass
class Tampering:
    """What was done, and what verify() should find: (position, kind), first position first.

    Checkpoint mismatches aside; no finding when nothing can show it (the tail removed, and no
    checkpoint covers it).
    """

    what: str
    findings: list[tuple[int, str]]
    statements: list[tuple[str, tuple]]


def shift(start: int, by: int) -> list[tuple[str, tuple]]:
    """Renumber every row from `start` on by `by`, in two steps so no position is taken twice."""
    return [
        ("UPDATE events SET position = position + 1000000 WHERE position >= ?", (start,)),
        ("UPDATE events SET position = position - 1000000 + ? WHERE position >= 1000000", (by,)),
    ]


def move(frm: int, to: int) -> list[tuple[str, tuple]]:
    return [("UPDATE events SET position = ? WHERE position = ?", (to, frm))]


@st.composite
def edits(draw: st.DrawFn, rows: list[tuple], k: int) -> tuple[str, tuple]:
    """An UPDATE that changes one column (not the position) of the row at position `k`."""
    row = rows[k - 1]
    column = draw(st.sampled_from(EDITABLE))
    old = row[EDITABLE.index(column) + 1]
    if column in ("prev_hash", "hash"):
        others = [GENESIS, FORGED_HASH, *(r[10] for r in rows)]
        new = draw(st.sampled_from([h for h in others if h != old]))
    elif column in ("version", "schema"):
        new = old + draw(st.integers(1000, 2000))  # beyond any version in use
    else:
        new = old + draw(st.sampled_from([" ", "x"]))  # streams, ids stay unique: none ends so
    return (f"UPDATE events SET {column} = ? WHERE position = ?", (new, k))  # noqa: S608


@st.composite
def tamperings(draw: st.DrawFn, rows: list[tuple], checkpointed: bool) -> Tampering:
    n = len(rows)
    what = draw(
        st.sampled_from(["edit", "move out", "delete", "insert", "swap", "move", "gap then edit"])
    )
    k = draw(st.integers(1, n))
    tail = [(k, "truncated")] if checkpointed else []  # what removing rows k..n leaves to see
    if what == "edit":
        return Tampering(what, [(k, "edited")], [draw(edits(rows, k))])
    if what == "move out":  # the position column edited: the row leaves the numbered range
        to = draw(st.sampled_from([-1, 0, n + 1, n + 3]))
        if to < 1:
            gap = [(k, "missing")] if k < n else tail
            return Tampering(what, [(to, "inserted"), *gap], move(k, to))
        if k == n:
            return Tampering(what, [(k, "missing")], move(k, to))
        # After the gap, the row sits right after the last or beyond a second gap.
        end = (to, "reordered") if to == n + 1 else (n + 1, "missing")
        return Tampering(what, [(k, "missing"), end], move(k, to))
    if what in ("delete", "gap then edit"):
        last = draw(st.integers(k, n))
        statements = [("DELETE FROM events WHERE position BETWEEN ? AND ?", (k, last))]
        if last == n:  # the tail: only a checkpoint beyond the new head shows it
            return Tampering(what, tail, statements)
        if what == "gap then edit":
            edit = draw(edits(rows, last + 1))
            return Tampering(what, [(k, "missing"), (last + 1, "edited")], [*statements, edit])
        if draw(st.booleans()):  # renumbered: the log ends earlier than a checkpoint at its head
            statements += shift(last + 1, k - last - 1)
            end = [(n - (last - k), "truncated")] if checkpointed else []
            return Tampering(what, [(k, "missing"), *end], statements)
        return Tampering(what, [(k, "missing")], statements)
    if what == "insert":  # a forged row at k; the rows from k on move up by one
        before = rows[k - 2][10] if k > 1 else GENESIS
        prev = draw(st.sampled_from([before, GENESIS, FORGED_HASH, *(r[10] for r in rows)]))
        recorded_at = rows[k - 1][8]
        canon = canonical_row("intruder", 1, "T", 1, "forged", recorded_at, b"{}", b"{}")
        digest = draw(st.sampled_from([row_hash(prev, canon), FORGED_HASH]))
        forged = (k, "intruder", 1, "T", 1, "{}", "{}", "forged", recorded_at, prev, digest)
        insert = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 11)})"  # noqa: S608
        # A well-formed row chained onto one that now comes after it looks like a moved row.
        moved = digest != FORGED_HASH and prev in (r[10] for r in rows[k - 1 :])
        kind = "reordered" if moved else "inserted"
        return Tampering(what, [(k, kind)], [*shift(k, 1), (insert, forged)])
    other = draw(st.integers(1, n).filter(lambda j: j != k))
    if what == "swap":
        i, j = min(k, other), max(k, other)
        statements = move(i, -99) + move(j, i) + move(-99, j)
        return Tampering(what, [(i, "reordered")], statements)
    # move: take the row at k out and put it back at `other`, the rows between closing up
    step = 1 if other > k else -1
    statements = move(k, -99)
    for p in range(k + step, other + step, step):
        statements += move(p, p - step)
    statements += move(-99, other)
    return Tampering(what, [(min(k, other), "reordered")], statements)


def table(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY position").fetchall()  # noqa: S608
    finally:
        conn.close()


def apply(path: Path, statements: list[tuple[str, tuple]]) -> None:
    """Run `statements` with the guard triggers dropped, then put the triggers back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = [
            r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type='trigger'")
        ]
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("DROP TRIGGER events_refuse_delete")
        for sql, params in statements:
            conn.execute(sql, params)
        for sql in triggers:
            conn.execute(sql)
    finally:
        conn.close()


async def build(path: Path, calls: list[list[tuple[str, int]]], checkpointed: bool) -> None:
    async with EventStore.open(path) as store:
        for call in calls:
            await store.append([NewEvent(s, "T", b'{"n": %d}' % n) for s, n in call])
        if checkpointed:
            await store.checkpoint(KEY)


async def verify(path: Path):
    async with EventStore.open(path, readonly=True) as store:
        return await store.verify(KEY)


event_st = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 9))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(st.lists(event_st, min_size=1, max_size=3), min_size=1, max_size=5),
    checkpointed=st.booleans(),
    data=st.data(),
)
def test_first_finding_names_the_first_tampered_position(calls, checkpointed, data) -> None:
    """verify() names the first position one tampering touched and what was done, once."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.db"
        asyncio.run(build(path, calls, checkpointed))
        assert asyncio.run(verify(path)).damage == []
        tampering = data.draw(tamperings(table(path), checkpointed))
        apply(path, tampering.statements)
        report = asyncio.run(verify(path))
    found = [(d.position, d.kind) for d in report.damage]
    if not tampering.findings:
        assert found == []
        return
    assert found, "the tampering went unnoticed"
    assert found[0] == tampering.findings[0]
    assert [f for f in found if f[1] != "checkpoint_mismatch"] == tampering.findings
