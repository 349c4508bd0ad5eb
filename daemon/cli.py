"""The `staticipd` command line: one subcommand per operator task.

Exit status: 0 fine, 1 the check or operation found a problem, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon import __version__

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def default_database() -> Path:
    """`$STATICIPD_DATABASE`, else `staticipd.db` in systemd's `$STATE_DIRECTORY`, else here."""
    if env := os.environ.get("STATICIPD_DATABASE"):
        return Path(env)
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir or ".") / "staticipd.db"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staticipd",
        description="Move connected accounts into the provider's static IP environment, "
        "and keep an audit-grade log of every step.",
    )
    parser.add_argument("--version", action="version", version=f"staticipd {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return args.handler(args)
