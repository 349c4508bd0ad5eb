"""Logging set-up: structlog JSON lines (or a coloured console), with secrets redacted.

Every line, whether logged by the daemon through structlog or by a library (aiohttp, aiosqlite)
through the stdlib `logging` module, passes the same chain before it is rendered:

- What aiohttp's HTTP parser refused (a bad request line, an over-long or invalid header line,
  a bad chunk) is one `http.refused` line at info naming the error class and a short reason;
  its message, which quotes the raw bytes the client sent, and its traceback are never logged.
  A client that hangs up mid-request is one `http.client_gone` line at info, no traceback.
- Lines a client can cause at will (`http.*` events and aiohttp's own lines) are rate-limited
  per kind: at most `RATE_LIMIT_LINES` a `RATE_LIMIT_WINDOW`, then one `log.suppressed` line
  saying how many were dropped (written with the next line once the window is over).
- `SecretRedactor` masks the values under sensitive keys (`signature`, `authorization`,
  `token`, ...), every stretch of 8 or more characters of a registered secret (so a prefix of a
  token is masked too; a stretch of only lower-case letters, `-`, `_` or `.` is a word, not key
  material, and is masked only as part of a longer stretch), bearer credentials, signature
  header values, `whsec_` keys and `v1,` signatures, and runs that look like key material:
  8 or more hex digits, or 16 or more base64 characters mixing upper case, lower case and
  digits. The run rule spares the identifiers the daemon logs on purpose (`account_id`,
  `delivery_id`, `head_hash`, ..., `IDENTIFIER_KEYS`) and its own request ids (20 hex
  digits); the other rules apply everywhere.
- The rendered line is scrubbed of registered secrets once more, so a secret that reached
  a renderer some other way is masked too.

The level is held here and can be changed at run time (SIGHUP reload).
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from aiohttp import http_exceptions
from structlog.typing import EventDict, Processor

__all__ = [
    "IDENTIFIER_KEYS",
    "RATE_LIMIT_LINES",
    "RATE_LIMIT_WINDOW",
    "REDACTED",
    "LevelFilter",
    "RateLimiter",
    "ScrubRendered",
    "SecretRedactor",
    "configure_logging",
    "current_level",
    "enabled",
    "register_secrets",
    "scrub",
    "set_level",
]

REDACTED = "[REDACTED]"
# Substrings of key names whose values are never logged, whatever they hold.
SENSITIVE_KEYS = ("signature", "authorization", "token", "secret", "password", "api_key", "cookie")
# Shorter registered values are ignored: redacting every "ab" would garble the log while a
# secret that short is not worth protecting (check-config should flag it instead).
MIN_SECRET_LENGTH = 6
# Any stretch this long of a registered secret is masked, not only the whole value.
SECRET_FRAGMENT = 8
# Values the daemon logs on purpose to be searched for: spared the hex/base64 run rule.
IDENTIFIER_KEYS = frozenset(
    {
        "account_id", "grant_id", "delivery_id", "event_id", "input_id", "stream", "key",
        "head_hash", "hash", "prev_hash", "timer_id", "correlation_id", "causation_id",
        "database", "listen", "timestamp", "level", "logger",
    }
)  # fmt: skip
# Lines of one kind kept per window; the rest are counted in one `log.suppressed` line.
RATE_LIMIT_LINES = 10
RATE_LIMIT_WINDOW = 60.0

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_state: dict[str, Any] = {
    "level": logging.INFO,
    "secrets": (),
    "fragments": frozenset(),
    "handler": None,
}

# --- what looks like a credential, wherever it is --------------------------------------------

_CREDENTIAL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: Bearer <t>`, `Basic <t>` in any text (a request line, a repr, ...).
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+"), rf"\1\2{REDACTED}"),
    # A header written out: `X-Nylas-Signature: <v>`, `webhook-signature=<v>`, ...
    (
        re.compile(
            r"(?i)\b(x-nylas-signature|webhook-signature|authorization|x-api-key|cookie)"
            r"(\s*[:=]\s*)[^\r\n\"'\\]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]*"), REDACTED),  # a Standard Webhooks secret
    (re.compile(r"\bv1,[A-Za-z0-9+/=]{8,}"), REDACTED),  # a Standard Webhooks signature
)
_HEX_RUN = re.compile(r"[0-9a-fA-F]{8,}")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+_=-]{16,}")
_WORDLIKE = re.compile(r"[a-z_.-]+")
_OWN_REQUEST_ID = re.compile(r"[0-9a-f]{20}")  # daemon.http.errors: 12 random + 8 counter


def _masked_run(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = (
        any(c.isdigit() for c in text)
        and any(c.islower() for c in text)
        and any(c.isupper() for c in text)
    )
    return REDACTED if mixed else text


def _mask_fragments(text: str, fragments: frozenset[str]) -> str:
    """Replace each stretch covered by registered-secret fragments with one REDACTED."""
    folded = text.lower()
    spans: list[list[int]] = []
    for start in range(len(folded) - SECRET_FRAGMENT + 1):
        if folded[start : start + SECRET_FRAGMENT] in fragments:
            end = start + SECRET_FRAGMENT
            if spans and start <= spans[-1][1]:
                spans[-1][1] = end
            else:
                spans.append([start, end])
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts += [text[last:start], REDACTED]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def scrub(text: str, *, runs: bool = True) -> str:
    """`text` with registered secrets (and any 8-character stretch of one), credentials and,
    when `runs`, hex/base64 runs that look like key material replaced by REDACTED."""
    for secret in _state["secrets"]:  # whole values first, longest first
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _state["fragments"]:
        text = _mask_fragments(text, _state["fragments"])
    for credential, replacement in _CREDENTIAL_PATTERNS:
        text = credential.sub(replacement, text)
    if runs:
        text = _HEX_RUN.sub(REDACTED, text)
        text = _BASE64_RUN.sub(_masked_run, text)
    return text


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {list(_LEVELS)}") from None


def set_level(level: str | int) -> None:
    """Change the minimum level of every logger now (no restart)."""
    number = _level_number(level)
    _state["level"] = number
    logging.getLogger().setLevel(number)


def current_level() -> int:
    """The minimum level (a `logging` number) lines are kept at now."""
    return int(_state["level"])


def enabled(level: str) -> bool:
    """Whether lines at `level` are kept now: lets a hot path skip building a line nobody keeps.

    structlog builds a logger (and runs the level filter) on every call, which costs a few µs
    even for a line that is dropped; per-request debug lines ask first.
    """
    return _LEVELS[level] >= _state["level"]


def register_secrets(values: Iterable[str | bytes], *, replace: bool = False) -> None:
    """Redact these values wherever they appear; `replace=True` forgets earlier ones (reload).

    A bytes value (the checkpoint key) is also known by its hex and base64 spellings.
    """
    found: set[str] = set() if replace else set(_state["secrets"])
    for value in values:
        texts = [value] if isinstance(value, str) else _spellings(value)
        for text in texts:
            text = text.strip()
            if len(text) >= MIN_SECRET_LENGTH:
                found.add(text)
    # Longest first, so a secret containing another is replaced whole.
    _state["secrets"] = tuple(sorted(found, key=len, reverse=True))
    # Secrets shorter than a fragment are matched whole, by the value list above.
    # A stretch of lower-case letters is a word ("operator" in a hand-chosen token), not key
    # material: masking it would garble every line that says the word.
    fragments = (
        text[i : i + SECRET_FRAGMENT]
        for text in found
        for i in range(len(text) - SECRET_FRAGMENT + 1)
    )
    _state["fragments"] = frozenset(f.lower() for f in fragments if not _WORDLIKE.fullmatch(f))


def _spellings(value: bytes) -> list[str]:
    return [
        value.decode("utf-8", "replace"),
        value.hex(),
        base64.b64encode(value).decode("ascii").rstrip("="),
        base64.urlsafe_b64encode(value).decode("ascii").rstrip("="),
    ]


class LevelFilter:
    """Drops events below the current level; reads it per event so `set_level` acts at once."""

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if _LEVELS.get(method_name, logging.INFO) < _state["level"]:
            raise structlog.DropEvent
        return event_dict


# --- what clients cause: parser refusals and hang-ups, tamed and rate-limited ----------------

_SHORT_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "line too long"),
    (http_exceptions.BadStatusLine, "bad request line"),
    (http_exceptions.InvalidHeader, "invalid header"),
    (http_exceptions.ContentLengthError, "body shorter than its Content-Length"),
    (http_exceptions.TransferEncodingError, "bad chunked body"),
    (http_exceptions.ContentEncodingError, "bad content encoding"),
    (http_exceptions.PayloadEncodingError, "bad body"),
    (http_exceptions.BadHttpMethod, "bad method"),
    (http_exceptions.HttpProcessingError, "malformed request"),
)
_PLAIN_PHRASE = re.compile(r"[A-Za-z ]{3,60}")
_SERVER_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.internal", "aiohttp.access")


def _chain(exc: BaseException | None) -> Iterable[BaseException]:
    seen = 0
    while exc is not None and seen < 16:
        yield exc
        seen += 1
        exc = exc.__cause__ or exc.__context__


def _refusal(exc: BaseException | None) -> tuple[str, str] | None:
    """(class name, short reason without any byte the client sent) for a parser refusal."""
    for link in _chain(exc):
        if isinstance(link, http_exceptions.HttpProcessingError):
            reason = next(r for cls, r in _SHORT_REASONS if isinstance(link, cls))
            # aiohttp's message opens with a fixed phrase ("Invalid header token:") before it
            # quotes the bytes; that phrase is kept when it is plain words, nothing else is.
            phrase = str(getattr(link, "message", "")).split(":", 1)[0].split("\n", 1)[0]
            if _PLAIN_PHRASE.fullmatch(phrase):
                reason = phrase.strip().lower()
            return type(link).__name__, reason
    return None


def _hang_up(exc: BaseException | None) -> str | None:
    """The class name when `exc` is a client going away (reset, broken pipe, lost)."""
    for link in _chain(exc):
        if isinstance(link, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return type(link).__name__
    return None


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return None


def _tamed(event: str, exc: BaseException | None, *, server: bool) -> tuple[str, dict[str, Any]]:
    """The event name and fields replacing an exception a client caused, or ("", {})."""
    refused = _refusal(exc)
    if refused is not None:
        name = "http.refused" if server or event.startswith("http.") else event
        return name, {"error": refused[0], "reason": refused[1]}
    gone = _hang_up(exc)
    if gone is not None and (server or event == "http.unhandled"):
        return "http.client_gone", {"error": gone}
    return "", {}


class RateLimiter:
    """At most `lines` lines of one kind per `window` seconds; counts the rest.

    `allow(kind)` says whether a line of `kind` is kept and returns the (kind, count) of every
    window that ended with lines suppressed, for the caller to report in one line each.
    """

    def __init__(
        self,
        lines: int = RATE_LIMIT_LINES,
        window: float = RATE_LIMIT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines, self.window, self.clock = lines, window, clock
        self._windows: dict[str, list[float]] = {}  # kind -> [start, kept, suppressed]
        self._pending = 0  # windows holding suppressed lines
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every window (a new logging set-up starts afresh)."""
        with self._lock:
            self._windows.clear()
            self._pending = 0

    def allow(self, kind: str | None) -> tuple[bool, list[tuple[str, int]]]:
        now = self.clock()
        due: list[tuple[str, int]] = []
        with self._lock:
            if self._pending:
                for name, (start, _, suppressed) in list(self._windows.items()):
                    if suppressed and now - start >= self.window:
                        due.append((name, int(suppressed)))
                        del self._windows[name]
                        self._pending -= 1
            if kind is None:
                return True, due
            entry = self._windows.get(kind)
            if entry is None or now - entry[0] >= self.window:
                entry = self._windows[kind] = [now, 0, 0]
            if entry[1] < self.lines:
                entry[1] += 1
                return True, due
            if not entry[2]:
                self._pending += 1
            entry[2] += 1
            return False, due


