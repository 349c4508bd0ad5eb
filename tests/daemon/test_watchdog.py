"""systemd's watchdog: the daemon sends `WATCHDOG=1` over a real datagram socket while its event
loop turns and the log's writer commits, and stops when the writer is stuck on storage."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from tests.daemon.conftest import DaemonSetup, run_daemon, v2_body
from tests.daemon.test_process import free_port, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PING = b"WATCHDOG=1"


@contextmanager
def watchdog_socket(monkeypatch: pytest.MonkeyPatch, usec: int) -> Iterator[socket.socket]:
    """A bound notify socket, with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set as systemd sets them."""
    # AF_UNIX paths are limited to ~108 bytes: a short directory, not the deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="wd-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            monkeypatch.setenv("WATCHDOG_USEC", str(usec))
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
            yield sock


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on the socket."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


async def next_ping(sock: socket.socket, timeout: float = 10.0) -> float:
    """Wait for the next `WATCHDOG=1`; returns when it was seen (the event loop's clock)."""
    with anyio.fail_after(timeout):
        while PING not in received(sock):
            await anyio.sleep(0.01)
    return anyio.current_time()


async def test_pings_arrive_every_half_watchdog_period_while_healthy(
    setup: DaemonSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `WATCHDOG_USEC` set, systemd hears `WATCHDOG=1` about every half of it, no faster."""
    usec = 400_000
    with watchdog_socket(monkeypatch, usec) as sock:
        async with run_daemon(setup) as running:
            times = [await next_ping(sock)]
            for _ in range(5):
                await running.post_webhook(v2_body(f"acc-{len(times)}", "account.running"))
                times.append(await next_ping(sock))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    period = usec / 2_000_000
    # Each ping waits a period after the last; seeing them by polling blurs that a little.
    assert min(gaps) >= period * 0.5, gaps


async def test_pings_stop_while_the_writer_is_stuck_on_a_lock_and_resume_after(
    setup: DaemonSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held on the log's file stalls every commit: the pings stop while the event loop
    still answers requests, so systemd would restart the process; they resume once it commits."""
    usec = 1_000_000
    period = usec / 2_000_000
    with watchdog_socket(monkeypatch, usec) as sock, capture_logs() as logs:
        async with run_daemon(setup) as running:
            await next_ping(sock)
            lock = sqlite3.connect(setup.database, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                async with anyio.create_task_group() as tg:

                    async def deliver(n: int) -> None:
                        await running.post_webhook(v2_body(f"acc-{n}", "account.running"))

                    async def keep_writing() -> None:
                        # Inputs keep arriving, so the writer always has the next write queued.
                        for n in range(1000):
                            tg.start_soon(deliver, n)
                            await anyio.sleep(0.05)

                    tg.start_soon(keep_writing)
                    store = running.daemon.store
                    with anyio.fail_after(10):
                        while store.writer_stalled_for() < period:
                            await anyio.sleep(0.01)
                    received(sock)  # a ping sent before the stall was noticed
                    answered = 0
                    with anyio.move_on_after(3 * period):
                        while True:  # the event loop turns: it answers every request
                            async with running.http.get("/healthz") as resp:
                                answered += resp.status == 200
                            await anyio.sleep(0.05)
                    assert PING not in received(sock)
                    assert answered > 0
                    tg.cancel_scope.cancel()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            await running.post_webhook(v2_body("after", "account.running"))
            await next_ping(sock)
    stalls = [e for e in logs if e["event"] == "watchdog.writer_stalled"]
    assert len(stalls) == 1  # said once per stall, not at every skipped ping
    assert stalls[0]["seconds"] >= period


@pytest.mark.parametrize("own_pid", [True, False])
def test_serve_pings_only_when_the_watchdog_is_its_own(setup: DaemonSetup, own_pid: bool) -> None:
    """`staticipd serve` under `WATCHDOG_USEC` pings after READY=1; told the watchdog is another
    process's (`WATCHDOG_PID`), it sends none."""
    port = free_port()
    setup.env.update({"STATICIPD_LISTEN": f"127.0.0.1:{port}", "STATICIPD_LOGGING__FORMAT": "json"})
    with tempfile.TemporaryDirectory(prefix="wd-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(20)
            env = {**setup.env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
            if not own_pid:
                env["WATCHDOG_PID"] = "1"
            with spawn(env, setup.workdir, port) as child:
                assert sock.recv(4096) == b"READY=1"
                if own_pid:
                    pings = 0
                    while pings < 3:
                        pings += sock.recv(4096) == PING
                else:
                    # Long enough for several pings at 0.2 s, had any been sent.
                    child.request("GET", "/healthz")
                    sock.settimeout(1.0)
                    heard = []
                    with contextlib.suppress(TimeoutError):
                        while True:
                            heard.append(sock.recv(4096))
                    assert PING not in heard
                assert child.stop() == 0
