"""Standard Webhooks signing: our headers verify with the official library and vice versa."""

import time
from datetime import UTC, datetime

import pytest

from daemon.provider.standardwebhooks import (
    WebhookVerificationError,
    generate_secret,
    sign,
    verify,
)

BODY = b'{"type":"staticipd.reauth_requested","data":{"account_id":"a1"}}'


def test_sign_then_verify_round_trip() -> None:
    """A message we sign verifies with the same secret and yields its id."""
    secret = generate_secret()
    now = int(time.time())
    headers = sign(secret, "msg_1", now, BODY)
    assert verify(secret, headers, BODY, now=now) == "msg_1"


def test_tampered_body_is_rejected() -> None:
    """Changing one byte of the body makes verification fail."""
    secret = generate_secret()
    headers = sign(secret, "msg_1", 1000, BODY)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(secret, headers, BODY + b" ", now=1000)


def test_wrong_secret_and_missing_headers_are_rejected() -> None:
    """A different secret or an absent header gives a clear error."""
    headers = sign(generate_secret(), "msg_1", 1000, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, BODY, now=1000)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(generate_secret(), {"webhook-id": "x"}, BODY, now=1000)


def test_timestamp_tolerance() -> None:
    """Messages older or newer than the tolerance are refused, inside it accepted."""
    secret = generate_secret()
    headers = sign(secret, "m", 1000, BODY)
    verify(secret, headers, BODY, now=1299)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(secret, headers, BODY, now=1301)
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify(secret, headers, BODY, now=699)


def test_rotation_any_secret_matches() -> None:
    """With two secrets signed in, a receiver knowing only the new one accepts the message."""
    old, new = generate_secret(), generate_secret()
    headers = sign([old, new], "m", 1000, BODY)
    assert len(headers["webhook-signature"].split()) == 2
    assert verify([new], headers, BODY, now=1000) == "m"


def test_official_library_accepts_our_messages() -> None:
    """The reference standardwebhooks library verifies what we sign and we verify what it signs."""
    standardwebhooks = pytest.importorskip("standardwebhooks")
    secret = generate_secret()
    now = int(time.time())
    headers = sign(secret, "msg_2", now, BODY)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers)["data"]["account_id"] == "a1"
    theirs = standardwebhooks.Webhook(secret).sign(
        "msg_3", datetime.fromtimestamp(now, tz=UTC), BODY.decode()
    )
    ours = {"webhook-id": "msg_3", "webhook-timestamp": str(now), "webhook-signature": theirs}
    assert verify(secret, ours, BODY, now=now) == "msg_3"
