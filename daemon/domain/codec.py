"""Event encoding to and from the event store's JSON, in one place, with upcasting.

`encode_event(e)` gives `EncodedEvent(type, schema, data)`; `decode_event(type, schema, data)`
decodes with a typed msgspec decoder (the fast path) when the schema is current, runs the
registered upcasters first when it is older, and returns an `UnknownEvent` for a type it does
not know, a schema newer than its own, or a value outside its vocabulary (`vocabulary.py`: a
state or flag a later version added), so replay never crashes on them. Any other invalid
value (a naive time, a missing field) is still an error.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from .events import EVENT_CLASSES, AccountEvent, Event, UnknownEvent
from .streams import APPLICATION_STREAM, account_stream

EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in EVENT_CLASSES}
"""The one registry: type name -> class."""

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _timer_fired_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 did not store the lateness; it is exactly fired_at - due_at.
    fired = msgspec.convert(data["fired_at"], datetime)
    due = msgspec.convert(data["due_at"], datetime)
    return {**data, "lateness": msgspec.to_builtins(fired - due)}


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("TimerFired", 1): _timer_fired_1_to_2,
}
"""(type, schema) -> function turning that schema's JSON object into schema + 1's."""


class EncodedEvent(msgspec.Struct, frozen=True):
    """An event ready for the store: its type name, schema version and JSON bytes."""

    type: str
    schema: int
    data: bytes


_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()
}


def encode_event(event: Event) -> EncodedEvent:
    """The store's (type, schema, data) for `event`."""
    if isinstance(event, UnknownEvent):
        # Re-encoding an unreadable event gives back exactly what was read.
        return EncodedEvent(event.event_type, event.schema, event.data.encode())
    cls = type(event)
    return EncodedEvent(cls.__name__, cls.SCHEMA, _encoder.encode(event))


def decode_event(type: str, schema: int, data: bytes) -> Event:
    """The domain event stored as (type, schema, data), upcast to the current schema."""
    cls = EVENT_TYPES.get(type)
    if cls is None or schema > cls.SCHEMA or schema < 1:
        return _unknown(type, schema, data)
    if schema == cls.SCHEMA:
        try:
            return _decoders[type].decode(data)
        except msgspec.ValidationError:
            return _outside_vocabulary(cls, schema, data, msgspec.json.decode(data))
    obj = msgspec.json.decode(data)
    for version in range(schema, cls.SCHEMA):
        upcaster = UPCASTERS.get((type, version))
        if upcaster is None:
            return _unknown(type, schema, data)
        obj = upcaster(obj)
    obj["type"] = type
    try:
        return msgspec.convert(obj, cls)
    except msgspec.ValidationError:
        return _outside_vocabulary(cls, schema, data, obj)


def _outside_vocabulary(cls: type[Event], schema: int, data: bytes, obj: Any) -> UnknownEvent:
    """An `UnknownEvent` for an event `cls` rejected only for a word outside its vocabulary;
    for anything else wrong, the error of what is wrong."""
    msgspec.convert(obj, _loose(cls))
    return _unknown(cls.__name__, schema, data)


@functools.cache
def _loose(cls: type[Event]) -> type[msgspec.Struct]:
    """`cls`'s fields with each `Literal` widened to `str` (built when first needed: an event
    outside the vocabulary is rare)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(cls):
        if f.required:
            fields.append((f.name, _widen(f.type)))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append(
                (f.name, _widen(f.type), msgspec.field(default_factory=f.default_factory))
            )
        else:
            fields.append((f.name, _widen(f.type), f.default))
    return msgspec.defstruct(f"Loose{cls.__name__}", fields, kw_only=True)


def _widen(annotation: Any) -> Any:
    if get_origin(annotation) is Literal:
        return str
    if get_origin(annotation) in (Union, types.UnionType):
        return Union[tuple(_widen(arg) for arg in get_args(annotation))]  # noqa: UP007 — built at run time
    return annotation


def _unknown(type: str, schema: int, data: bytes) -> UnknownEvent:
    text = bytes(data).decode("utf-8", errors="replace")
    account_id: str | None = None
    occurred_at: datetime | None = None
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        obj = None
    if isinstance(obj, dict):
        # Best effort, so an unreadable account event still counts in its stream's version.
        if isinstance(obj.get("account_id"), str):
            account_id = obj["account_id"]
        try:
            occurred_at = msgspec.convert(obj.get("occurred_at"), datetime | None)
        except msgspec.ValidationError:
            occurred_at = None
    return UnknownEvent(
        event_type=type,
        schema=schema,
        data=text,
        account_id=account_id,
        occurred_at=occurred_at,
    )


def stream_of(event: Event) -> str:
    """`account-<account_id>` for account events, `application` for the others."""
    if isinstance(event, AccountEvent):
        return account_stream(event.account_id)
    if isinstance(event, UnknownEvent) and event.account_id is not None:
        return account_stream(event.account_id)
    return APPLICATION_STREAM
