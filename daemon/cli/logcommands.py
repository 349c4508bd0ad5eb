"""Read-only commands over the log: replay, audit, verify, status, export, allowlist, backup.

None of them writes to the log or trusts a snapshot: each opens it read-only (a read-only
copy works too; a file that is not a staticipd log is refused untouched) and rebuilds what it
shows from the events themselves, so what an auditor sees is what the log proves. Without
`--database` they read the log the configuration names, as `serve` would.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NotRequired, TypedDict

import anyio
import msgspec

from daemon import exitcodes
from daemon.cli.progress import Progress
from daemon.config import ConfigError, load_config, secret_dirs
from daemon.domain import APPLICATION_STREAM, STATES, account_stream
from daemon.provider import allowlist
from daemon.runtime.audit import MoveCheck, render_timeline, timeline, timeline_as_json
from daemon.runtime.live import SNAPSHOT_NAME
from daemon.runtime.projections import Projection
from eventstore import (
    LAST_POSITION,
    DatabaseCorrupt,
    DatabaseMissing,
    EventStore,
    EventStoreError,
    SnapshotReader,
)
from eventstore.chain import GENESIS, format_time, key_fingerprint
from eventstore.postgres import is_database_url, redact_url
from eventstore.verify import Damage


class CommandError(Exception):
    """What a command prints as one line on stderr before exiting with `status`."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@asynccontextmanager
async def open_log(path: Path | str, password: str | None = None) -> AsyncIterator[EventStore]:
    """Open an existing log read-only; a missing, damaged or foreign file is a clear error and
    stays exactly as it was. `path` may be a PostgreSQL URL (README, "PostgreSQL"), `password`
    its role's."""
    shown = redact_url(path) if isinstance(path, str) and is_database_url(path) else path
    try:
        store = await EventStore.open(path, readonly=True, password=password)
    except DatabaseMissing as exc:
        raise CommandError(
            f"no event log at {shown} (set --database, --config or STATICIPD_DATABASE)",
            exitcodes.USAGE,
        ) from exc
    except DatabaseCorrupt as exc:
        text = str(exc) if str(shown) in str(exc) else f"{shown}: {exc}"
        raise CommandError(text, exitcodes.PROBLEM) from exc
    except EventStoreError as exc:
        raise CommandError(f"cannot open {shown}: {exc}", exitcodes.PROBLEM) from exc
    try:
        yield store
    finally:
        await store.close()


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a command's errors, from argument checks to the log's failures, into one line on
    stderr and the documented exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            _use_config(args)
            return fn(args)
        except CommandError as exc:
            print(f"staticipd: {exc}", file=sys.stderr)
            return exc.status
        except BrokenPipeError:  # `staticipd export | head` is fine
            return exitcodes.OK
        except EventStoreError as exc:
            print(f"staticipd: the event log failed: {exc}", file=sys.stderr)
            return exitcodes.PROBLEM

    return wrapper


def run(main: Callable[[], Awaitable[int]]) -> int:
    return anyio.run(main)


def _use_config(args: argparse.Namespace) -> None:
    """Complete `args` from the effective configuration, read as `serve` reads it: the log's
    path when `--database` is not given, and the directories that hold secret files when
    `verify` has no `--checkpoint-key-file`. A command told both reads no configuration, so a
    stray setting in an auditor's environment cannot stop it."""
    args.secret_dirs = []
    args.database_password = None
    wants_key = getattr(args, "checkpoint_key_file", False) is None
    # A database URL's password is a secret file too (`database_password`), found the same way.
    wants_password = is_database_url(args.database)
    if args.database is not None and not wants_key and not wants_password:
        return
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", exitcodes.USAGE) from exc
    if args.database is None:
        args.database = config.database.location
    args.secret_dirs = secret_dirs(config, os.environ)
    if is_database_url(args.database):
        found = (d / "database_password" for d in args.secret_dirs)
        file = next((f for f in found if f.is_file()), None)
        if file is not None:
            args.database_password = _read_password(file)


def _read_password(file: Path) -> str | None:
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {file}: {exc}", exitcodes.USAGE) from exc
    return next((line.strip() for line in lines if line.strip()), None)


def _checkpoint_key(args: argparse.Namespace) -> bytes | None:
    """--checkpoint-key-file, else `checkpoint_key` in the configuration's secrets_dir, else in
    $CREDENTIALS_DIRECTORY (the daemon's own order); None when there is none."""
    path = args.checkpoint_key_file
    if path is None:
        found = (d / "checkpoint_key" for d in args.secret_dirs)
        path = next((f for f in found if f.is_file()), None)
    if path is None:
        return None
    try:
        return Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CommandError(
            f"cannot read the checkpoint key {path}: {reason}", exitcodes.USAGE
        ) from exc


