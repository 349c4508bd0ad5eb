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


def _log(p: argparse.ArgumentParser) -> None:
    """The options of a command that reads the log: which log, and where to find the config."""
    p.add_argument(
        "--database",
        type=Path,
        default=None,
        metavar="PATH",
        help="the event log (default: the configuration's, as `serve` would open it)",
    )
    _config(p)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("STATICIPD_CONFIG"),
        metavar="PATH",
        help="TOML configuration file (default: $STATICIPD_CONFIG; none = embedded defaults)",
    )


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

    p = sub.add_parser("serve", help="run the daemon (HTTP listener, timers, effects, pollers)")
    _config(p)
    p.set_defaults(handler=_run("daemon.service", "serve_command"))

    p = sub.add_parser(
        "check-config", help="validate the configuration, print it with secrets masked"
    )
    _config(p)
    p.set_defaults(handler=_run("daemon.service", "check_config_command"))

    p = sub.add_parser("demo", help="the daemon on a sandbox provider with simulated users")
    p.add_argument("--accounts", type=int, default=200, help="simulated accounts (default 200)")
    p.add_argument(
        "--database",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the demo's log here (default: in a new temporary directory)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=600.0,
        metavar="S",
        help="compress provider and migration times S-fold (default 600: 30 min -> 3 s)",
    )
    p.add_argument("--policy", choices=("notify", "restart", "mixed"), default="mixed")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulation (default 7)")
    p.add_argument("--port", type=int, default=0, help="daemon port (default: a free one)")
    p.set_defaults(handler=_run("daemon.cli.demo", "demo_command"))

    p = sub.add_parser("replay", help="rebuild every projection from the log and print the funnel")
    _log(p)
    _json(p)
    until = p.add_mutually_exclusive_group()
    until.add_argument("--until", metavar="TIME", help="stop at this UTC time (ISO 8601)")
    until.add_argument(
        "--position", type=int, metavar="N", help="stop at this log position (0 or more)"
    )
    p.set_defaults(handler=_run("daemon.cli.logcommands", "replay_command"))

    p = sub.add_parser("audit", help="an account's full timeline: inputs, decisions, effects")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    _log(p)
    _json(p)
    p.set_defaults(handler=_run("daemon.cli.logcommands", "audit_command"))

    p = sub.add_parser("verify", help="check the hash chain and the signed checkpoints")
    _log(p)
    _json(p)
    p.add_argument(
        "--checkpoint-key-file",
        type=Path,
        metavar="PATH",
        help="key of the signed checkpoints (default: checkpoint_key in the configuration's "
        "secrets_dir, else in $CREDENTIALS_DIRECTORY; without a key the signatures are not "
        "checked)",
    )
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

    p = sub.add_parser("status", help="the funnel per state, accounts due next, stalled accounts")
    _log(p)
    _json(p)
    p.set_defaults(handler=_run("daemon.cli.logcommands", "status_command"))

    p = sub.add_parser("export", help="the log as JSON lines, each with its hash")
    _log(p)
    p.add_argument("--from", dest="from_position", type=int, default=1, metavar="POS")
    p.add_argument("--to", dest="to_position", type=int, default=None, metavar="POS")
    p.add_argument("--format", choices=("jsonl",), default="jsonl")
    p.set_defaults(handler=_run("daemon.cli.logcommands", "export_command"))

    p = sub.add_parser("allowlist", help="the provider's IP lists as a firewall allowlist")
    _log(p)
    p.add_argument("--format", choices=("plain", "json", "nftables", "iptables"), default="plain")
    p.set_defaults(handler=_run("daemon.cli.logcommands", "allowlist_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
