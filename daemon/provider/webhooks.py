"""Provider webhooks without I/O: verify the signature of raw bytes, then parse v2/v3 bodies.

Sans-I/O on purpose: the HTTP listener hands bytes in and gets a `Delivery` back (the engine's
`ProviderNotified` inputs, the deltas skipped as not about accounts, and the account deltas it
cannot read), or a `MalformedWebhook` naming the field when the body is no delivery at all. The
same code serves tests, replay and benchmarks, and a delta is described in this one place
(docs/provider.md#webhook-bodies-v2, docs/provider.md#webhook-bodies-v3).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from daemon.domain import ProviderNotified
from daemon.validation import validation_field

__all__ = [
    "MAX_DEPTH",
    "Delivery",
    "MalformedDelta",
    "MalformedWebhook",
    "parse_delivery",
    "parse_notifications",
    "verify_signature",
]

# The provider signs with HMAC-SHA256 and sends 64 lower-case hex characters.
_HEX_LEN = 64
# Arrays and objects nested deeper than this are no delivery: the provider's bodies are a few
# levels deep, and what is kept in the log must decode again at any stack depth on replay.
MAX_DEPTH = 64


def verify_signature(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bool:
    """True if `header` is the hex HMAC-SHA256 of `body` under any of `secrets` (rotation).

    Every secret is tried even after a match, so timing does not reveal which one matched;
    empty secrets are skipped because an HMAC keyed with nothing is forgeable by anyone.
    """
    if header is None:
        return False
    candidate = header.strip().lower()
    if len(candidate) != _HEX_LEN:
        return False
    try:
        presented = candidate.encode("ascii")
    except UnicodeEncodeError:
        return False
    matched = False
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
        matched |= hmac.compare_digest(expected, presented)
    return matched


class MalformedWebhook(ValueError):
    """A correctly signed body that is not a webhook we can read; says which field and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --- wire shapes (docs/provider.md#webhook-bodies-v2, docs/provider.md#webhook-bodies-v3);
# unknown keys are ignored, the provider adds fields ---

_UnixSeconds = Annotated[int, msgspec.Meta(ge=0, le=253402300799)]  # up to 9999-12-31
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _V2ObjectData(msgspec.Struct):
    account_id: _NonEmpty
    id: str | None = None
    namespace_id: str | None = None
    object: str | None = None
    attributes: Any = None
    metadata: Any = None


class _V2Delta(msgspec.Struct):
    date: _UnixSeconds
    object: _NonEmpty
    type: _NonEmpty
    object_data: _V2ObjectData


class _V2Body(msgspec.Struct):
    deltas: list[_V2Delta]


class _V3Object(msgspec.Struct):
    grant_id: _NonEmpty


class _V3Data(msgspec.Struct):
    object: dict[str, Any]
    application_id: str | None = None
    grant_id: Any = None  # some notifications name the grant here as well


class _V3Body(msgspec.Struct):
    specversion: str
    type: _NonEmpty
    id: _NonEmpty
    data: _V3Data
    time: _UnixSeconds | None = None  # absent from bodies on older schema pages
    source: str | None = None
    webhook_delivery_attempt: int | None = None


def _malformed(error: msgspec.ValidationError, prefix: str = "$") -> MalformedWebhook:
    return MalformedWebhook(*validation_field(error, prefix))


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class MalformedDelta(msgspec.Struct, frozen=True):
    """One delta of a v2 batch that is about an account but cannot be read: quarantined alone.

    `raw` is the delta's canonical JSON (sorted keys, compact), so a redelivery is kept once.
    """

    index: int
    field: str
    reason: str
    raw: bytes


class Delivery(msgspec.Struct, frozen=True):
    """What one signed body holds: the notifications to record, what is not about accounts
    (counted and skipped: `object/trigger` names), and the account deltas that cannot be read."""

    notifications: list[ProviderNotified]
    skipped: list[str] = []
    malformed: list[MalformedDelta] = []


def parse_delivery(body: bytes, *, received_at: datetime | None = None) -> Delivery:
    """Decode a v2 (`deltas`) or v3 (`specversion`) webhook body, one delta at a time.

    Each notification's id is its dedupe key (`v3:<id>`, `v2:<sha256 of the delta's canonical
    JSON>`), its time is UTC and its details keep the provider's fields, the object type under
    `object`. The account is always the body's account field (v2 `object_data.account_id`, v3
    the grant id), never the object's own id. Deltas about other objects (messages, calendars,
    contacts, ...) are skipped whatever their shape; an account delta that cannot be read is
    returned in `malformed` with its index, and never costs the other deltas of the batch.
    A v3 body without `time` is dated `received_at` (default: now) and says so in its details
    (`time_missing`). Raises `MalformedWebhook` naming the field only when the body is not a
    delivery at all: invalid UTF-8, not JSON, nested deeper than `MAX_DEPTH`, not an object,
    no `deltas` array nor `specversion`, or a v3 grant notification without its id, type or
    grant.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedWebhook("$", f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise MalformedWebhook("$", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses once per level: thousands of `[` end here, not in a crash.
        raise MalformedWebhook("$", f"body is nested deeper than {MAX_DEPTH} levels") from None
    # Nesting deeper than MAX_DEPTH needs more than MAX_DEPTH opening brackets: most bodies
    # have fewer, counted in C, and skip the walk.
    few = text.count("[") + text.count("{") <= MAX_DEPTH
    if not few and _deeper_than(raw, MAX_DEPTH):
        raise MalformedWebhook("$", f"body is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, dict):
        raise MalformedWebhook("$", f"expected a JSON object, got {type(raw).__name__}")
    if "deltas" in raw:
        return _parse_v2(raw)
    if "specversion" in raw:
        return _parse_v3(raw, received_at or datetime.now(UTC))
    raise MalformedWebhook("$", "expected a v2 body with `deltas` or a v3 body with `specversion`")


def _deeper_than(value: Any, limit: int) -> bool:
    """True if arrays/objects in `value` nest more than `limit` levels (no recursion here)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_notifications(
    body: bytes, *, received_at: datetime | None = None
) -> list[ProviderNotified]:
    """The notifications of `parse_delivery`, strictly: the first malformed delta raises
    `MalformedWebhook` naming its field (for tests, replay and benchmarks)."""
    delivery = parse_delivery(body, received_at=received_at)
    if delivery.malformed:
        first = delivery.malformed[0]
        raise MalformedWebhook(first.field, first.reason)
    return delivery.notifications


def _about_account(delta: dict[str, Any]) -> bool | None:
    """True for an account delta, False for another object's, None when it does not say."""
    obj, trigger = delta.get("object"), delta.get("type")
    if obj == "account" or (isinstance(trigger, str) and trigger.startswith("account.")):
        return True
    if (isinstance(obj, str) and obj) or (isinstance(trigger, str) and trigger):
        return False
    return None


def _parse_v2(raw: dict[str, Any]) -> Delivery:
    deltas = raw["deltas"]
    if not isinstance(deltas, list):
        raise MalformedWebhook("$.deltas", f"expected an array, got {_json_type(deltas)}")
    notifications: list[ProviderNotified] = []
    skipped: list[str] = []
    malformed: list[MalformedDelta] = []
    for index, raw_delta in enumerate(deltas):
        # v2 gives no delivery id: the digest of the delta's canonical JSON (sorted keys,
        # compact) identifies a redelivery whatever the key order or spacing of the retry.
        canonical = msgspec.json.encode(raw_delta, order="sorted")
        prefix = f"$.deltas[{index}]"
        if not isinstance(raw_delta, dict):
            reason = f"expected an object, got {_json_type(raw_delta)}"
            malformed.append(MalformedDelta(index, prefix, reason, canonical))
            continue
        about = _about_account(raw_delta)
        if about is False:
            skipped.append(f"{raw_delta.get('object')}/{raw_delta.get('type')}")
            continue
        if about is None:
            reason = "neither `object` nor `type` says what the delta is about"
            malformed.append(MalformedDelta(index, f"{prefix}.object", reason, canonical))
            continue
        try:
            delta = msgspec.convert(raw_delta, _V2Delta)
        except msgspec.ValidationError as exc:
            field, reason = validation_field(exc, prefix)
            malformed.append(MalformedDelta(index, field, reason, canonical))
            continue
        digest = hashlib.sha256(canonical).hexdigest()
        data = delta.object_data
        details: dict[str, Any] = {}
        if data.id is not None and data.id != data.account_id:
            details["object_id"] = data.id
        if data.attributes is not None:
            details["attributes"] = data.attributes
        if data.metadata is not None:
            details["metadata"] = data.metadata
        details["object"] = delta.object
        notifications.append(
            ProviderNotified(
                input_id=f"v2:{digest}",
                account_id=data.account_id,
                trigger=delta.type,
                occurred_at=_utc(delta.date),
                api_version=2,
                details=details,
            )
        )
    return Delivery(notifications, skipped, malformed)


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _parse_v3(raw: dict[str, Any], received_at: datetime) -> Delivery:
    trigger = raw.get("type")
    if isinstance(trigger, str) and trigger and not trigger.startswith("grant."):
        # Messages, calendars, events, ...: not about the account; skipped whatever the shape.
        return Delivery([], [f"{trigger.split('.', 1)[0]}/{trigger}"])
    try:
        decoded = msgspec.convert(raw, _V3Body)
    except msgspec.ValidationError as exc:
        raise _malformed(exc) from None
    grant_id = decoded.data.object.get("grant_id", decoded.data.grant_id)
    try:
        grant = msgspec.convert({"grant_id": grant_id}, _V3Object)
    except msgspec.ValidationError as exc:
        raise _malformed(exc, prefix="$.data.object") from None
    details = {k: v for k, v in decoded.data.object.items() if k != "grant_id"}
    if decoded.webhook_delivery_attempt is not None:
        details["delivery_attempt"] = decoded.webhook_delivery_attempt
    if decoded.data.application_id is not None:
        details["application_id"] = decoded.data.application_id
    if decoded.time is None:
        details["time_missing"] = True  # dated by the time of receipt
    # v3 nests the object type in the trigger ("grant.updated" -> "grant").
    details["object"] = str(details.get("object") or decoded.type.split(".", 1)[0])
    notification = ProviderNotified(
        input_id=f"v3:{decoded.id}",
        account_id=grant.grant_id,
        trigger=decoded.type,
        occurred_at=_utc(decoded.time) if decoded.time is not None else received_at,
        api_version=3,
        details=details,
    )
    return Delivery([notification])