def _at_least(value: int | None, least: int, option: str) -> None:
    if value is not None and not least <= value <= LAST_POSITION:
        raise CommandError(
            f"{option} must be from {least} to {LAST_POSITION}, not {value}", exitcodes.USAGE
        )


def _anchors(texts: list[str]) -> list[tuple[int, str]]:
    """`--expect POS:HASH` values, checked for shape; every one is kept, even for a position
    given twice (a wrong hash must not hide behind a right one)."""
    anchors = []
    for text in texts:
        position, _, digest = text.partition(":")
        # SQLite positions are 64-bit: a larger one is a typo, not a log that failed to read.
        in_range = position.isdigit() and 0 < int(position) <= LAST_POSITION
        if not (in_range and re.fullmatch("[0-9a-f]{64}", digest)):
            want = "POSITION:HASH (a position from 1 to 2**63 - 1, 64 hex digits)"
            raise CommandError(f"--expect: want {want}, not {text!r}", exitcodes.USAGE)
        anchors.append((int(position), digest))
    return sorted(anchors)


async def _check_anchors(
    store: EventStore, anchors: list[tuple[int, str]], head: int
) -> list[Damage]:
    """Each anchor's row must still be there with the hash written down earlier."""
    damage = []
    for position, digest in anchors:
        found = [rec.hash async for rec in store.read_all(position, position)]
        if not found and position <= head:
            damage.append(Damage(position, "missing", f"expected {digest}; no row there"))
        elif not found:
            damage.append(
                Damage(position, "truncated", f"expected {digest}; the log ends at {head}")
            )
        elif found[0] != digest:
            damage.append(
                Damage(position, "anchor_mismatch", f"expected {digest}, found {found[0]}")
            )
    return damage


@command
def verify_command(args: argparse.Namespace) -> int:
    key = _checkpoint_key(args)
    anchors = _anchors(args.expect)

    async def main() -> int:
        # The moves are checked in verify's own pass over the rows: the log is read once.
        moves = MoveCheck()
        async with open_log(args.database, args.database_password) as store:
            progress = Progress("verify")
            report = await store.verify(key, progress=progress, visit=moves)
            progress.close()
            if anchors:
                missed = await _check_anchors(store, anchors, (await store.head())[0])
                damage = sorted([*report.damage, *missed], key=lambda d: d.position)
                report = replace(report, ok=report.ok and not missed, damage=damage)
        ok = report.ok and not moves.findings
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": ok,
                        "events_checked": report.events_checked,
                        "head_position": report.head_position,
                        "head_hash": report.head_hash,
                        "checkpoints_checked": report.checkpoints_checked,
                        "checkpoint_key": key is not None,
                        "checkpoint_key_fingerprint": key_fingerprint(key) if key else None,
                        "signatures_checked": report.signatures_checked,
                        "anchors_checked": len(anchors),
                        "complete": report.complete,
                        "damage": [
                            {"position": d.position, "kind": d.kind, "detail": d.detail}
                            for d in report.damage
                        ],
                        "moves_checked": moves.moves_checked,
                        "moves_complete": moves.complete,
                        "moves": msgspec.to_builtins(moves.findings),
                    },
                    indent=2,
                )
            )
        elif ok:
            signed = (
                f", {report.signatures_checked} signed checkpoint(s) valid"
                if key is not None
                else f", {report.checkpoints_checked} checkpoint(s) match the chain (their "
                "signatures not checked: no key given)"
            )
            if anchors:
                signed += f", {len(anchors)} expected hash(es) found"
            print(
                f"ok: {report.events_checked:,} events, chain intact up to position "
                f"{report.head_position} ({report.head_hash}){signed}, "
                f"{moves.moves_checked:,} state change(s) as the transition table allows"
            )
        else:
            for d in report.damage:
                # Another key is not evidence of tampering: say so rather than DAMAGE.
                what = "WRONG KEY?" if d.kind == "checkpoint_other_key" else "DAMAGE"
                print(f"{what} at position {d.position}: {d.kind}: {d.detail}")
            if not report.complete:
                print(
                    f"verify stopped after {len(report.damage)} findings at position "
                    f"{report.head_position}; later rows and checkpoints were not checked"
                )
            for m in moves.findings:
                on = f" on {m.on}" if m.on else ""
                print(
                    f"BAD MOVE at position {m.position}: {m.kind}: account {m.account_id}: "
                    f"{m.from_state} -> {m.to_state or '?'}{on}: {m.detail}"
                )
            if not moves.complete:
                print(f"more bad moves than the {len(moves.findings)} listed")
        return exitcodes.OK if ok else exitcodes.PROBLEM

    return run(main)