_limiter = RateLimiter()
_summary_log = logging.getLogger("daemon.logs")


def _report_suppressed(due: list[tuple[str, int]]) -> None:
    for kind, count in due:
        _summary_log.warning(
            "log.suppressed",
            extra={
                "staticipd_fields": {
                    "kind": kind,
                    "suppressed": count,
                    "window_seconds": _limiter.window,
                }
            },
        )


def _rate_limited_kind(event: Any, logger_name: str | None) -> str | None:
    if logger_name is not None:  # a stdlib record
        if event == "log.suppressed" and logger_name == _summary_log.name:
            return None
        if not logger_name.startswith("aiohttp"):
            return None
        # A tamed line by its name; any other by its logger (an access line's text is unique).
        return event if isinstance(event, str) and event.startswith("http.") else logger_name
    return event if isinstance(event, str) and event.startswith("http.") else None


class TameClientErrors:
    """structlog processor: parser refusals and hang-ups become one short line (no traceback)."""

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" not in event_dict:
            return event_dict
        name, fields = _tamed(
            str(event_dict.get("event", "")), _exception(event_dict["exc_info"]), server=False
        )
        if not name:
            return event_dict
        del event_dict["exc_info"]
        event_dict["event"] = name
        event_dict.update(fields)
        if name in ("http.refused", "http.client_gone"):
            event_dict["level"] = "info"
            if _state["level"] > logging.INFO:
                raise structlog.DropEvent
        return event_dict


