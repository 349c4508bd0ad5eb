"""systemd's readiness protocol: `READY=1`, `STOPPING=1`, `STATUS=...` to `$NOTIFY_SOCKET`,
and the watchdog's keep-alive `WATCHDOG=1` when the unit sets `WatchdogSec=`.

A no-op when the variable is unset (not under systemd, or `Type=simple`), so callers never check.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import anyio

__all__ = ["keep_alive", "notify", "watchdog_period"]


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


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alive pings (half of `$WATCHDOG_USEC`), or None when systemd expects
    none from this process: no `$WATCHDOG_USEC`, or `$WATCHDOG_PID` names another process."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def keep_alive(
    period: float, healthy: Callable[[], bool], env: Mapping[str, str] | None = None
) -> None:
    """Send `WATCHDOG=1` every `period` seconds while `healthy()` says so; never returns.

    The pings stop when the event loop stops turning (this task no longer runs) or when
    `healthy()` is false, and systemd then restarts the process after `WatchdogSec=`.
    """
    while True:
        if healthy():
            notify("WATCHDOG=1", env)
        await anyio.sleep(period)
