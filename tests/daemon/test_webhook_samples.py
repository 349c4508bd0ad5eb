"""The provider's published webhook samples (tests/samples/webhooks/) against the real daemon.

Each sample file names its source (a documentation page or an official SDK's test fixture); a
constructed variant says so in its `source`. Every sample is POSTed to a daemon on 127.0.0.1:
accepted, recorded once (a redelivery is a duplicate) and mapped to the meaning it has.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.provider.webhooks import parse_delivery, verify_signature

from .conftest import DaemonSetup, run_daemon

pytestmark = pytest.mark.timeout(60)

SAMPLES = Path(__file__).parent.parent / "samples" / "webhooks"
SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*.json") if p.name != "signature-vectors.json")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def body_of(sample: dict[str, Any]) -> bytes:
    """The exact bytes of a signed sample, else the sample's JSON as the provider sends it."""
    if "body_text" in sample:
        return str(sample["body_text"]).encode("utf-8")
    return json.dumps(sample["body"], separators=(",", ":")).encode("utf-8")


def test_every_sample_names_its_source() -> None:
    """Every sample says where it comes from, and a constructed one says it is constructed."""
    assert SAMPLE_FILES
    for path in SAMPLE_FILES:
        source = load(path)["source"]
        origins = ("https://developer.nylas.com/", "github.com/nylas/", "constructed:")
        assert source.startswith(origins)
        assert (".constructed." in path.name) == source.startswith("constructed:")


@pytest.mark.anyio
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
async def test_published_sample_is_accepted_recorded_once_and_mapped(
    path: Path, setup: DaemonSetup
) -> None:
    """Each published sample is answered 200, recorded once with its meaning, and a redelivery
    is a duplicate; deltas about other objects are counted as skipped."""
    sample = load(path)
    expect = sample["expect"]
    body = body_of(sample)
    signature = sample.get("signature")
    if signature is not None:
        # The SDK's own secret, next to the generated one (as during a rotation).
        setup.write_secret("webhook_secret", setup.secret("webhook_secret"), signature["secret"])
    async with run_daemon(setup) as running:
        header = signature["valid"] if signature is not None else None
        first = await running.post_webhook(body, header)
        assert first.status == 200
        assert await first.json() == {
            "recorded": len(expect["recorded"]),
            "duplicates": 0,
            "skipped": expect["skipped"],
            "quarantined": 0,
        }
        again = await running.post_webhook(body, header)
        assert again.status == 200
        assert (await again.json())["duplicates"] == len(expect["recorded"])
    recorded = setup.events_of("ProviderNotificationRecorded")
    assert len(recorded) == len(expect["recorded"])
    for event, wanted in zip(recorded, expect["recorded"], strict=True):
        assert event["stream"] == f"account-{wanted['account_id']}"
        assert event["data"]["trigger"] == wanted["trigger"]
        assert event["data"]["meaning"] == wanted["meaning"]
        for key, value in wanted.get("details", {}).items():
            assert event["data"]["details"][key] == value
    assert setup.events_of("InputQuarantined") == []


def test_v3_sample_without_time_is_dated_by_its_receipt() -> None:
    """A v3 body without `time` takes the time it was received, and says the provider gave none."""
    sample = load(SAMPLES / "v3-grant-created-without-time.constructed.json")
    received = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    [notification] = parse_delivery(body_of(sample), received_at=received).notifications
    assert notification.occurred_at == received
    assert notification.details["time_missing"] is True


def test_published_signature_vectors_verify() -> None:
    """The official SDKs' signature test vectors pass the daemon's check, and their wrong
    signature or other body fails it."""
    vectors = load(SAMPLES / "signature-vectors.json")["vectors"]
    assert vectors
    for vector in vectors:
        secret = [vector["secret"].encode()]
        if "body_from" in vector:
            body = body_of(load(SAMPLES / vector["body_from"]))
        else:
            body = vector["body"].encode()
        assert verify_signature(body, vector["valid"], secret)
        if "invalid" in vector:
            assert not verify_signature(body, vector["invalid"], secret)
        if "other_body" in vector:
            assert not verify_signature(vector["other_body"].encode(), vector["valid"], secret)
