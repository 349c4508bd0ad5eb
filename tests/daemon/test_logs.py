"""Log set-up: JSON lines, context, run-time level, and no secret in any line (daemon.logs)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from daemon.logs import REDACTED, SecretRedactor, configure_logging, register_secrets, set_level

SECRET = "whsec_topsecretvalue123"
API_KEY = "prov-api-key-987654"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    register_secrets([], replace=True)
    yield out
    register_secrets([], replace=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "stream", None) is out:
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_events_are_json_lines_with_level_and_time(stream: io.StringIO) -> None:
    """Each log event is one JSON line with its level and a UTC timestamp."""
    structlog.get_logger("t").info("webhook.accepted", count=2)
    [line] = lines(stream)
    assert line["event"] == "webhook.accepted"
    assert line["count"] == 2
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_request_context_is_merged(stream: io.StringIO) -> None:
    """Ids bound for the current request appear on every line logged while handling it."""
    with structlog.contextvars.bound_contextvars(request_id="r1", account_id="a1"):
        structlog.get_logger().info("inside")
    structlog.get_logger().info("outside")
    inside, outside = lines(stream)
    assert (inside["request_id"], inside["account_id"]) == ("r1", "a1")
    assert "request_id" not in outside


def test_sensitive_keys_are_redacted(stream: io.StringIO) -> None:
    """Values under keys like signature, authorization, token, secret or api_key never show."""
    structlog.get_logger().info(
        "request",
        signature="abcdef0123",
        headers={"Authorization": "Bearer xyz-123456", "X-Nylas-Signature": "deadbeef"},
        auth_events_token="tok-1234567",
        provider_api_key="key-123456",
        webhook_secret="s3cr3t-value",
        password="hunter22",
        path="/webhooks/nylas",
    )
    [line] = lines(stream)
    text = stream.getvalue()
    for value in ("abcdef0123", "xyz-123456", "deadbeef", "tok-1234567", "key-123456", "hunter22"):
        assert value not in text
    assert line["signature"] == REDACTED
    assert line["headers"]["Authorization"] == REDACTED
    assert line["path"] == "/webhooks/nylas"


def test_registered_secret_values_are_redacted_anywhere(stream: io.StringIO) -> None:
    """A registered secret is masked inside messages, nested values, bytes and other keys."""
    register_secrets([SECRET.encode(), API_KEY])
    log = structlog.get_logger()
    log.info(f"connecting with {API_KEY}")
    log.warning("oops", detail={"list": [f"x{SECRET}y"]}, raw=SECRET.encode(), note=(API_KEY,))
    text = stream.getvalue()
    assert SECRET not in text
    assert API_KEY not in text
    assert text.count(REDACTED) == 4


def test_secret_inside_an_exception_is_redacted(stream: io.StringIO) -> None:
    """A traceback whose message contains a secret is logged with the secret masked."""
    register_secrets([API_KEY])
    try:
        raise RuntimeError(f"auth failed for {API_KEY}")
    except RuntimeError:
        structlog.get_logger().exception("provider.failed")
    text = stream.getvalue()
    assert "RuntimeError" in text
    assert API_KEY not in text


@pytest.fixture(params=["json", "console"])
def any_format(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Logging set up in each output format in turn, into a string buffer."""
    out = io.StringIO()
    configure_logging("info", request.param, stream=out)
    register_secrets([], replace=True)
    yield out
    register_secrets([], replace=True)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if getattr(h, "stream", None) is not out]
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def test_secret_in_an_exception_is_redacted_in_every_format(any_format: io.StringIO) -> None:
    """In JSON and console output alike, a secret in an exception message never shows."""
    register_secrets([API_KEY, SECRET])
    try:
        raise RuntimeError(f"auth failed for {API_KEY}")
    except RuntimeError:
        structlog.get_logger().exception("provider.failed", detail=f"with {SECRET}")
    try:
        raise ValueError(f"bad webhook secret {SECRET}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("handler crashed")
    text = any_format.getvalue()
    assert "RuntimeError" in text
    assert "ValueError" in text
    assert API_KEY not in text
    assert SECRET not in text
    assert REDACTED in text


def test_stdlib_logs_are_redacted_json_too(stream: io.StringIO) -> None:
    """Logs from libraries on the stdlib logging module (aiohttp) are JSON and redacted too."""
    register_secrets([API_KEY])
    logging.getLogger("aiohttp.server").error("bad thing with %s", API_KEY)
    [line] = lines(stream)
    assert line["event"] == f"bad thing with {REDACTED}"
    assert line["level"] == "error"


def test_level_changes_at_run_time(stream: io.StringIO) -> None:
    """Raising the level hides info lines at once; lowering it to debug shows debug lines."""
    log = structlog.get_logger()
    log.debug("hidden-1")
    set_level("warning")
    log.info("hidden-2")
    log.warning("shown-1")
    set_level("debug")
    log.debug("shown-2")
    assert [line["event"] for line in lines(stream)] == ["shown-1", "shown-2"]


def test_unknown_level_is_refused() -> None:
    """A misspelt level is an error rather than silently logging everything."""
    with pytest.raises(ValueError, match="unknown log level"):
        set_level("verbose")


def test_short_values_are_not_registered(stream: io.StringIO) -> None:
    """Registering a very short value does not mask ordinary words in every line."""
    register_secrets(["ab"])
    structlog.get_logger().info("about a cab")
    assert lines(stream)[0]["event"] == "about a cab"


def test_replace_forgets_old_secrets(stream: io.StringIO) -> None:
    """After a reload with `replace=True`, only the new secret set is in force."""
    # Two values sharing no 8-character stretch (any such stretch of a secret is masked).
    register_secrets(["old-value-Qm4x"])
    register_secrets(["new-value-Zr7w"], replace=True)
    structlog.get_logger().info("old-value-Qm4x new-value-Zr7w")
    assert lines(stream)[0]["event"] == f"old-value-Qm4x {REDACTED}"


def test_console_format_on_request() -> None:
    """The console format renders a readable, non-JSON line (colourless off a terminal)."""
    out = io.StringIO()
    try:
        configure_logging("info", "console", stream=out)
        structlog.get_logger().info("hello", signature="abc123456")
    finally:
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if getattr(h, "stream", None) is not out
        ]
        structlog.reset_defaults()
    text = out.getvalue()
    assert "hello" in text
    assert "abc123456" not in text
    assert not text.lstrip().startswith("{")
    assert "\x1b[" not in text


def test_redactor_processor_on_captured_events() -> None:
    """The redactor alone masks a captured event's signature and keeps the rest."""
    event = {"event": "x", "x_nylas_signature": "f00", "account_id": "a1"}
    assert SecretRedactor()(None, "info", event) == {
        "event": "x",
        "x_nylas_signature": REDACTED,
        "account_id": "a1",
    }
