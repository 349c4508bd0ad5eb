"""The contracts the fuzz targets check on every input, also run here on samples and hypothesis.

Each `check_*` takes raw bytes and asserts the documented contract of one parser or check the
network feeds: the webhook signature check (`verify_signature`, Standard Webhooks `verify`),
the webhook body parser (`parse_delivery`, v2 and v3) and the auth-event decoder. `fuzz.py`
runs them under atheris, coverage-guided (`make fuzz`); the tests below run them on the sample
bodies and on hypothesis' bytes in the ordinary suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.http.errors import ApiError, decode_body
from daemon.http.ingest import AuthEventBody, _auth_decoder
from daemon.provider import standardwebhooks as sw
from daemon.provider.webhooks import (
    Delivery,
    MalformedWebhook,
    parse_delivery,
    parse_notifications,
    verify_signature,
)

SAMPLES = Path(__file__).parent.parent / "samples" / "webhooks"
NOW = 1_750_000_000


def _split(data: bytes, parts: int) -> list[bytes]:
    """Cut fuzz input into `parts` pieces at positions the input itself chooses."""
    pieces: list[bytes] = []
    rest = data
    for _ in range(parts - 1):
        size = rest[0] if rest else 0
        pieces.append(rest[1 : 1 + size])
        rest = rest[1 + size :]
    pieces.append(rest)
    return pieces


def check_signature(data: bytes) -> None:
    """`verify_signature` never raises, accepts the HMAC of any body under any non-empty secret
    (any case, surrounding space), and refuses every other header and an empty secret."""
    secret, header_bytes, body = _split(data, 3)
    header = header_bytes.decode("utf-8", "surrogateescape")
    keys = [secret] if secret else []
    good = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_signature(body, good, keys) is bool(secret)
    assert verify_signature(body, f" {good.upper()}\t", keys) is bool(secret)
    assert verify_signature(body, good, [b"", secret]) is bool(secret)
    assert verify_signature(body, good, []) is False
    assert verify_signature(body, None, keys) is False
    # Any header the input chose is accepted exactly when it is the right signature.
    result = verify_signature(body, header, keys)
    assert result is (bool(secret) and header.strip().lower() == good)
    # One hex digit changed, one dropped: refused.
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert verify_signature(body, flipped, keys) is False
    assert verify_signature(body, good[:-1], keys) is False


def check_standard_webhooks(data: bytes) -> None:
    """Standard Webhooks: a message signed with the key verifies and returns its id; any
    headers the input chose are either that or a `WebhookVerificationError`, nothing else."""
    key, msg_id_bytes, headers_blob, body = _split(data, 4)
    secret = key or b"\x00"
    msg_id = msg_id_bytes.decode("utf-8", "replace") or "msg"
    headers = sw.sign(secret, msg_id, NOW, body)
    assert sw.verify(secret, headers, body, now=NOW) == msg_id
    tampered = dict(
        headers, **{"webhook-signature": sw.signature(secret + b"x", msg_id, NOW, body)}
    )
    try:
        sw.verify(secret, tampered, body, now=NOW)
    except sw.WebhookVerificationError:
        pass
    else:
        raise AssertionError("a signature under another key was accepted")
    text = headers_blob.decode("utf-8", "surrogateescape")
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    chosen = dict(zip(names, text.split("\n"), strict=False))
    with contextlib.suppress(sw.WebhookVerificationError):
        sw.verify(secret, chosen, body, now=NOW)


def check_webhook_body(data: bytes) -> None:
    """`parse_delivery` returns a `Delivery` or raises `MalformedWebhook` naming a field, for
    any bytes; every notification names an account and a v2/v3 id and is dated in UTC."""
    received = datetime.fromtimestamp(NOW, UTC)
    refusal: MalformedWebhook | None = None
    try:
        delivery = parse_delivery(data, received_at=received)
    except MalformedWebhook as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.field.startswith("$")
        assert refusal.reason
        return
    assert isinstance(delivery, Delivery)
    for notification in delivery.notifications:
        assert isinstance(notification.account_id, str)
        assert notification.account_id
        assert notification.input_id.startswith(("v2:", "v3:"))
        assert notification.occurred_at.utcoffset() is not None
    for bad in delivery.malformed:
        assert bad.field.startswith("$.deltas[")
        assert msgspec.json.decode(bad.raw) is not None or bad.raw == b"null"
    try:
        strict = parse_notifications(data, received_at=received)
    except MalformedWebhook:
        assert delivery.malformed
    else:
        assert strict == delivery.notifications


def check_auth_event(data: bytes) -> None:
    """The auth-event decoder returns a body with an account (1 to 512 characters) and a
    zone-aware time, or refuses with a 400 `ApiError`; nothing else escapes."""
    refusal: ApiError | None = None
    try:
        event = decode_body(data, _auth_decoder)
    except ApiError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.status == 400
        assert refusal.code in ("invalid_body", "invalid_json")
        return
    assert isinstance(event, AuthEventBody)
    assert 1 <= len(event.account_id) <= 512
    assert event.occurred_at.utcoffset() is not None


TARGETS: dict[str, Callable[[bytes], None]] = {
    "signature": check_signature,
    "standard_webhooks": check_standard_webhooks,
    "webhook_body": check_webhook_body,
    "auth_event": check_auth_event,
}


def seeds(target: str) -> list[bytes]:
    """Starting inputs: the provider's sample bodies, or auth events."""
    # Each sample file holds the body ("body", or "body_text" as sent), and where it came from.
    samples = [msgspec.json.decode(path.read_bytes()) for path in sorted(SAMPLES.glob("v*.json"))]
    bodies = [
        s["body_text"].encode() if "body_text" in s else msgspec.json.encode(s["body"])
        for s in samples
    ]
    if target == "auth_event":
        return [
            b'{"account_id": "acc-1", "occurred_at": "2026-01-01T00:00:00Z", "event_id": "e1"}',
            b'{"account_id": "", "occurred_at": "2026-01-01T00:00:00"}',
        ]
    if target in ("signature", "standard_webhooks"):
        return [b"\x10whsec-key-bytes\x40" + b"0" * 64 + body for body in bodies[:3]]
    return bodies


def test_contracts_hold_on_the_sample_bodies() -> None:
    """Every fuzz target's contract holds on the bundled webhook samples and auth events."""
    for name, check in TARGETS.items():
        for seed in seeds(name):
            check(seed)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_contracts_hold_on_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes never make a target raise anything but its documented refusal."""
    for check in TARGETS.values():
        check(data)


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["deltas", "specversion", "type", "id", "data", "object", "grant_id",
                         "date", "object_data", "account_id", "time", "occurred_at"]),
        inner, max_size=5),
    max_leaves=20,
))  # fmt: skip
def test_contracts_hold_on_json_shaped_input(doc: object) -> None:
    """JSON documents with the webhook's and auth event's own keys, nested any way, are
    parsed or refused with a named field, never an unexpected exception."""
    data = msgspec.json.encode(doc)
    check_webhook_body(data)
    check_auth_event(data)
