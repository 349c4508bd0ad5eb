"""The `staticipd` command line: one subcommand per operator task.

Exit statuses are named, with their meaning, in `daemon.exitcodes`.
The log commands take `--database PATH`, else use the log the configuration names (`--config`,
default `$STATICIPD_CONFIG`; then `STATICIPD_DATABASE`; then `staticipd.db` in systemd's
`$STATE_DIRECTORY` or the current directory), as `serve` does. Only `serve` and `demo` write to
a log; the others open it read-only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from daemon import __version__, exitcodes
from daemon.memory import tune_gc


def _log(p: argparse.ArgumentParser, helps: str = "the event log (default: the configuration's, "
         "as `serve` would open it)") -> None:  # fmt: skip
    """The options of a command that reads the log: which log, and where to find the config."""
    p.add_argument("--database", type=_database, default=None, metavar="PATH", help=helps)
    _config(p)


def _database(value: str) -> Path | str:
    """A log's file path, or a PostgreSQL URL kept as text (README, "PostgreSQL")."""
    return value if value.startswith(("postgresql://", "postgres://")) else Path(value)


def _url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(f"want a postgresql:// URL, not {value!r}")
    return value


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _key_file(p: argparse.ArgumentParser, helps: str) -> None:
    p.add_argument("--checkpoint-key-file", type=Path, metavar="PATH", help=helps)


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("STATICIPD_CONFIG"),
        metavar="PATH",
        help="TOML configuration file (default: $STATICIPD_CONFIG; none = embedded defaults)",
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless there is none to show or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with what it does and shows the defaults."""
    return sub.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".",
        formatter_class=_Formatter,
    )  # fmt: skip


def _run(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """Import a command's module only when it runs, so `--help` stays instant."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staticipd",
        description="Move connected accounts into the provider's static IP environment, "
        "and keep an audit-grade log of every step.",
    )
    parser.add_argument("--version", action="version", version=f"staticipd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "serve", "run the daemon (HTTP listener, timers, effects, pollers)")
    _log(p, "the event log, created if missing (default: `[database] path` of the "
         "configuration, else staticipd.db in $STATE_DIRECTORY or here)")  # fmt: skip
    p.set_defaults(handler=_run("daemon.service", "serve_command"))

    p = _command(sub, "check-config", "validate the configuration, print it with secrets masked")
    _log(p, "the event log `serve --database` would open (default: the configuration's)")
    p.set_defaults(handler=_run("daemon.service", "check_config_command"))

    p = _command(sub, "demo", "the daemon on a sandbox provider with simulated users")
    p.add_argument("--accounts", type=int, default=200, help="simulated accounts")
    p.add_argument(
        "--database",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the demo's log here, and its checkpoint key beside it as "
        "PATH.checkpoint-key (default: in a new temporary directory, the key not kept); "
        "a file that already holds a log is refused without --continue",
    )
    p.add_argument(
        "--continue", dest="go_on", action="store_true",
        help="go on with an earlier demo's --database log, with the key kept beside it "
        "(another --seed gives new simulated accounts)",
    )  # fmt: skip
    p.add_argument(
        "--time-scale",
        type=float,
        default=600.0,
        metavar="S",
        help="compress provider and migration times S-fold (default 600: 30 min -> 3 s)",
    )
    p.add_argument(
        "--policy", choices=("notify", "restart", "mixed"), default="mixed",
        help="the second step: notify asks each user to authenticate again, restart restarts "
        "the account's sync at the provider, mixed enrols half the accounts in a wave of each",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=7, help="seed of the simulation")
    p.add_argument(
        "--port", type=int, default=0, help="daemon port on 127.0.0.1 (default: a free one)"
    )
    p.set_defaults(handler=_run("daemon.cli.demo", "demo_command"))

    p = _command(sub, "replay", "rebuild every projection from the log and print the funnel")
    _log(p)
    _json(p)
    until = p.add_mutually_exclusive_group()
    until.add_argument("--until", metavar="TIME", help="stop at this UTC time (ISO 8601)")
    until.add_argument(
        "--position", type=int, metavar="N", help="stop at this log position (0 or more)"
    )
    p.set_defaults(handler=_run("daemon.cli.logcommands", "replay_command"))

    p = _command(sub, "audit", "an account's full timeline: inputs, decisions, effects")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    _log(p)
    _json(p)
    p.set_defaults(handler=_run("daemon.cli.logcommands", "audit_command"))

    p = _command(sub, "verify", "check the hash chain and the signed checkpoints")
    _log(p)
    _json(p)
    _key_file(p, "key of the signed checkpoints (default: checkpoint_key in the configuration's "
              "secrets_dir, else in $CREDENTIALS_DIRECTORY; without a key the signatures are not "
              "checked)")  # fmt: skip
    p.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="POS:HASH",
        help="a head written down earlier (this command's output, or the daemon's "
        "checkpoint.written log line): the row at POS must still have HASH; repeatable, no key "
        "needed",
    )
    p.set_defaults(handler=_run("daemon.cli.logcommands", "verify_command"))

    p = _command(
        sub, "backup", "copy the log consistently while the daemon runs, then verify the copy"
    )
    p.add_argument(
        "dest", type=Path, metavar="DEST",
        help="the new file to write (refused if it exists; written as DEST.partial, then renamed)",
    )  # fmt: skip
    _log(p)
    _json(p)
    _key_file(p, "key of the signed checkpoints, to check the copy's signatures (default: as "
              "for verify; without a key the signatures are not checked)")  # fmt: skip
    p.set_defaults(handler=_run("daemon.cli.logcommands", "backup_command"))

    p = _command(sub, "create-log", "create the log's tables in an empty PostgreSQL database")
    p.add_argument("database", type=_url, metavar="URL", help="postgresql://OWNER@HOST/DB")
    _config(p)
    p.set_defaults(handler=_run("daemon.cli.copylog", "create_log_command"))

    p = _command(
        sub, "copy-log", "copy an SQLite log into an empty PostgreSQL database, then verify it"
    )
    p.add_argument("source", type=Path, metavar="SOURCE", help="the SQLite log to copy")
    p.add_argument("database", type=_url, metavar="URL", help="postgresql://OWNER@HOST/DB")
    _config(p)
    _key_file(p, "key of the signed checkpoints, to check the copy's signatures (default: as "
              "for verify; without a key the signatures are not checked)")  # fmt: skip
    p.set_defaults(handler=_run("daemon.cli.copylog", "copy_log_command"))

    p = _command(sub, "status", "the funnel per state, accounts due next, stalled accounts")
    _log(p)
    _json(p)
    p.set_defaults(handler=_run("daemon.cli.logcommands", "status_command"))

    p = _command(sub, "export", "the log as JSON lines, each with its hash")
    _log(p)
    p.add_argument("--from", dest="from_position", type=int, default=1, metavar="POS",
                   help="first position to export")  # fmt: skip
    p.add_argument("--to", dest="to_position", type=int, default=None, metavar="POS",
                   help="last position to export (default: the head)")  # fmt: skip
    p.add_argument("--format", choices=("jsonl",), default="jsonl", help="output format")
    p.set_defaults(handler=_run("daemon.cli.logcommands", "export_command"))

    p = _command(sub, "allowlist", "the provider's IP lists as a firewall allowlist")
    _log(p)
    p.add_argument(
        "--format", choices=("plain", "json", "nftables", "iptables"), default="plain",
        help="plain: one address or range per line; json; or rules for nftables or iptables",
    )  # fmt: skip
    p.set_defaults(handler=_run("daemon.cli.logcommands", "allowlist_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    tune_gc()
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # here, where a reader gone away can still be handled
        return status
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # `staticipd check-config | head -1`: the reader has what it wanted. End quietly, and
        # keep the interpreter's own last flush from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
