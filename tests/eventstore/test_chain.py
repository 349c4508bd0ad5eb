"""The documented hash-chain and checkpoint encodings, re-implemented here as an auditor would."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from eventstore import GENESIS, EventStore, NewEvent

pytestmark = pytest.mark.anyio

DOCUMENTED_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # README: recorded_at as written into the hash (UTC)


def field(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def auditor_hash(prev: str, e) -> str:
    """SHA-256 over prev hash (hex ASCII) and the length-prefixed fields, as the docs define."""
    parts = [
        e.stream.encode(),
        str(e.version).encode(),
        e.type.encode(),
        str(e.schema).encode(),
        e.event_id.encode(),
        e.recorded_at.strftime(DOCUMENTED_TIME).encode(),
        e.data,
        e.metadata,
    ]
    return hashlib.sha256(prev.encode() + b"".join(field(p) for p in parts)).hexdigest()


async def test_hashes_follow_the_documented_encoding(tmp_path: Path) -> None:
    """Every stored hash equals an independent implementation of the documented chain."""
    async with await EventStore.open(tmp_path / "log.db") as store:
        await store.append([NewEvent("a", "T", '{"ü": 1}'.encode(), schema=2)])
        await store.append([NewEvent("b", "U", b"{}", metadata=b'{"source": "x"}')])
        prev = GENESIS
        async for e in store.read_all():
            assert e.hash == auditor_hash(prev, e)
            prev = e.hash


async def test_checkpoint_signature_follows_the_documented_encoding(tmp_path: Path) -> None:
    """A checkpoint's signature is HMAC-SHA256 over the documented length-prefixed fields."""
    async with await EventStore.open(tmp_path / "log.db") as store:
        await store.append([NewEvent("a", "T", b"{}")])
        cp = await store.checkpoint(b"k3y", "ops-2026")
        assert (cp.position, cp.head_hash) == await store.head()
        assert await store.checkpoints() == [cp]
    msg = b"".join(
        field(p)
        for p in (
            b"staticipd-checkpoint-v1",
            str(cp.position).encode(),
            cp.head_hash.encode(),
            cp.created_at.strftime(DOCUMENTED_TIME).encode(),
            b"ops-2026",
        )
    )
    assert cp.signature == hmac.new(b"k3y", msg, hashlib.sha256).hexdigest()
