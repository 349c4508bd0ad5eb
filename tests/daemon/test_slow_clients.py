"""Clients that connect and then say nothing, or trickle a request's head, lose their
connection after `[http] header_timeout_seconds`; a prompt request on the same daemon is
answered as usual, and so is one whose head comes in pieces within the timeout."""

from __future__ import annotations

import time

import anyio
import pytest
from anyio.abc import SocketStream

from tests.daemon.conftest import DaemonSetup, run_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TIMEOUT = 0.5


async def closed_after(stream: SocketStream, limit: float = 10.0) -> float:
    """Seconds until the server closes `stream` (its read ends), having sent nothing."""
    started = time.monotonic()
    with anyio.fail_after(limit):
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"the server answered {data[:80]!r} instead of closing")


async def test_silent_and_trickling_clients_are_cut_off_and_prompt_ones_served(
    setup: DaemonSetup,
) -> None:
    """A connection that sends nothing, and one that sends half a request head and then a byte
    every tenth of a second, are both closed once the header timeout passes, whatever they
    trickle; a head sent in pieces within the timeout is answered, on a daemon that goes on."""
    setup.env["STATICIPD_HTTP__HEADER_TIMEOUT_SECONDS"] = str(TIMEOUT)
    async with run_daemon(setup) as d:
        port = d.daemon.bound_port
        assert port is not None
        async with await anyio.connect_tcp("127.0.0.1", port) as silent:
            assert await closed_after(silent) >= TIMEOUT * 0.8

        async with await anyio.connect_tcp("127.0.0.1", port) as trickle:
            await trickle.send(b"POST /webhooks/nylas HTTP/1.1\r\nHost: x\r\n")

            async def drip() -> None:
                for _ in range(100):
                    await anyio.sleep(0.1)
                    try:
                        await trickle.send(b"X")
                    except (anyio.BrokenResourceError, OSError):
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(drip)
                assert TIMEOUT * 0.8 <= await closed_after(trickle) < 5
                tg.cancel_scope.cancel()

        async with await anyio.connect_tcp("127.0.0.1", port) as pieces:
            await pieces.send(b"GET /healthz HTTP/1.1\r\n")
            await anyio.sleep(TIMEOUT / 4)
            await pieces.send(b"Host: x\r\nConnection: close\r\n\r\n")
            answer = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        answer += await pieces.receive()
                except anyio.EndOfStream:
                    pass
            assert answer.startswith(b"HTTP/1.1 200")

        async with d.http.get("/healthz") as resp:
            assert resp.status == 200


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    setup: DaemonSetup,
) -> None:
    """After an answer, a kept-alive connection that sends nothing more is closed after
    `[http] keepalive_timeout_seconds`."""
    setup.env["STATICIPD_HTTP__KEEPALIVE_TIMEOUT_SECONDS"] = str(TIMEOUT)
    async with run_daemon(setup) as d:
        port = d.daemon.bound_port
        assert port is not None
        async with await anyio.connect_tcp("127.0.0.1", port) as idle:
            await idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            with anyio.fail_after(5):
                while not answer.endswith(b"}"):  # the whole JSON answer
                    answer += await idle.receive()
            assert answer.startswith(b"HTTP/1.1 200")
            assert await closed_after(idle) >= TIMEOUT * 0.5
