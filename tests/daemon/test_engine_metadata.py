"""Every event says where it came from: source, input, causation and correlation ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


async def test_events_carry_causation_and_correlation(running: Any) -> None:
    """The recorded input points at the outside message; what it caused points at the input."""
    d = running
    status, _ = await d.operator("POST", "/v1/migration/enable", {"reason": "test"})
    assert status == 200
    await d.operator("POST", "/v1/enrollments", {"account_ids": ["acc-m"], "wave": "w1"})
    status, _ = await d.auth_event(
        {"account_id": "acc-m", "occurred_at": "2026-11-25T10:00:00Z", "event_id": "a-1"}
    )
    assert status == 200
    events = [e for e in d.setup.events() if e["event_id"].startswith("auth:a-1#")]
    assert len(events) > 1  # the recorded auth and the state change it caused
    meta = [json.loads(e["metadata"]) for e in events]
    assert meta[0]["source"] == "auth-event"
    assert meta[0]["causation_id"] == "auth:a-1"
    assert all(m["causation_id"] == "auth:a-1#0" for m in meta[1:])
    request_ids = {m["correlation_id"] for m in meta}
    assert len(request_ids) == 1
    assert None not in request_ids
