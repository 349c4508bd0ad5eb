"""The webhook route against the provider's real variety, over loopback: compressed deliveries,
batches mixing other objects' deltas and malformed ones; and what the other routes do with a
Content-Encoding now that the listener hands every route the bytes as sent."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from .conftest import DaemonSetup, RunningDaemon

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def post(
    running: RunningDaemon, raw: bytes, encoding: str | None, signature: str | None = None
) -> tuple[int, Any]:
    """POST `raw` as sent, signed over those bytes unless `signature` is given."""
    headers = {
        "Content-Type": "application/json",
        "X-Nylas-Signature": signature or running.setup.sign(raw),
    }
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    async with running.http.post("/webhooks/nylas", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


def quarantined(setup: DaemonSetup) -> list[dict[str, Any]]:
    return setup.events_of("InputQuarantined")


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
    ids=["gzip", "deflate"],
)
async def test_compressed_delivery_signed_as_sent_is_recorded(
    running: RunningDaemon, v2, encoding: str, encode
) -> None:
    """A compressed delivery whose signature covers the compressed bytes is recorded."""
    status, answer = await post(running, encode(v2("acc-z", "account.running")), encoding)
    assert (status, answer["recorded"]) == (200, 1)
    assert running.setup.events_of("ProviderNotificationRecorded", "account-acc-z")


async def test_compressed_delivery_signed_over_decoded_bytes_is_refused(
    running: RunningDaemon, v2
) -> None:
    """A signature of the decoded JSON does not vouch for the compressed bytes: 401."""
    body = v2("acc-y", "account.running")
    status, answer = await post(running, gzip.compress(body), "gzip", running.setup.sign(body))
    assert (status, answer["error"]["code"]) == (401, "bad_signature")
    assert running.setup.events_of("ProviderNotificationRecorded") == []


@pytest.mark.parametrize("encoding", ["br", "zstd", "x-unknown"])
async def test_signed_body_in_a_coding_we_cannot_undo_is_quarantined_once(
    running: RunningDaemon, v2, encoding: str
) -> None:
    """br, zstd or an unknown coding, correctly signed: 400 and one quarantined raw body, however
    often it is redelivered."""
    raw = gzip.compress(v2("acc-x", "account.running"))
    for _ in range(2):
        status, answer = await post(running, raw, encoding)
        assert (status, answer["error"]["field"]) == (400, "Content-Encoding")
    [event] = quarantined(running.setup)
    assert event["data"]["body_hex"] == raw.hex()
    assert event["data"]["field"] == "Content-Encoding"


async def test_unsigned_body_in_a_coding_we_cannot_undo_is_401_and_not_kept(
    running: RunningDaemon,
) -> None:
    """A wrong signature is a 401 whatever the coding, and nothing is quarantined."""
    status, _ = await post(running, b"\x1b\x00junk", "br", signature="0" * 64)
    assert status == 401
    assert quarantined(running.setup) == []


async def test_corrupt_gzip_correctly_signed_is_400_not_500(running: RunningDaemon) -> None:
    """gzip data that does not decode is a 400 with the raw body quarantined, never a 500."""
    status, answer = await post(running, b"\x1f\x8b\x08\x00broken", "gzip")
    assert (status, answer["error"]["code"]) == (400, "undecodable_body")
    assert len(quarantined(running.setup)) == 1


async def test_compressed_bomb_is_413_and_records_nothing(running: RunningDaemon) -> None:
    """A small signed body inflating past the body limit is refused with 413, nothing kept."""
    bomb = gzip.compress(b" " * (running.daemon.config.http.max_body_bytes * 20))
    status, answer = await post(running, bomb, "gzip")
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert quarantined(running.setup) == []


async def test_batch_with_other_objects_and_a_bad_delta_records_every_good_delta(
    running: RunningDaemon, v2
) -> None:
    """One batch: two account deltas, a calendar delta (docs' shape) and an account delta
    without date: 200, both good deltas recorded, the calendar skipped, the bad one quarantined
    alone with its index; a redelivery adds nothing."""
    good = [json.loads(v2(a, "account.running", date=1_717_430_400))["deltas"][0] for a in "pq"]
    calendar = {
        "object": "calendar",
        "type": "calendar.updated",
        "source": "/google/events/realtime",
        "id": "FUuYVEHL5gJxB85oKoNxt74890",
        "time": 1602623196,
        "object_data": {"account_id": "p", "object": "calendar", "id": "2x6f"},
    }
    broken = json.loads(v2("r", "account.invalid"))["deltas"][0]
    del broken["date"]
    raw = json.dumps({"deltas": [good[0], calendar, broken, good[1]]}).encode()
    status, answer = await post(running, raw, None)
    assert status == 200
    assert answer == {"recorded": 2, "duplicates": 0, "skipped": 1, "quarantined": 1}
    streams = sorted(e["stream"] for e in running.setup.events_of("ProviderNotificationRecorded"))
    assert streams == ["account-p", "account-q"]
    [event] = quarantined(running.setup)
    assert event["data"]["field"] == "$.deltas[2].date"
    assert json.loads(event["data"]["body"]) == broken
    status, answer = await post(running, raw, None)
    assert answer == {"recorded": 0, "duplicates": 2, "skipped": 1, "quarantined": 1}
    assert len(quarantined(running.setup)) == 1


async def test_batch_of_only_malformed_account_deltas_is_400(running: RunningDaemon, v2) -> None:
    """When no delta of a delivery is usable the answer is 400 naming the first bad field."""
    broken = json.loads(v2("s", "account.running"))["deltas"][0]
    broken["object_data"] = {"id": "s"}
    status, answer = await post(running, json.dumps({"deltas": [broken]}).encode(), None)
    assert (status, answer["error"]["field"]) == (400, "$.deltas[0].object_data.account_id")
    assert len(quarantined(running.setup)) == 1


async def test_auth_event_compressed_with_gzip_is_still_read(running: RunningDaemon) -> None:
    """An auth event sent gzip-compressed is decoded and recorded as before."""
    body = {"account_id": "acc-g", "occurred_at": datetime.now(UTC).isoformat()}
    headers = {**running.auth_headers(), "Content-Encoding": "gzip"}
    raw = gzip.compress(json.dumps(body).encode())
    async with running.http.post("/v1/auth-events", data=raw, headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("path", "headers_of"),
    [
        ("/v1/auth-events", RunningDaemon.auth_headers),
        ("/v1/migration/enable", RunningDaemon.operator_headers),
    ],
    ids=["auth-events", "operator"],
)
async def test_other_routes_refuse_a_coding_they_cannot_undo_with_415(
    running: RunningDaemon, path: str, headers_of
) -> None:
    """The auth-event and operator routes answer a br body with 415 naming Content-Encoding."""
    headers = {**headers_of(running), "Content-Encoding": "br"}
    async with running.http.post(path, data=b"\x0b\x02\x80{}\x03", headers=headers) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]["code"]) == (415, "unsupported_encoding")
        assert answer["error"]["field"] == "Content-Encoding"
