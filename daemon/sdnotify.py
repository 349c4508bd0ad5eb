"""systemd's readiness protocol: `READY=1`, `STOPPING=1`, `STATUS=...` to `$NOTIFY_SOCKET`.

A no-op when the variable is unset (not under systemd, or `Type=simple`), so callers never check.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def _address(value: str) -> str | bytes:
    # "@name" is a Linux abstract-namespace socket: a leading NUL byte instead of the "@".
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one state string (e.g. `"READY=1"` or `"STATUS=replaying"`); True if sent.

    Errors are swallowed on purpose: a missing or full notify socket must never stop the daemon.
    """
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(target))
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
