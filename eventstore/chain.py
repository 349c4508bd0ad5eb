"""The hash chain and signed checkpoints, defined precisely enough for an auditor to re-implement.

Canonical encoding of an event row (``canonical_row``): the eight fields
``stream, version, type, schema, event_id, recorded_at, data, metadata`` in that order, each
turned into bytes (text fields as UTF-8; ``version`` and ``schema`` as decimal ASCII digits without
sign or leading zeros; ``recorded_at`` as the stored text ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; ``data``
and ``metadata`` as the exact JSON bytes appended) and prefixed by its length as a 4-byte unsigned
big-endian integer. The fields are concatenated with nothing in between.

Row hash: ``hash = lower_hex(SHA-256(prev_hash + canonical_row))`` where ``prev_hash`` is the
previous row's hash as 64 lower-case ASCII hex characters, and the first row's ``prev_hash`` is
``GENESIS`` (64 ``"0"``). The position is deliberately not hashed: the chain itself fixes the
order, and leaving it out lets ``verify()`` tell a renumbered deletion from an edited row.

Checkpoint signature: ``lower_hex(HMAC-SHA256(key, canonical_checkpoint))`` where
``canonical_checkpoint`` length-prefixes, as above, the fields ``"staticipd-checkpoint-v1"``,
``position`` (decimal), ``head_hash`` (hex), ``created_at`` (same text format) and ``key_id``.

Key fingerprint (``key_fingerprint``), the ``key_id`` a checkpoint is written with by default:
``"sha256:" + lower_hex(SHA-256("staticipd-checkpoint-key-id" + key))[:16]``. It names the key
without revealing it, so a verifier holding another key can say so instead of crying tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import UTC, datetime
from functools import lru_cache

__all__ = [
    "GENESIS",
    "canonical_checkpoint",
    "canonical_row",
    "format_time",
    "is_fingerprint",
    "key_fingerprint",
    "parse_time",
    "row_hash",
    "sign_checkpoint",
]

GENESIS = "0" * 64
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_CHECKPOINT_TAG = b"staticipd-checkpoint-v1"
_KEY_ID_TAG = b"staticipd-checkpoint-key-id"


_LEN = struct.Struct(">I").pack


def _field(b: bytes) -> bytes:
    return _LEN(len(b)) + b


def canonical_row(
    stream: str,
    version: int,
    type_: str,
    schema: int,
    event_id: str,
    recorded_at: str,
    data: bytes,
    metadata: bytes,
) -> bytes:
    """Return the canonical byte encoding of one event row (see the module docstring)."""
    # Written out rather than looped: this runs once per appended and per verified event.
    s, v, t = stream.encode(), str(version).encode(), type_.encode()
    sc, e, r = str(schema).encode(), event_id.encode(), recorded_at.encode()
    n = _LEN
    return b"".join(
        (
            n(len(s)), s, n(len(v)), v, n(len(t)), t, n(len(sc)), sc,
            n(len(e)), e, n(len(r)), r, n(len(data)), data, n(len(metadata)), metadata,
        )
    )  # fmt: skip


def row_hash(prev_hash: str, canonical: bytes) -> str:
    """Return the chained hash of a row whose predecessor's hash is `prev_hash`."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def canonical_checkpoint(position: int, head_hash: str, created_at: str, key_id: str) -> bytes:
    """Return the canonical byte encoding a checkpoint signature covers."""
    return b"".join(
        (
            _field(_CHECKPOINT_TAG),
            _field(str(position).encode()),
            _field(head_hash.encode()),
            _field(created_at.encode()),
            _field(key_id.encode()),
        )
    )


def sign_checkpoint(key: bytes, position: int, head_hash: str, created_at: str, key_id: str) -> str:
    """Return the hex HMAC-SHA256 signature of a checkpoint under `key`."""
    msg = canonical_checkpoint(position, head_hash, created_at, key_id)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """Return the name of a checkpoint key that reveals nothing of it (see the module's text)."""
    return "sha256:" + hashlib.sha256(_KEY_ID_TAG + key).hexdigest()[:16]


def is_fingerprint(key_id: str) -> bool:
    """True for a `key_id` of the `key_fingerprint` form (older checkpoints say `default`)."""
    return key_id.startswith("sha256:") and len(key_id) == 23


def format_time(dt: datetime) -> str:
    """Return the stored text form of an aware datetime, in UTC with microseconds."""
    if dt.tzinfo is None:
        raise ValueError("recorded_at must be timezone-aware")
    return dt.astimezone(UTC).strftime(_TIME_FORMAT)


@lru_cache(maxsize=1024)
def parse_time(text: str) -> datetime:
    """Return the aware UTC datetime for a stored time text (cached: a batch shares one time)."""
    return datetime.fromisoformat(text)
