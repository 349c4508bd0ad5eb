"""The exit statuses of every `staticipd` command, `serve` included, each meaning named once.

README's "Exit status" sentence and systemd's restart policy both rely on these numbers.
"""

from __future__ import annotations

from typing import Final

__all__ = ["INTERRUPTED", "LEADERSHIP_LOST", "OK", "PROBLEM", "USAGE"]

OK: Final = 0
"""The command did what was asked, and any check it ran found nothing wrong."""

PROBLEM: Final = 1
"""A check or operation found a problem: the log is damaged or not ours, a command could not
finish, or the daemon failed while running (systemd restarts it)."""

USAGE: Final = 2
"""Usage or configuration error: bad options, a configuration `serve` would refuse, a missing
database or unreadable key file; said in one line before anything runs."""

LEADERSHIP_LOST: Final = 3
"""`serve` on a PostgreSQL log lost the leader lock (its lock session ended, or a commit was
fenced): it stops at once, writing nothing more, and systemd restarts it as a standby."""

INTERRUPTED: Final = 130
"""Stopped by Ctrl-C (SIGINT), as a shell reports it: 128 + the signal's number."""
