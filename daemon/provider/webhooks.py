"""Provider webhooks without I/O: verify the signature of raw bytes, then parse v2/v3 bodies.

Sans-I/O on purpose: the HTTP listener hands bytes in and gets the engine's `ProviderNotified`
inputs (or a `MalformedWebhook` naming the field) back, so the same code serves tests, replay
and benchmarks, and a delta is described in this one place.
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
    "MalformedWebhook",
    "parse_notifications",
    "verify_signature",
]

# The provider signs with HMAC-SHA256 and sends 64 lower-case hex characters.
_HEX_LEN = 64


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


class _V3Body(msgspec.Struct):
    specversion: str
    type: _NonEmpty
    id: _NonEmpty
    time: _UnixSeconds
    data: _V3Data
    source: str | None = None
    webhook_delivery_attempt: int | None = None


def _malformed(error: msgspec.ValidationError, prefix: str = "$") -> MalformedWebhook:
    return MalformedWebhook(*validation_field(error, prefix))


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_notifications(body: bytes) -> list[ProviderNotified]:
    """Decode a v2 (`deltas`) or v3 (`specversion`) webhook body into the engine's inputs.

    Each input's id is its dedupe key (`v3:<id>`, `v2:<sha256 of the delta's canonical JSON>`),
    its time is UTC and its details keep the provider's fields, the object type under `object`.
    Raises `MalformedWebhook` naming the field (e.g. `$.deltas[0].date`) for invalid UTF-8,
    bytes that are not JSON, or a body of the wrong shape. Unknown triggers parse fine.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedWebhook("$", f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise MalformedWebhook("$", f"body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedWebhook("$", f"expected a JSON object, got {type(raw).__name__}")
    if "deltas" in raw:
        return _parse_v2(raw)
    if "specversion" in raw:
        return [_parse_v3(raw)]
    raise MalformedWebhook("$", "expected a v2 body with `deltas` or a v3 body with `specversion`")


def _parse_v2(raw: dict[str, Any]) -> list[ProviderNotified]:
    try:
        decoded = msgspec.convert(raw, _V2Body)
    except msgspec.ValidationError as exc:
        raise _malformed(exc) from None
    notifications = []
    for delta, raw_delta in zip(decoded.deltas, raw["deltas"], strict=True):
        # v2 gives no delivery id: the digest of the delta's canonical JSON (sorted keys,
        # compact) identifies a redelivery whatever the key order or spacing of the retry.
        digest = hashlib.sha256(msgspec.json.encode(raw_delta, order="sorted")).hexdigest()
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
    return notifications


def _parse_v3(raw: dict[str, Any]) -> ProviderNotified:
    try:
        decoded = msgspec.convert(raw, _V3Body)
    except msgspec.ValidationError as exc:
        raise _malformed(exc) from None
    try:
        grant = msgspec.convert(decoded.data.object, _V3Object)
    except msgspec.ValidationError as exc:
        raise _malformed(exc, prefix="$.data.object") from None
    details = {k: v for k, v in decoded.data.object.items() if k != "grant_id"}
    if decoded.webhook_delivery_attempt is not None:
        details["delivery_attempt"] = decoded.webhook_delivery_attempt
    if decoded.data.application_id is not None:
        details["application_id"] = decoded.data.application_id
    # v3 nests the object type in the trigger ("grant.updated" -> "grant").
    details["object"] = str(details.get("object") or decoded.type.split(".", 1)[0])
    return ProviderNotified(
        input_id=f"v3:{decoded.id}",
        account_id=grant.grant_id,
        trigger=decoded.type,
        occurred_at=_utc(decoded.time),
        api_version=3,
        details=details,
    )
