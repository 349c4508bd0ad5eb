"""Read-only commands over the log: replay, audit, verify, status, export, allowlist.

None of them writes to the log or trusts a snapshot: each rebuilds what it shows from the
events themselves, so what an auditor sees is what the log proves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from daemon.progress import Progress
from eventstore import DatabaseCorrupt, DatabaseMissing, EventStore, EventStoreError
from eventstore.chain import GENESIS, format_time

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@asynccontextmanager
async def open_log(path: Path) -> AsyncIterator[EventStore]:
    """Open an existing log; a missing or damaged file is a clear error, never a new empty log."""
    try:
        store = await EventStore.open(path, create=False)
    except DatabaseMissing as exc:
        raise CommandError(
            f"no event log at {path} (set --database or STATICIPD_DATABASE)", EXIT_USAGE
        ) from exc
    except DatabaseCorrupt as exc:
        raise CommandError(f"{path} is damaged or not a staticipd log: {exc}", 1) from exc
    except EventStoreError as exc:
        raise CommandError(f"cannot open {path}: {exc}", EXIT_PROBLEM) from exc
    try:
        yield store
    finally:
        await store.close()


def run(main: Callable[[], Awaitable[int]]) -> int:
    try:
        return anyio.run(main)
    except CommandError as exc:
        print(f"staticipd: {exc}", file=sys.stderr)
        return exc.status
    except EventStoreError as exc:
        print(f"staticipd: the event log failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


def _checkpoint_key(args: argparse.Namespace) -> bytes | None:
    path = args.checkpoint_key_file
    if path is None and (creds := os.environ.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(creds) / "checkpoint_key"
        path = candidate if candidate.exists() else None
    if path is None:
        return None
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise CommandError(f"cannot read the checkpoint key {path}: {exc.strerror}", 2) from exc


def verify_command(args: argparse.Namespace) -> int:
    key = _checkpoint_key(args)

    async def main() -> int:
        async with open_log(args.database) as store:
            progress = Progress("verify")
            report = await store.verify(key, progress=progress)
            progress.close()
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "events_checked": report.events_checked,
                        "head_position": report.head_position,
                        "head_hash": report.head_hash,
                        "checkpoints_checked": report.checkpoints_checked,
                        "checkpoint_key": key is not None,
                        "damage": [
                            {"position": d.position, "kind": d.kind, "detail": d.detail}
                            for d in report.damage
                        ],
                    },
                    indent=2,
                )
            )
        elif report.ok:
            signed = (
                f", {report.checkpoints_checked} signed checkpoint(s) valid"
                if key is not None
                else " (signed checkpoints not checked: no key given)"
            )
            print(
                f"ok: {report.events_checked:,} events, chain intact up to position "
                f"{report.head_position} ({report.head_hash}){signed}"
            )
        else:
            for d in report.damage:
                print(f"DAMAGE at position {d.position}: {d.kind}: {d.detail}")
        return EXIT_OK if report.ok else EXIT_PROBLEM

    return run(main)


def export_command(args: argparse.Namespace) -> int:
    """One JSON object per line with the exact stored fields, so the chain can be recomputed
    outside this program (see eventstore.chain for the canonical encoding)."""

    async def main() -> int:
        async with open_log(args.database) as store:
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
        return EXIT_OK

    return run(main)
