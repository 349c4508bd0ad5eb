"""`create-log` and `copy-log`: a log's tables in PostgreSQL, and an SQLite log moved up into
them (README, "PostgreSQL"). The only commands besides `serve` and `demo` that write a log, and
only into a database that holds none yet."""

from __future__ import annotations

import argparse

from daemon import exitcodes
from daemon.cli.logcommands import (
    CommandError,
    _checkpoint_key,
    command,
    open_log,
    run,
)
from eventstore import DatabaseMissing, EventStore
from eventstore.postgres import redact_url
from eventstore.postgres.copy import TargetNotEmpty, copy_sqlite_log


@command
def create_log_command(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with EventStore.open(args.database, password=args.database_password) as store:
            position, digest = await store.head()
        print(f"log ready at {redact_url(args.database)}, head {position}:{digest}")
        return exitcodes.OK

    return run(main)


@command
def copy_log_command(args: argparse.Namespace) -> int:
    key = _checkpoint_key(args)

    async def main() -> int:
        try:
            copied = await copy_sqlite_log(args.source, args.database, args.database_password)
        except DatabaseMissing as exc:
            raise CommandError(f"no event log at {args.source}", exitcodes.USAGE) from exc
        except TargetNotEmpty as exc:
            raise CommandError(str(exc), exitcodes.USAGE) from exc
        async with open_log(args.database, args.database_password) as store:
            report = await store.verify(key)
        print(f"copied {copied} events, head {report.head_position}:{report.head_hash}")
        if report.ok:
            signed = f", {report.signatures_checked} signatures" if key is not None else ""
            print(f"verified: chain intact, {report.checkpoints_checked} checkpoints{signed}")
            return exitcodes.OK
        for d in report.damage:
            print(f"DAMAGE at position {d.position}: {d.kind}: {d.detail}")
        return exitcodes.PROBLEM

    return run(main)