@command
def export_command(args: argparse.Namespace) -> int:
    """One JSON object per line with the exact stored fields, so the chain can be recomputed
    outside this program (see eventstore.chain for the canonical encoding)."""
    _at_least(args.from_position, 1, "--from")
    _at_least(args.to_position, 1, "--to")
    if args.to_position is not None and args.from_position > args.to_position:
        raise CommandError(
            f"--from {args.from_position} is after --to {args.to_position}", exitcodes.USAGE
        )

    async def main() -> int:
        async with open_log(args.database, args.database_password) as store:
            prev = GENESIS
            if args.from_position > 1:
                async for rec in store.read_all(args.from_position - 1, args.from_position - 1):
                    prev = rec.hash
            out = sys.stdout
            async for rec in store.read_all(args.from_position, args.to_position):
                line = {
                    "position": rec.position,
                    "stream": rec.stream,
                    "version": rec.version,
                    "type": rec.type,
                    "schema": rec.schema,
                    "event_id": rec.event_id,
                    "recorded_at": format_time(rec.recorded_at),
                    "data": rec.data.decode(),
                    "metadata": rec.metadata.decode(),
                    "prev_hash": prev,
                    "hash": rec.hash,
                }
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
                prev = rec.hash
        return exitcodes.OK

    return run(main)


async def _fold(
    store: EventStore,
    projection: Projection,
    last: int,
    progress: Progress,
    until_time: datetime | None = None,
) -> None:
    """Apply the log's records after `projection.position`, up to `last` and `until_time`."""
    async for rec in store.read_all(projection.position + 1, last):
        if until_time is not None and rec.recorded_at > until_time:
            break
        projection.apply_record(rec)
        if rec.position % 4096 == 0:
            progress(rec.position, last)
    progress(projection.position, last)


@asynccontextmanager
async def _from_snapshot(store: EventStore) -> AsyncIterator[tuple[Projection, str, str | None]]:
    """The projection at the head: the daemon's snapshot plus the log after it when the
    snapshot is there, readable and agrees with the log (the row at its position has the hash
    it names), else a replay from the first event. Also says which, and why not the snapshot.

    From a snapshot, accounts are read from it only when needed (the tail's, the next due), and
    a state's ids only when shown (the stalled), so a reading costs the counts and the times,
    not every account; the snapshot stays open until the end."""
    head, _ = await store.head()
    reader = await store.open_snapshot(SNAPSHOT_NAME)
    why = "no snapshot"
    try:
        if reader is not None:
            try:
                projection = await anyio.to_thread.run_sync(
                    functools.partial(Projection.from_reader, reader, fetch=reader.blob, lazy=True)
                )
            except ValueError as exc:
                why = f"the snapshot is unreadable ({exc})"
            else:
                position = projection.position
                row = [r.hash async for r in store.read_all(position, position)]
                if position > head:
                    why = f"the snapshot is at position {position}, past the log's head {head}"
                elif position and row != [projection.head_hash]:
                    why = f"the snapshot does not match the log at position {position}"
                else:
                    progress = Progress("status")
                    await _fold(store, projection, head, progress)
                    progress.close()
                    yield projection, "snapshot", None
                    return
        yield await _replayed(store), "replay", why
    finally:
        if reader is not None:
            reader.close()


