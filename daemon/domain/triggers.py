"""The one table mapping provider webhook triggers (API v2 and v3) to domain meanings.

v2 is what the static-IP move is built on; v3 has no stop/running triggers, so only what maps
is mapped (`grant.updated` with a re-authentication flag or code 25027 is an auth). Anything
not in the table is `unrecognised`: recorded, never acted on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .vocabulary import Meaning

# grant.updated code for a re-authentication (docs/provider.md#webhook-bodies-v3)
REAUTH_CODE = 25027


def _grant_updated(details: Mapping[str, Any]) -> Meaning:
    if details.get("reauthentication_flag") is True or details.get("code") == REAUTH_CODE:
        return "auth"
    return "updated"


TRIGGERS: dict[tuple[int, str], Meaning | Callable[[Mapping[str, Any]], Meaning]] = {
    (2, "account.connected"): "connected",
    (2, "account.running"): "running",
    (2, "account.stopped"): "stopped",
    (2, "account.invalid"): "invalid",
    (2, "account.sync_error"): "sync_error",
    (3, "grant.created"): "connected",
    (3, "grant.updated"): _grant_updated,
    (3, "grant.expired"): "invalid",
    (3, "grant.deleted"): "deleted",
}
"""(api_version, trigger) -> meaning, or a function of the notification's details."""


def meaning_of(api_version: int, trigger: str, details: Mapping[str, Any]) -> Meaning:
    """The domain meaning of a notification, or `unrecognised`."""
    entry = TRIGGERS.get((api_version, trigger))
    if entry is None:
        return "unrecognised"
    return entry if isinstance(entry, str) else entry(details)


def sync_state_meaning(
    sync_state: str | None, *, exists: bool = True, billing_state: str | None = None
) -> Meaning:
    """The domain meaning of an account's state at the provider (API `sync_state`, an open set)."""
    sync = (sync_state or "").replace("-", "_")
    if not exists or billing_state == "deleted":
        return "deleted"
    return _SYNC_STATES.get(sync, "unrecognised")


_SYNC_STATES: dict[str, Meaning] = {
    "stopped": "stopped",
    "running": "running",
    "invalid": "invalid",
    "invalid_credentials": "invalid",
    "sync_error": "sync_error",
    "exception": "sync_error",
}
