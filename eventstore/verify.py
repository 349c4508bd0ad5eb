"""Audit of a log: recompute the hash chain, classify any damage, check signed checkpoints.

The normal path streams the table in position order with constant memory; only once damage is
found do classification queries look elsewhere in the table (damage is rare). A caller that
checks what the rows say (the log's content, which this module knows nothing of) passes a
`RowVisitor` and sees every row in the same pass.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .chain import (
    GENESIS,
    canonical_row,
    is_fingerprint,
    key_fingerprint,
    row_hash,
    sign_checkpoint,
)
from .schema import EVENT_COLUMNS, TRIGGERS

__all__ = ["Damage", "RowVisitor", "VerifyReport", "verify_log"]

RowVisitor = Callable[[int, str, str, int, str | bytes, str], None]
"""Called with (position, stream, type, schema, data, event_id) of each row verify reads from
position 1 on, in position order, whether or not the row fits the chain. `data` is the stored
JSON text (bytes only in a damaged row). It must not raise."""


class Rows(Protocol):
    """What verify reads through: aiosqlite's connection, or another backend's adapter that
    takes the same statements (eventstore/postgres)."""

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any], /) -> Iterable[Any]: ...


_MAX_DAMAGE = 100
_TRIGGER_NAMES = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
_ROWS = (
    f"SELECT {EVENT_COLUMNS}, prev_hash FROM events"  # noqa: S608 — constant columns
    " WHERE position > ? ORDER BY position LIMIT ?"
)
_POSITION_OF_HASH = "SELECT position FROM events WHERE hash = ? LIMIT 1"
_PREV_AFTER = "SELECT prev_hash FROM events WHERE position > ? ORDER BY position LIMIT 1"
_SKIPPED = "the next row chains past this row"


@dataclass(frozen=True, slots=True)
class Damage:
    """One finding: where (position; 0 for the database as a whole, unless a row is stored
    there), what kind, and details.

    Kinds: edited, missing, inserted, reordered, broken_link, checkpoint_mismatch,
    checkpoint_signature, checkpoint_other_key, truncated, triggers_missing.
    `checkpoint_other_key` is not tampering as such: the checkpoint names another key than the
    one given, so its signature could not be checked (a wrong key, unless its name was edited).
    """

    position: int
    kind: str
    detail: str


@dataclass
class VerifyReport:
    """What verify() found; ok only when chain, positions, checkpoints and triggers are intact.

    `damage` is in position order, so the first finding names the first damaged position.
    """

    ok: bool
    events_checked: int
    head_position: int
    head_hash: str
    checkpoints_checked: int
    damage: list[Damage] = field(default_factory=list)
    # Checkpoints whose signature was checked under the key given (0 without a key).
    signatures_checked: int = 0
    # False when verify stopped at its cap of findings: rows after `head_position` (the last row
    # read) were not checked, and neither were checkpoints past it.
    complete: bool = True

    @property
    def first(self) -> Damage | None:
        return self.damage[0] if self.damage else None


async def verify_log(
    conn: Rows,
    checkpoint_key: bytes | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5_000,
    visit: RowVisitor | None = None,
    triggers: Sequence[str] = TRIGGERS,
    trigger_names: str = _TRIGGER_NAMES,
) -> VerifyReport:
    """Verify the whole log readable through `conn` (see VerifyReport); `visit` sees each row.

    `triggers` are the ones that must be present on `events`, and `trigger_names` the statement
    that lists those present (another backend passes its own).
    """
    damage: list[Damage] = []
    cp_damage: list[Damage] = []  # listed after the chain's findings at the same position
    names = {r[0] for r in await conn.execute_fetchall(trigger_names, ())}
    missing_triggers = [t for t in triggers if t not in names]
    if missing_triggers:
        damage.append(Damage(0, "triggers_missing", f"absent: {', '.join(missing_triggers)}"))

    checkpoints: dict[int, list[tuple[int, str]]] = {}
    cp_rows = await conn.execute_fetchall(
        "SELECT id, position, head_hash, created_at, key_id, signature FROM checkpoints"
        " ORDER BY position, id",
        (),
    )
    given = key_fingerprint(checkpoint_key) if checkpoint_key is not None else None
    signatures = 0
    for cp_id, pos, head_hash, created_at, key_id, signature in cp_rows:
        checkpoints.setdefault(pos, []).append((cp_id, head_hash))
        if checkpoint_key is None:
            continue
        if is_fingerprint(key_id) and key_id != given:
            detail = (
                f"checkpoint {cp_id} names key {key_id}, the key given is {given}: "
                "a wrong key, unless the checkpoint's key name was edited"
            )
            cp_damage.append(Damage(pos, "checkpoint_other_key", detail))
            continue
        signatures += 1
        want = sign_checkpoint(checkpoint_key, pos, head_hash, created_at, key_id)
        if not hmac.compare_digest(want, signature):
            same = "the key given" if key_id == given else "no fingerprint to compare"
            detail = f"checkpoint {cp_id} (key {key_id}: {same}): its signature does not match"
            cp_damage.append(Damage(pos, "checkpoint_signature", detail))
    head_row = list(await conn.execute_fetchall("SELECT MAX(position) FROM events", ()))
    max_pos = head_row[0][0] or 0

    expected_pos = 1
    link = GENESIS  # stored hash of the last row in the chain: the next row should chain onto it
    chain = GENESIS  # hash recomputed from genesis, ignoring stored hashes
    quiet_until = 0  # links up to here are fallout of a damage already reported
    checked = 0
    last_pos, last_hash = 0, GENESIS
    cursor: float = float("-inf")  # rows below position 1 are read too: each one is an intruder
    cps_checked = 0
    complete = False
    while len(damage) < _MAX_DAMAGE:
        rows = list(await conn.execute_fetchall(_ROWS, (cursor, batch)))
        if not rows:
            complete = True
            break
        cursor = rows[-1][0]
        for pos, stream, version, type_, schema, data, meta, eid, rec_at, stored, prev in rows:
            if pos < 1:
                damage.append(Damage(pos, "inserted", "positions start at 1"))
                continue
            if visit is not None:
                visit(pos, stream, type_, schema, data, eid)
            try:
                canon = canonical_row(
                    stream, version, type_, schema, eid, rec_at, data.encode(), meta.encode()
                )
            except AttributeError:  # a BLOB where text belongs: no appended row looks like that
                canon = b""
            new_chain = row_hash(chain, canon)
            try:
                own = new_chain if prev == chain else row_hash(prev, canon)
            except (AttributeError, UnicodeEncodeError):  # a prev_hash no appended row has
                own = ""
            if pos != expected_pos:
                damage.append(
                    Damage(expected_pos, "missing", f"positions {expected_pos}..{pos - 1} absent")
                )
                quiet_until = max(quiet_until, pos)  # the link into this row broke with the gap
            joins = True
            if own != stored or (prev != link and pos > quiet_until):
                found, quiet, joins = await _classify(conn, pos, prev, stored, own, link)
                damage.append(found)
                quiet_until = max(quiet_until, quiet)
            if joins:
                link = stored
            if pos in checkpoints:
                for cp_id, cp_hash in checkpoints[pos]:
                    cps_checked += 1
                    if cp_hash != new_chain:
                        cp_damage.append(
                            Damage(
                                pos,
                                "checkpoint_mismatch",
                                f"checkpoint {cp_id}: chain recomputed from genesis differs",
                            )
                        )
            chain = new_chain
            expected_pos = pos + 1
            # A BLOB hash is damage (it never equals `own`), but the report's head stays text.
            last_pos = pos
            last_hash = stored if isinstance(stored, str) else stored.decode(errors="replace")
            checked += 1
            if len(damage) >= _MAX_DAMAGE:
                break  # the cap: the rest of the batch is not read either
        if progress is not None:
            progress(last_pos, max(max_pos, last_pos))
    complete = complete or last_pos >= max_pos  # the cap may be reached on the last row
    if not complete:  # nothing is claimed about checkpoints past the last row read
        cp_damage = [d for d in cp_damage if d.position <= last_pos]
    for pos, cps in checkpoints.items() if complete else ():
        if pos > last_pos:
            cps_checked += len(cps)
            cp_damage.append(
                Damage(last_pos + 1, "truncated", f"a checkpoint covers position {pos}")
            )
            break
    damage = sorted(damage + cp_damage, key=lambda d: d.position)
    return VerifyReport(
        ok=not damage,
        events_checked=checked,
        head_position=last_pos,
        head_hash=last_hash,
        checkpoints_checked=cps_checked,
        damage=damage,
        complete=complete,
        signatures_checked=signatures,
    )


async def _classify(
    conn: Rows, pos: int, prev: str, stored: str, own: str, link: str
) -> tuple[Damage, int, bool]:
    """Name what is wrong with the row at `pos`, which does not fit the chain.

    Returns the finding, the position up to which broken links are its fallout, and whether the
    row joins the chain (the next row should chain onto it).
    """
    nxt = await _value(conn, _PREV_AFTER, (pos,))
    skipped = nxt == link != stored  # the next row chains onto the row before this one
    if own != stored:
        if skipped:
            return Damage(pos, "inserted", _SKIPPED), pos, False
        # When the hash itself was edited the next row still chains onto the original: `own`.
        quiet = pos + 1 if nxt == own else pos
        return Damage(pos, "edited", "row content does not match its hash"), quiet, True
    at = 0 if prev == GENESIS else await _value(conn, _POSITION_OF_HASH, (prev,))
    if at is not None and at > pos:
        # Moved rows: every link up to just past the row that chained onto `link` is fallout.
        x = await _value(conn, "SELECT MAX(position) FROM events WHERE prev_hash = ?", (link,))
        quiet = max(at, x or 0) + 1
        return Damage(pos, "reordered", f"its predecessor now sits at position {at}"), quiet, True
    if skipped:
        return Damage(pos, "inserted", _SKIPPED), pos, False
    if at is None:
        detail = "the row this one chained onto is gone (deleted and renumbered, or rewritten)"
        return Damage(pos, "missing", detail), pos, True
    if at < pos - 1 and nxt in (None, stored):
        # The chain runs on through this row, which chains onto an earlier one: either it was moved
        # here (the rows after its predecessor chain onto it) or the rows between were slipped in.
        if await _value(conn, _PREV_AFTER, (at,)) == stored:
            return Damage(pos, "reordered", f"it belongs after position {at}"), pos, True
        detail = f"positions {at + 1}..{pos - 1} are not in the chain"
        return Damage(at + 1, "inserted", detail), pos, True
    # A rewritten row (its own hash recomputed): the link after it breaks too.
    return Damage(pos, "broken_link", f"chains onto position {at}"), pos + 1, True


async def _value(conn: Rows, sql: str, params: tuple[object, ...]) -> Any:
    """The first column of the first row of `sql`, or None when there is no row."""
    rows = list(await conn.execute_fetchall(sql, params))
    return rows[0][0] if rows else None