async def _replayed(store: EventStore) -> Projection:
    """A fresh projection of the whole log (snapshots ignored), with a progress line on a
    terminal."""
    head, _ = await store.head()
    projection, progress = Projection(), Progress("replay")
    await _fold(store, projection, head, progress)
    progress.close()
    return projection


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    """The funnel in migration order, every state shown (zeros too)."""
    return {s: counts.get(s, 0) for s in (*STATES, *sorted(set(counts) - set(STATES)))}


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CommandError(f"--until: not an ISO 8601 time: {text!r}", exitcodes.USAGE) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@command
def replay_command(args: argparse.Namespace) -> int:
    until_time = _parse_time(args.until) if args.until else None
    _at_least(args.position, 0, "--position")

    async def main() -> int:
        projection = Projection()
        divergence: _SnapshotComparison | None = None
        async with open_log(args.database, args.database_password) as store:
            head, _ = await store.head()
            last = head if args.position is None else min(head, args.position)
            progress = Progress("replay")
            # The whole log is compared with the snapshot in one pass: stop at the snapshot's
            # position to compare, then go on to the head.
            whole = until_time is None and args.position is None
            if whole and (reader := await store.open_snapshot(SNAPSHOT_NAME)):
                with reader:
                    await _fold(store, projection, min(reader.position, last), progress)
                    divergence = _compare_with_snapshot(projection, reader)
            await _fold(store, projection, last, progress, until_time)
            progress.close()
        funnel = _ordered(projection.funnel())
        doc = {
            "position": projection.position,
            "until": until_time.isoformat() if until_time else None,
            "funnel": funnel,
            "accounts": len(projection),
            "snapshot": divergence,
        }
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"replayed up to position {projection.position}: {len(projection)} accounts")
            for state, n in funnel.items():
                print(f"  {state:<16} {n}")
            if divergence is None:
                print("snapshot: none compared")
            elif divergence["matches"]:
                print(f"snapshot at position {divergence['position']}: matches the log")
            else:
                print(f"snapshot at position {divergence['position']}: DIVERGES from the log")
                if "error" in divergence:
                    print(f"  {divergence['error']}")
                for account_id in divergence["differing_accounts"][:20]:
                    print(f"  differs: {account_id}")
        return exitcodes.OK if divergence is None or divergence["matches"] else exitcodes.PROBLEM

    return run(main)


class _SnapshotComparison(TypedDict):
    """The `snapshot` entry of `replay --json`: whether the stored snapshot matches the log."""

    position: int
    matches: bool
    differing_accounts: list[str]
    error: NotRequired[str]


def _compare_with_snapshot(at: Projection, reader: SnapshotReader) -> _SnapshotComparison:
    """Compare the log replayed up to the snapshot's position with the snapshot (read an
    account at a time)."""
    position = reader.position
    try:
        snap = Projection.from_reader(reader, fetch=reader.blob)
    except Exception as exc:
        return {"position": position, "matches": False, "error": f"unreadable: {exc}",
                "differing_accounts": []}  # fmt: skip
    if at.position != position:
        return {"position": position, "matches": False,
                "error": f"the log ends at position {at.position}, before the snapshot",
                "differing_accounts": []}  # fmt: skip
    # Account by account, decoding each side once and keeping neither: two projections of a
    # million accounts must not be held decoded at once.
    differing = sorted(i for i in {*at.ids(), *snap.ids()} if at.peek(i) != snap.peek(i))
    matches = not differing and at.application == snap.application
    return {"position": position, "matches": matches, "differing_accounts": differing}


@command
def audit_command(args: argparse.Namespace) -> int:
    account_id = args.account_id

    async def main() -> int:
        async with open_log(args.database, args.database_password) as store:
            own = [r async for r in store.read_stream(account_stream(account_id))]
            enrolments = [
                r
                async for r in store.read_stream(APPLICATION_STREAM)
                if r.type == "AccountsEnrolled"
            ]
        # An enrolled account with no events of its own yet still has a timeline: its enrolment.
        entries = timeline(sorted([*own, *enrolments], key=lambda r: r.position), account_id)
        if not entries:
            raise CommandError(f"no account {account_id!r} in the log", exitcodes.PROBLEM)
        if args.json:
            print(json.dumps({"account_id": account_id, "timeline": timeline_as_json(entries)},
                             indent=2, default=str))  # fmt: skip
        else:
            print(f"account {account_id}: {len(entries)} events")
            print(render_timeline(entries))
        return exitcodes.OK

    return run(main)


