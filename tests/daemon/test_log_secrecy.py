"""No secret, token or signature in any log line, and no flood of lines a client can cause.

End to end: a real daemon on 127.0.0.1 logs through the daemon's own logging set-up
(`configure_logging` + `register_secrets`, as `staticipd serve` does) into a buffer, at debug,
while clients plant the real signature, tokens and prefixes of them in every place they control.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import structlog
from aiohttp import http_exceptions

from daemon import logs
from daemon.logs import REDACTED, RateLimiter, scrub

FRAGMENT = 8


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """The daemon's real logging configuration, at info, writing JSON lines into a buffer.

    End-to-end tests lower it to debug; at info, the debug lines of a daemon an earlier test
    stopped (aiosqlite's worker threads finishing) cannot reach a unit test's buffer.
    """
    out = io.StringIO()
    logs.configure_logging("info", "json", stream=out)
    logs.register_secrets([], replace=True)
    yield out
    logs.register_secrets([], replace=True)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if getattr(h, "stream", None) is not out]
    root.setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def leaks(text: str, values: list[str]) -> list[str]:
    """Every 8-character stretch of any of `values` found in `text` (case-insensitive), but
    for stretches of lower-case letters, `-`, `_` and `.` alone: words, which the log keeps."""
    folded = text.lower()
    found = []
    for value in values:
        for i in range(len(value) - FRAGMENT + 1):
            stretch = value[i : i + FRAGMENT]
            if not re.fullmatch(r"[a-z_.-]+", stretch) and stretch.lower() in folded:
                found.append(stretch.lower())
    return found


async def raw_exchange(port: int, data: bytes, *, hang_up: bool = False) -> bytes:
    """Send raw bytes on a fresh connection; read the answer unless `hang_up`."""
    received = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        if hang_up:
            return b""
        with anyio.move_on_after(5):
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                pass
    return received


async def plant_everywhere(d: Any, secrets: list[str], sig: str, body: bytes) -> None:
    """Requests carrying `secrets` (and prefixes) in every place a client controls."""
    port = d.daemon.bound_port
    assert port is not None
    pieces = [p for s in secrets for p in (s, s[: len(s) - 1], s[:32], s[:16], s[:FRAGMENT])]
    # The real, valid signature, accepted.
    assert (await d.post_webhook(body, sig)).status == 200
    for piece in pieces:
        headers = {
            "X-Nylas-Signature": piece,
            "X-Request-Id": piece[:64],
            "User-Agent": piece,
            "Cookie": f"session={piece}",
            "Authorization": f"Bearer {piece}",
            "webhook-signature": f"v1,{piece}",
            "X-Anything": piece,
            f"X-{piece[:40].replace('=', '').replace('/', '')}": "1",
        }
        async with d.http.post(
            f"/webhooks/nylas/{piece}?challenge={piece}&token={piece}", data=piece, headers=headers
        ) as resp:
            await resp.read()
        async with d.http.post("/webhooks/nylas", data=body + piece.encode(), headers=headers):
            pass
        async with d.http.post(
            "/v1/auth-events", data=json.dumps({"account_id": piece}), headers=headers
        ):
            pass
        async with d.http.get(f"/v1/accounts/{piece}", headers=headers):
            pass
        async with d.http.get("/", params={"q": piece}, headers={"X-Request-Id": piece[:64]}):
            pass
        raw = piece.encode()
        for data in (
            b"GET /" + raw + b" HTTP/1.1 junk\r\n\r\n",  # malformed request line
            b"GET /?" + raw + b" HTTP/1.1\r\nHost: x\r\nX-Nylas-Signature: "
            + raw * (9000 // len(raw)) + b"\r\n\r\n",  # an over-long header line
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Nylas-Sig\x01nature: " + raw + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n" + raw + b"\r\n\r\n",  # a header line without name
            b"POST /webhooks/nylas HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz"
            + raw + b"\r\n",  # a bad chunk
            raw + b" / HTTP/1.1\r\n\r\n",  # a bad method
            b"GET / HTTP/1." + raw + b"\r\n\r\n",  # a bad version
        ):  # fmt: skip
            await raw_exchange(port, data)
        # A client that hangs up mid-body, signature and bearer token sent.
        await raw_exchange(
            port,
            b"POST /webhooks/nylas HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b"X-Nylas-Signature: " + raw + b"\r\nAuthorization: Bearer " + raw + b"\r\n\r\n{",
            hang_up=True,
        )


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_no_secret_token_or_signature_reaches_any_log_line(
    setup: Any, start_daemon: Callable[..., Any], log_buffer: io.StringIO, v2: Any
) -> None:
    """Signatures, tokens and secrets planted by clients anywhere never show in the log, not
    even 8 characters of one, at any level, whether logged by the daemon or by aiohttp."""
    body = v2("acc-secrecy", "account.connected")
    sig = setup.sign(body)
    logs.set_level("debug")  # every line, at every level
    async with start_daemon(setup) as d:
        logs.register_secrets(d.daemon.secrets.values())
        secret_values = setup.all_secret_values()
        await plant_everywhere(d, [sig, *secret_values], sig, body)
        await anyio.sleep(0.5)  # lingering lines of hung-up connections
    text = log_buffer.getvalue()
    lines = text.splitlines()
    assert len(lines) > 20
    assert any('"http.refused"' in line for line in lines)
    assert any('"http.client_gone"' in line for line in lines)
    assert REDACTED in text
    found = leaks(text, [sig, *secret_values])
    assert not found, [line for line in lines if leaks(line, found[:1])][:3]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_thousand_refused_or_abandoned_requests_log_a_bounded_number_of_lines(
    setup: Any, start_daemon: Callable[..., Any], log_buffer: io.StringIO
) -> None:
    """Hang-ups and unparseable requests are short info lines without a traceback, and a client
    repeating them cannot fill the journal: each kind is rate-limited."""
    logs.set_level("debug")  # every line, at every level
    async with start_daemon(setup) as d:
        port = d.daemon.bound_port
        assert port is not None
        before = len(log_buffer.getvalue().splitlines())
        for i in range(500):
            await raw_exchange(port, b"GET /x HTTP/1.1 junk%d\r\n\r\n" % i)
            await raw_exchange(
                port,
                b"POST /webhooks/nylas HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{",
                hang_up=True,
            )
        await anyio.sleep(0.5)
        caused = log_buffer.getvalue().splitlines()[before:]
    assert (logs.RATE_LIMIT_LINES, logs.RATE_LIMIT_WINDOW) == (10, 60.0)  # as README says
    parsed = [json.loads(line) for line in caused]
    kinds = [line["event"] for line in parsed]
    assert 0 < kinds.count("http.refused") <= logs.RATE_LIMIT_LINES
    assert 0 < kinds.count("http.client_gone") <= logs.RATE_LIMIT_LINES
    assert len(parsed) <= 4 * logs.RATE_LIMIT_LINES
    assert all(line["level"] in ("debug", "info") for line in parsed)
    assert "Traceback" not in "\n".join(caused)
    assert not any("exception" in line for line in parsed)


def test_repeated_lines_are_summed_up_once_the_window_is_over(
    log_buffer: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit, lines of one kind are dropped and then counted in one summary line."""
    now = [0.0]
    monkeypatch.setattr(logs, "_limiter", RateLimiter(lines=3, window=60.0, clock=lambda: now[0]))
    log = structlog.get_logger()
    for _ in range(10):
        log.info("http.error", status=401)
    log.info("webhook.accepted")  # not a kind clients control: never limited
    now[0] = 61.0
    log.info("daemon.tick")
    events = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert names == ["http.error"] * 3 + ["webhook.accepted", "log.suppressed", "daemon.tick"]
    summary = events[4]
    assert (summary["kind"], summary["suppressed"]) == ("http.error", 7)
    assert summary["level"] == "warning"


def test_a_parser_refusal_is_logged_without_the_bytes_it_quotes(log_buffer: io.StringIO) -> None:
    """aiohttp's "Error handling request" with a refused line becomes one `http.refused`
    info line with the error class and a short reason, no traceback and no quoted bytes."""
    sig = "0123456789abcdef" * 4
    try:
        raise http_exceptions.LineTooLong(f"X-Nylas-Signature: {sig[:63]}", "8190")
    except http_exceptions.LineTooLong:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "10.0.0.1")
    [line] = [json.loads(x) for x in log_buffer.getvalue().splitlines()]
    assert line == {
        "event": "http.refused",
        "level": "info",
        "timestamp": line["timestamp"],
        "error": "LineTooLong",
        "reason": "line too long",
        "remote": "10.0.0.1",
    }


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer abc.DEF-ghi", "Authorization: "),
        ("bearer s3cr3t-t0ken", "bearer "),
        ("X-Nylas-Signature=zz", "X-Nylas-Signature="),
        ("key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "key "),
        ("webhook v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= ok", "webhook "),
        ("GET /x/0123abcd HTTP/1.1", "GET /x/"),
        ("token Kq9ZxW1vT7pLm3Nb8RcYd", "token "),
    ],
)
def test_credential_shapes_are_masked_in_any_text(text: str, kept: str) -> None:
    """Bearer credentials, signature header values, `whsec_` keys, `v1,` signatures and runs
    that look like key material are masked wherever they appear in a line."""
    masked = scrub(text)
    assert masked.startswith(kept)
    assert REDACTED in masked
    assert len(masked) <= len(kept) + len(REDACTED) + len(" HTTP/1.1") + 3


