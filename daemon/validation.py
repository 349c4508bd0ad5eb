"""msgspec's validation errors read as (field, reason): for HTTP answers, webhooks, the config."""

from __future__ import annotations

import re

import msgspec

_ERROR_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_FIELD_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def validation_field(error: msgspec.ValidationError, prefix: str = "$") -> tuple[str, str]:
    """msgspec's "reason - at `$.path`" as (field, reason), the field under `prefix`.

    A missing or unknown field is reported at its parent ("Object missing required field
    `account_id`"), so its name is joined to the path: the client learns which one.
    """
    match = _ERROR_AT.match(str(error))
    assert match is not None  # the pattern matches any string
    reason = match["reason"]
    path = match["path"] or "$"
    if named := _FIELD_NAMED.match(reason):
        path = f"{path}.{named['name']}"
        reason = "missing required field" if "missing" in reason else "unknown field"
    return prefix + path[1:], reason
