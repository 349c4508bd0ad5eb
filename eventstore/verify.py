"""Audit of a log: recompute the hash chain, classify any damage, check signed checkpoints.

The normal path streams the table in position order with constant memory; only once damage is
found do classification queries look elsewhere in the table (damage is rare).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosqlite

from .chain import GENESIS, canonical_row, row_hash, sign_checkpoint
from .schema import TRIGGERS

__all__ = ["Damage", "VerifyReport", "verify_log"]

_MAX_DAMAGE = 100


@dataclass(frozen=True, slots=True)
class Damage:
    """One finding: where (position; 0 for the database as a whole), what kind, and details.

    Kinds: edited, missing, inserted, reordered, broken_link, checkpoint_mismatch,
    checkpoint_signature, truncated, triggers_missing.
    """

    position: int
    kind: str
    detail: str


@dataclass
class VerifyReport:
    """What verify() found; ok only when chain, positions, checkpoints and triggers are intact."""

    ok: bool
    events_checked: int
    head_position: int
    head_hash: str
    checkpoints_checked: int
    damage: list[Damage] = field(default_factory=list)

    @property
    def first(self) -> Damage | None:
        return self.damage[0] if self.damage else None


async def verify_log(
    conn: aiosqlite.Connection,
    checkpoint_key: bytes | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5_000,
) -> VerifyReport:
    """Verify the whole log readable through `conn` (see VerifyReport)."""
    damage: list[Damage] = []
    names = {
        r[0]
        for r in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
        )
    }
    missing_triggers = [t for t in TRIGGERS if t not in names]
    if missing_triggers:
        damage.append(Damage(0, "triggers_missing", f"absent: {', '.join(missing_triggers)}"))

    checkpoints: dict[int, list[tuple[int, str]]] = {}
    cp_rows = await conn.execute_fetchall(
        "SELECT id, position, head_hash, created_at, key_id, signature FROM checkpoints"
        " ORDER BY position, id"
    )
    for cp_id, pos, head_hash, created_at, key_id, signature in cp_rows:
        checkpoints.setdefault(pos, []).append((cp_id, head_hash))
        if checkpoint_key is not None:
            want = sign_checkpoint(checkpoint_key, pos, head_hash, created_at, key_id)
            if not hmac.compare_digest(want, signature):
                damage.append(
                    Damage(pos, "checkpoint_signature", f"checkpoint {cp_id} (key {key_id!r})")
                )
    head_row = list(await conn.execute_fetchall("SELECT MAX(position) FROM events"))
    max_pos = head_row[0][0] or 0

    expected_pos = 1
    link, link2 = GENESIS, GENESIS  # stored hashes of the previous row and the one before
    chain = GENESIS  # hash recomputed from genesis, ignoring stored hashes
    quiet_until = 0  # links up to here are fallout of a damage already reported
    checked = 0
    last_pos, last_hash = 0, GENESIS
    cps_checked = 0
    while len(damage) < _MAX_DAMAGE:
        rows = list(
            await conn.execute_fetchall(
                "SELECT position, stream, version, type, schema, data, metadata, event_id,"
                " recorded_at, prev_hash, hash FROM events WHERE position >= ?"
                " ORDER BY position LIMIT ?",
                (expected_pos if checked == 0 else last_pos + 1, batch),
            )
        )
        if not rows:
            break
        for pos, stream, version, type_, schema, data, meta, eid, rec_at, prev, stored in rows:
            canon = canonical_row(
                stream, version, type_, schema, eid, rec_at, data.encode(), meta.encode()
            )
            new_chain = row_hash(chain, canon)
            own = new_chain if prev == chain else row_hash(prev, canon)
            advance = True
            if pos != expected_pos:
                damage.append(
                    Damage(expected_pos, "missing", f"positions {expected_pos}..{pos - 1} absent")
                )
                quiet_until = max(quiet_until, pos)  # the link into this row broke with the gap
            if own != stored:
                nxt = list(
                    await conn.execute_fetchall(
                        "SELECT prev_hash FROM events WHERE position > ? ORDER BY position LIMIT 1",
                        (pos,),
                    )
                )
                if nxt and nxt[0][0] == link and link != stored:
                    damage.append(Damage(pos, "inserted", "the next row chains past this row"))
                    advance = False  # keep chaining from the row before the intruder
                else:
                    damage.append(Damage(pos, "edited", "row content does not match its hash"))
            elif prev != link and pos > quiet_until:
                kind, where, detail, quiet = await _classify_link(conn, pos, prev, link2)
                damage.append(Damage(where, kind, detail))
                quiet_until = quiet
            if pos in checkpoints:
                for cp_id, cp_hash in checkpoints[pos]:
                    cps_checked += 1
                    if cp_hash != new_chain:
                        damage.append(
                            Damage(
                                pos,
                                "checkpoint_mismatch",
                                f"checkpoint {cp_id}: chain recomputed from genesis differs",
                            )
                        )
            if advance:
                link2, link = link, stored
            chain = new_chain
            expected_pos = pos + 1
            last_pos, last_hash = pos, stored
            checked += 1
        if progress is not None:
            progress(last_pos, max(max_pos, last_pos))
    for pos, cps in checkpoints.items():
        if pos > last_pos:
            cps_checked += len(cps)
            damage.append(Damage(last_pos + 1, "truncated", f"a checkpoint covers position {pos}"))
            break
    return VerifyReport(
        ok=not damage,
        events_checked=checked,
        head_position=last_pos,
        head_hash=last_hash,
        checkpoints_checked=cps_checked,
        damage=damage,
    )


async def _classify_link(
    conn: aiosqlite.Connection, pos: int, prev: str, link2: str
) -> tuple[str, int, str, int]:
    """Name a broken link at `pos` of a self-consistent row: (kind, position, detail, quiet)."""
    if prev == link2:
        return "inserted", pos - 1, "this row chains past the row before it", pos
    found = list(
        await conn.execute_fetchall("SELECT position FROM events WHERE hash = ? LIMIT 1", (prev,))
    )
    if not found:
        return (
            "missing",
            pos,
            "the row this one chained onto is gone (deleted and renumbered, or rewritten)",
            pos,
        )
    at = found[0][0]
    if at > pos:
        # Rows were swapped: the links up to just past the moved row are fallout.
        return "reordered", pos, f"its predecessor now sits at position {at}", at + 1
    return "broken_link", pos, f"chains onto position {at}", pos
