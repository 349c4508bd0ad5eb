"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/), pure functions.

Used where staticipd sends messages (re-authentication requests to the application) and by the
sandbox's simulated application backend that receives them. Secrets are ``whsec_<base64 key>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "decode_secret",
    "generate_secret",
    "sign",
    "signature",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format prefix, not a secret
DEFAULT_TOLERANCE = 300.0


class WebhookVerificationError(Exception):
    """A message failed Standard Webhooks verification; the text says which check failed."""


def generate_secret(nbytes: int = 32) -> str:
    """Return a new random secret in the ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def decode_secret(secret: str | bytes) -> bytes:
    """Return the raw key of a ``whsec_`` secret (raw bytes are passed through)."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            # Padding is optional in the wild; b64decode ignores surplus '='.
            key = base64.b64decode(text + "==", validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("webhook secret is not valid base64") from exc
    if not key:
        raise ValueError("webhook secret may not be empty")
    return key


def signature(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one ``v1,<base64 HMAC-SHA256>`` signature over ``{id}.{timestamp}.{body}``."""
    signed = msg_id.encode() + b"." + str(int(timestamp)).encode() + b"." + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _as_list(secrets: str | bytes | Iterable[str | bytes]) -> list[str | bytes]:
    if isinstance(secrets, str | bytes):
        return [secrets]
    return list(secrets)


def sign(
    secrets: str | bytes | Iterable[str | bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the three Standard Webhooks headers, one signature per secret (for key rotation)."""
    keys = _as_list(secrets)
    if not keys:
        raise ValueError("at least one secret is needed to sign")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
    }


def verify(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check the headers against the exact body bytes and return the message id.

    Raises WebhookVerificationError when a header is missing or malformed, the timestamp is
    further than ``tolerance`` seconds from ``now``, or no ``v1`` signature matches any secret.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts_text = lower.get("webhook-timestamp")
    sig_text = lower.get("webhook-signature")
    if not (msg_id and ts_text and sig_text):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if timestamp < now - tolerance:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > now + tolerance:
        raise WebhookVerificationError("message timestamp too new")
    offered: list[bytes] = []
    for part in sig_text.split():
        version, _, value = part.partition(",")
        if version != "v1" or not value:
            continue
        try:
            offered.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not offered:
        raise WebhookVerificationError("no v1 signature in webhook-signature")
    for key in _as_list(secrets):
        expected = base64.b64decode(signature(key, msg_id, timestamp, body).split(",", 1)[1])
        # Compare against every offered signature; compare_digest keeps each check constant-time.
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return msg_id
    raise WebhookVerificationError("no matching signature")
