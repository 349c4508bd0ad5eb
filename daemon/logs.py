"""Logging set-up: structlog JSON lines (or a coloured console), with secrets redacted.

Every event passes a `SecretRedactor` before rendering, and the rendered line is scrubbed of
registered secret values once more, so neither a sensitive key (`signature`, `authorization`,
`token`, ...) nor a registered secret value anywhere in an event (a traceback included, whatever
the format) reaches a log line. The level is held here and can be changed at run time
(SIGHUP reload).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

__all__ = [
    "REDACTED",
    "LevelFilter",
    "ScrubRendered",
    "SecretRedactor",
    "configure_logging",
    "current_level",
    "enabled",
    "register_secrets",
    "set_level",
]

REDACTED = "[REDACTED]"
# Substrings of key names whose values are never logged, whatever they hold.
SENSITIVE_KEYS = ("signature", "authorization", "token", "secret", "password", "api_key", "cookie")
# Shorter registered values are ignored: redacting every "ab" would garble the log while a
# secret that short is not worth protecting (check-config should flag it instead).
MIN_SECRET_LENGTH = 6

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_state: dict[str, Any] = {"level": logging.INFO, "secrets": (), "handler": None}


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
    """Redact these values wherever they appear; `replace=True` forgets earlier ones (reload)."""
    found: set[str] = set() if replace else set(_state["secrets"])
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if len(text) >= MIN_SECRET_LENGTH:
            found.add(text)
    # Longest first, so a secret containing another is replaced whole.
    _state["secrets"] = tuple(sorted(found, key=len, reverse=True))


class LevelFilter:
    """Drops events below the current level; reads it per event so `set_level` acts at once."""

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if _LEVELS.get(method_name, logging.INFO) < _state["level"]:
            raise structlog.DropEvent
        return event_dict


class SecretRedactor:
    """Masks values under sensitive keys and registered secret values, at any depth."""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict

    def _clean(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and any(word in key.lower() for word in SENSITIVE_KEYS):
            return REDACTED if value not in (None, "") else value
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, bytes):
            return self._scrub(value.decode("utf-8", "replace"))
        if isinstance(value, MutableMapping | dict):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(None, v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        # Anything else is rendered with str() later: scrub that text now.
        return self._scrub(str(value))

    @staticmethod
    def _scrub(text: str) -> str:
        for secret in _state["secrets"]:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class ScrubRendered:
    """Wraps the renderer and removes registered secrets from the finished line.

    The console renderer formats exceptions itself, after every processor ran: without this
    a secret inside an exception message would reach the console unredacted.
    """

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:
        rendered = self._renderer(logger, method_name, event_dict)
        if isinstance(rendered, str):
            return SecretRedactor._scrub(rendered)
        if isinstance(rendered, bytes):
            return SecretRedactor._scrub(rendered.decode("utf-8", "replace")).encode()
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
    # The console renderer formats exceptions itself (after the redactor): the scrub of the
    # rendered line is what keeps a secret in an exception message off the console.
    renderer: Processor = ScrubRendered(
        structlog.processors.JSONRenderer(default=str)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=is_tty)
    )
    # In JSON, exceptions become text before redaction, so a traceback is masked field-wise too.
    exc_info: list[Processor] = [structlog.processors.format_exc_info] if use_json else []
    structlog.configure(
        processors=[
            LevelFilter(),
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *exc_info,
            SecretRedactor(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_info,
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