def test_identifiers_and_ordinary_words_are_left_alone(log_buffer: io.StringIO) -> None:
    """Account ids, delivery ids, hashes, the daemon's own request ids and ordinary text
    stay readable, so a line can still be searched for what it is about."""
    delivery = "v2:" + "ab12" * 16
    structlog.get_logger().info(
        "webhook.quarantined",
        account_id="awa6ltos76vz5hvphkp8k17nt",
        delivery_id=delivery,
        head_hash="f" * 64,
        request_id="0a1b2c3d4e5f00000001",
        reason="expected an object, got array",
        path="/webhooks/nylas",
    )
    [line] = [json.loads(x) for x in log_buffer.getvalue().splitlines()]
    assert line["account_id"] == "awa6ltos76vz5hvphkp8k17nt"
    assert line["delivery_id"] == delivery
    assert line["head_hash"] == "f" * 64
    assert line["request_id"] == "0a1b2c3d4e5f00000001"
    assert line["reason"] == "expected an object, got array"
    assert line["path"] == "/webhooks/nylas"


def test_any_stretch_of_a_registered_secret_is_masked(log_buffer: io.StringIO) -> None:
    """Not only a whole secret: its prefix, suffix or any 8 characters of it are masked too,
    under any key, and a bytes secret (the checkpoint key) in its hex spelling as well."""
    token = "Tk_pq-3vLr9ZbXw2Yc8N"
    key = bytes(range(32))
    logs.register_secrets([token, key])
    structlog.get_logger().info(
        "x", account_id=token[:9], detail=f"got {token[5:]}!", note=key.hex()[10:30]
    )
    [line] = [json.loads(x) for x in log_buffer.getvalue().splitlines()]
    assert line["account_id"] == REDACTED
    assert line["detail"] == f"got {REDACTED}!"
    assert not leaks(json.dumps(line), [token, key.hex()])


def test_aiohttp_lines_are_limited_per_logger_whatever_their_text(log_buffer: io.StringIO) -> None:
    """aiohttp's own lines (an access line differs for every request) share one limit per
    logger, so varying the request does not get a client past it."""
    for i in range(3 * logs.RATE_LIMIT_LINES):
        logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /%d HTTP/1.1" 404', i)
    lines = log_buffer.getvalue().splitlines()
    assert len(lines) == logs.RATE_LIMIT_LINES
