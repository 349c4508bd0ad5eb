"""Stopping under load, and readiness following storage, against a real daemon.

The stop test runs `staticipd serve` as a subprocess (the helpers of test_process.py) with a real
SQLite log, drives signed webhooks and auth events over several keep-alive connections, sends
SIGTERM and reads the log after the exit. The readiness test runs the daemon in-process
(conftest.py) and locks the SQLite file from another connection.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .conftest import DaemonSetup, RunningDaemon, v2_body
from .test_process import EXIT_TIMEOUT, Child, free_port, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

STREAMS = 6  # connections sending one request after another
IDLE = 2  # keep-alive connections quiet at SIGTERM, which then send one more request
# Every answer after SIGTERM comes well before the default grace (5 s) would end: none is held.
ANSWERED_WITHIN = 3.0


@pytest.fixture
def served(setup: DaemonSetup) -> tuple[DaemonSetup, int]:
    """The conftest setup on a fixed free port, logging JSON lines (as in test_process.py)."""
    port = free_port()
    setup.env["STATICIPD_LISTEN"] = f"127.0.0.1:{port}"
    setup.env["STATICIPD_LOGGING__FORMAT"] = "json"
    return setup, port


@dataclass
class Answer:
    account_id: str
    status: int
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Traffic:
    """What the clients sent and got; `unanswered` lists requests that got no answer."""

    answers: list[Answer] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand so a reset cannot pass unnoticed."""

    def __init__(self, stream: SocketStream, port: int) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.port = port

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(await anyio.connect_tcp("127.0.0.1", port), port)

    async def exchange(
        self, setup: DaemonSetup, account_id: str, traffic: Traffic
    ) -> Answer | None:
        """Send one signed webhook (even numbers) or auth event about `account_id`."""
        if int(account_id.rsplit("-", 1)[1]) % 2:
            body = json.dumps(
                {
                    "account_id": account_id,
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "event_id": account_id,
                }
            ).encode()
            head = (
                "POST /v1/auth-events HTTP/1.1\r\n"
                f"Authorization: Bearer {setup.secret('auth_events_token')}\r\n"
            )
        else:
            body = v2_body(account_id, "account.running")
            head = f"POST /webhooks/nylas HTTP/1.1\r\nX-Nylas-Signature: {setup.sign(body)}\r\n"
        request = (
            f"{head}Host: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            await self.stream.send(request)
            status_and_headers = await self.reader.receive_until(b"\r\n\r\n", 65536)
            lines = status_and_headers.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            answer_body = await self.reader.receive_exactly(int(headers["content-length"]))
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead) as exc:
            traffic.unanswered.append((account_id, repr(exc)))
            return None
        answer = Answer(account_id, status, headers, answer_body, time.monotonic())
        traffic.answers.append(answer)
        return answer


async def wait_for_line(child: Child, event: str) -> None:
    with anyio.fail_after(EXIT_TIMEOUT):
        while not any(e.get("event") == event for e in child.log_events()):
            await anyio.sleep(0.01)


async def test_sigterm_under_load_answers_every_request_and_loses_none(
    served: tuple[DaemonSetup, int],
) -> None:
    """After SIGTERM every request gets an answer at once: 2xx when recorded, else 503 with
    Retry-After and Connection: close and nothing recorded; then serve exits 0."""
    setup, port = served
    setup.env.pop("STATICIPD_HTTP__SHUTDOWN_GRACE_SECONDS")  # the default grace
    traffic = Traffic()
    started = anyio.Event()
    answered_before = 0

    async def stream(n: int, conn: Connection) -> None:
        nonlocal answered_before
        i = 0
        while True:
            i += 2 if i else 1 + n % 2  # alternate webhook and auth-event streams
            answer = await conn.exchange(setup, f"acc-s{n}-{i}", traffic)
            if answer is None or answer.headers.get("connection", "").lower() == "close":
                return
            if not started.is_set():
                answered_before += 1
                if answered_before >= 4 * STREAMS:
                    started.set()

    with spawn(setup.env, setup.workdir, port) as child:
        idle = [await Connection.open(port) for _ in range(IDLE)]
        for k, conn in enumerate(idle):
            answer = await conn.exchange(setup, f"acc-i{k}-{k}", traffic)
            assert answer is not None
            assert answer.status == 200
        async with anyio.create_task_group() as tg:
            for n in range(STREAMS):
                tg.start_soon(stream, n, await Connection.open(port))
            await started.wait()
            sigterm_at = time.monotonic()
            child.proc.send_signal(signal.SIGTERM)
            await wait_for_line(child, "daemon.stopping")
            late = [
                await c.exchange(setup, f"acc-i{k}-{k + 2}", traffic) for k, c in enumerate(idle)
            ]
        assert await anyio.to_thread.run_sync(child.proc.wait, EXIT_TIMEOUT) == 0

    assert traffic.unanswered == []
    for answer in late:  # keep-alive connections quiet at SIGTERM: refused, not reset
        assert answer is not None
        assert answer.status == 503
    refused = [a for a in traffic.answers if a.status != 200]
    assert refused, "no request met the stop"
    for answer in refused:
        assert answer.status == 503
        assert int(answer.headers["retry-after"]) > 0
        assert answer.headers["connection"].lower() == "close"
        error = json.loads(answer.body)["error"]
        assert (error["code"], error["field"]) == ("unavailable", None)
    after = [a.at - sigterm_at for a in traffic.answers if a.at > sigterm_at]
    assert after
    assert max(after) < ANSWERED_WITHIN
    recorded = {e["data"].get("account_id") for e in setup.events()}
    for answer in traffic.answers:
        assert (answer.account_id in recorded) == (answer.status == 200), answer


async def test_readyz_returns_to_200_by_itself_once_the_log_is_usable_again(
    running: RunningDaemon, v2: Any
) -> None:
    """After the log was locked by another process, /readyz is 200 again soon after the lock
    is released, with no client writing anything."""
    writer = running.daemon.store._writer
    assert writer is not None
    # Wait 50 ms for a lock instead of 5 s, so the locked write fails quickly.
    await writer._conn.call(sqlite3.Connection.execute, "PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(running.setup.database, timeout=10, check_same_thread=False)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        resp = await running.post_webhook(v2("acc-locked", "account.running"))
        assert resp.status == 503
        async with running.http.get("/readyz") as ready:
            body = await ready.json()
            assert ready.status == 503
            assert body["checks"]["log_open"] is False
        blocker.rollback()
    finally:
        blocker.close()
    position = running.daemon.live.position
    with anyio.fail_after(20):  # the probe backs off to 4 s at most
        while True:
            async with running.http.get("/readyz") as ready:
                if ready.status == 200:
                    break
            await anyio.sleep(0.1)
    assert running.daemon.live.position == position  # nothing was written to recover
    assert running.setup.events() == []
