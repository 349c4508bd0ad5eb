"""Stream names and event ids: how the daemon files the domain's events in the log.

Every account has its stream `account-<account_id>`; everything else is in `application`. The
events one input caused are written under `<input_id>#<index>`; the first, `<input_id>#0`,
records the input itself, so its presence in the log means the input was seen before.
"""

from __future__ import annotations

__all__ = [
    "ACCOUNT_STREAM_PREFIX",
    "APPLICATION_STREAM",
    "account_of",
    "account_stream",
    "event_id",
    "first_event_id",
    "input_of",
    "is_input_record",
]

APPLICATION_STREAM = "application"  # the stream of every event that is not an account's
ACCOUNT_STREAM_PREFIX = "account-"
_PREFIX_LEN = len(ACCOUNT_STREAM_PREFIX)


def account_stream(account_id: str) -> str:
    """The stream of the account `account_id`."""
    return ACCOUNT_STREAM_PREFIX + account_id


def account_of(stream: str) -> str | None:
    """The account whose stream `stream` is; None for the application's stream (or any other)."""
    return stream[_PREFIX_LEN:] if stream.startswith(ACCOUNT_STREAM_PREFIX) else None


def event_id(input_id: str, index: int) -> str:
    """The id of the `index`-th event caused by the input `input_id` (0: the input's record)."""
    return f"{input_id}#{index}"


def first_event_id(input_id: str) -> str:
    """The id of the event recording the input `input_id`: stored once the input was seen."""
    return input_id + "#0"


def is_input_record(event_id: str) -> bool:
    """Whether `event_id` is the record of an input (its first event), not one it caused."""
    return event_id.endswith("#0")


def input_of(event_id: str) -> str:
    """The id of the input that caused the event `event_id` (the part before its `#<index>`)."""
    return event_id.rpartition("#")[0]