@command
def status_command(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with (
            open_log(args.database, args.database_password) as store,
            _from_snapshot(store) as read,
        ):
            projection, source, why = read
            due = projection.due_soonest(10)
            stalled = sorted(projection.ids_in("stalled"))
            funnel = _ordered(projection.funnel())
        doc = {
            "position": projection.position,
            "migration_enabled": projection.application.migration_enabled,
            "funnel": funnel,
            "due_next": [
                {"account_id": a, "timer_id": t, "due_at": d.isoformat()} for d, a, t in due
            ],
            "stalled": stalled,
            # How the state was built: the daemon's snapshot plus the log after it, or, when
            # there is none to trust (`why`), every event from the first.
            "read_from": {"source": source, "why_not_snapshot": why},
        }
        if args.json:
            print(json.dumps(doc, indent=2))
            return exitcodes.OK
        enabled = "enabled" if projection.application.migration_enabled else "not enabled"
        print(f"migration {enabled}; log position {projection.position}")
        if source == "snapshot":
            print("read from the daemon's snapshot, checked against the log, and the log after it")
        else:
            print(f"replayed from the first event: {why}")
        for state, n in funnel.items():
            print(f"  {state:<16} {n}")
        print("due next:" if due else "due next: nothing pending")
        for d, a, t in due:
            print(f"  {d.isoformat(timespec='seconds')}  {a}  ({t})")
        print(f"stalled: {len(stalled)}")
        for account_id in stalled[:50]:
            print(f"  {account_id}")
        return exitcodes.OK

    return run(main)


@command
def allowlist_command(args: argparse.Namespace) -> int:
    async def main() -> int:
        projection = Projection()  # IP lists live in the application's stream: read only that
        async with open_log(args.database, args.database_password) as store:
            async for rec in store.read_stream(APPLICATION_STREAM):
                projection.apply_record(rec)
        if not projection.application.ip_lists:
            raise CommandError("no IP list has been observed in this log yet", exitcodes.PROBLEM)
        try:
            sys.stdout.write(
                allowlist.render_observed(projection.application.ip_lists, args.format)
            )
        except allowlist.AllowlistError as exc:
            raise CommandError(str(exc), exitcodes.PROBLEM) from exc
        return exitcodes.OK

    return run(main)


@command
def backup_command(args: argparse.Namespace) -> int:
    """A consistent copy of the log, taken while the daemon writes (see eventstore.backup), then
    verified: its chain and its signed checkpoints (their signatures with the key)."""
    dest = Path(args.dest)
    key = _checkpoint_key(args)

    async def main() -> int:
        async with open_log(args.database, args.database_password) as store:
            try:
                position, digest = await store.backup(dest)
            except FileExistsError as exc:
                hint = (
                    "another backup is writing it, or one was interrupted: remove it"
                    if str(exc.filename).endswith(".partial")
                    else "a backup never replaces a file"
                )
                raise CommandError(
                    f"{exc.filename} already exists ({hint})", exitcodes.USAGE
                ) from exc
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise CommandError(f"cannot write {dest}: {reason}", exitcodes.USAGE) from exc
        async with open_log(dest) as copy:
            report = await copy.verify(key)
            checkpoints = await copy.checkpoints()
        last = checkpoints[-1] if checkpoints else None
        expect = f"{position}:{digest}" if position else None
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "dest": str(dest),
                        "head_position": position,
                        "head_hash": digest,
                        "expect": expect,
                        "events_checked": report.events_checked,
                        "checkpoints_checked": report.checkpoints_checked,
                        "checkpoint_key": key is not None,
                        "signatures_checked": report.signatures_checked,
                        "last_checkpoint": None
                        if last is None
                        else {
                            "position": last.position,
                            "head_hash": last.head_hash,
                            "created_at": format_time(last.created_at),
                            "key_id": last.key_id,
                        },
                        "damage": [
                            {"position": d.position, "kind": d.kind, "detail": d.detail}
                            for d in report.damage
                        ],
                    },
                    indent=2,
                )
            )
            return exitcodes.OK if report.ok else exitcodes.PROBLEM
        if expect is None:
            print(f"backed up an empty log to {dest}")
        else:
            print(f"backed up the log up to position {position} to {dest}")
            print(f"head {expect} (check it later: staticipd verify --expect {expect})")
        if not report.ok:
            for d in report.damage:
                what = "WRONG KEY?" if d.kind == "checkpoint_other_key" else "DAMAGE"
                print(f"{what} in the copy at position {d.position}: {d.kind}: {d.detail}")
            print(f"the copy is kept at {dest}; run staticipd verify on the log itself")
            return exitcodes.PROBLEM
        if last is None:
            signed = "no signed checkpoint in it yet"
        elif key is None:
            signed = (
                f"its last checkpoint (position {last.position}) matches the chain "
                "(signatures not checked: no key given)"
            )
        else:
            signed = (
                f"its last signed checkpoint (position {last.position}) is valid "
                f"({report.signatures_checked} signature(s) checked)"
            )
        print(f"copy verified: {report.events_checked:,} events, chain intact; {signed}")
        return exitcodes.OK

    return run(main)