class RateLimit:
    """structlog processor: `http.*` lines are rate-limited per event name (`RateLimiter`)."""

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        keep, due = _limiter.allow(_rate_limited_kind(event_dict.get("event"), None))
        if due:
            _report_suppressed(due)
        if not keep:
            raise structlog.DropEvent
        return event_dict


class _StdlibGate(logging.Filter):
    """Handler filter for stdlib records: tames aiohttp's client errors, applies the level
    the record ends up with, and rate-limits aiohttp's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        server = record.name.startswith(_SERVER_LOGGERS)
        if record.exc_info:
            exc = _exception(record.exc_info)
            name, fields = _tamed(str(record.msg), exc, server=server)
            if name:
                remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
                if isinstance(remote, str):
                    fields["remote"] = remote
                record.msg, record.args = name, ()
                record.exc_info, record.exc_text = None, None
                record.staticipd_fields = fields
                level = min(record.levelno, logging.INFO)
                record.levelno, record.levelname = level, logging.getLevelName(level)
        if record.levelno < _state["level"]:
            return False
        kind = record.msg if isinstance(record.msg, str) else None
        keep, due = _limiter.allow(_rate_limited_kind(kind, record.name))
        if due:
            _report_suppressed(due)
        return keep


def _record_fields(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    fields = getattr(record, "staticipd_fields", None)
    if isinstance(fields, dict):
        event_dict.update(fields)
    return event_dict


class SecretRedactor:
    """Masks sensitive keys, registered secrets and credential-looking text, at any depth."""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict

    def _clean(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and any(word in key.lower() for word in SENSITIVE_KEYS):
            return REDACTED if value not in (None, "") else value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            if key == "request_id" and _OWN_REQUEST_ID.fullmatch(value):
                return value
            return scrub(value, runs=key not in IDENTIFIER_KEYS)
        if isinstance(value, MutableMapping | dict):
            return {
                scrub(k) if isinstance(k, str) else k: self._clean(k, v) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(None, v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        # Anything else is rendered with str() later: scrub that text now.
        return scrub(str(value))

    @staticmethod
    def _scrub(text: str) -> str:
        return scrub(text, runs=False)


class ScrubRendered:
    """Wraps the renderer and removes registered secrets and credentials from the finished line.

    A last net: whatever reached the renderer some other way is masked in the line itself.
    """

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:
        rendered = self._renderer(logger, method_name, event_dict)
        if isinstance(rendered, str):
            return scrub(rendered, runs=False)
        if isinstance(rendered, bytes):
            return scrub(rendered.decode("utf-8", "replace"), runs=False).encode()
        return rendered


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str | int = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    stream: TextIO | None = None,
) -> None:
    """Send structlog and stdlib (aiohttp) logs to `stream` (stderr), redacted.

    `auto` renders JSON lines unless the stream is a terminal, where a coloured console is
    easier to read. Safe to call again (e.g. on SIGHUP): the previous set-up is replaced.
    """
    out = stream if stream is not None else sys.stderr
    is_tty = bool(getattr(out, "isatty", lambda: False)())
    use_json = fmt == "json" or (fmt == "auto" and not is_tty)
    renderer: Processor = ScrubRendered(
        structlog.processors.JSONRenderer(default=str)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=is_tty)
    )
    # Exceptions become text before redaction in both formats, so a traceback is masked like
    # any other value (the console shows it as plain text).
    structlog.configure(
        processors=[
            LevelFilter(),
            *_shared_processors(),
            TameClientErrors(),
            RateLimit(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            SecretRedactor(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _limiter.reset()
    handler = logging.StreamHandler(out)
    handler.addFilter(_StdlibGate())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), _record_fields],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                SecretRedactor(),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _state["handler"] is not None:
        root.removeHandler(_state["handler"])
    root.addHandler(handler)
    _state["handler"] = handler
    set_level(level)
