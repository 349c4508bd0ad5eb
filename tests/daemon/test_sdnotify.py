"""Readiness notifications to systemd over a real datagram socket (daemon.sdnotify)."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

from daemon.sdnotify import notify, watchdog_period


def test_sends_to_a_path_socket(tmp_path: Path) -> None:
    """With `$NOTIFY_SOCKET` pointing at a socket file, READY=1 arrives as one datagram."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert notify("STATUS=replaying 10 events\nSTOPPING=1", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(4096) == b"READY=1"
        assert server.recv(4096) == b"STATUS=replaying 10 events\nSTOPPING=1"


@pytest.mark.skipif(sys.platform != "linux", reason="abstract sockets are Linux-only")
def test_sends_to_an_abstract_socket() -> None:
    """An `@name` socket (Linux abstract namespace) is reached without a file."""
    name = f"staticipd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": f"@{name}"})
        assert server.recv(4096) == b"READY=1"


def test_without_notify_socket_it_does_nothing() -> None:
    """Outside systemd (no `$NOTIFY_SOCKET`) notifying is a silent no-op."""
    assert notify("READY=1", {}) is False


def test_dead_socket_does_not_raise(tmp_path: Path) -> None:
    """A notify socket that no longer exists never crashes the daemon."""
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_reads_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the process's own `$NOTIFY_SOCKET` is used."""
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("STOPPING=1")
        assert server.recv(4096) == b"STOPPING=1"


def test_watchdog_period_is_half_of_watchdog_usec() -> None:
    """With `WatchdogSec=30s` (WATCHDOG_USEC=30000000) the daemon pings every 15 seconds."""
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15


def test_no_watchdog_pings_unless_systemd_asks_this_process() -> None:
    """No `WATCHDOG_USEC`, a malformed or zero one, or `WATCHDOG_PID` naming another process:
    the daemon sends no keep-alive pings."""
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    other = str(os.getpid() + 1)
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None
