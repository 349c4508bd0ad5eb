"""The sandbox's webhook sender follows the published samples: compressed deliveries signed as
sent, and other objects' notifications mixed in, in their real shapes."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from daemon.provider.sandbox import SandboxProvider, SandboxSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class RawHook:
    """A loopback endpoint that keeps each POST's bytes as sent and its headers."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text=request.query.get("challenge", ""))
        self.posts.append((await request.read(), dict(request.headers)))
        return web.Response()

    async def start(self) -> None:
        app = web.Application(handler_args={"auto_decompress": False})
        app.router.add_route("*", "/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def bodies(self) -> list[dict[str, Any]]:
        out = []
        for raw, headers in self.posts:
            coding = headers.get("Content-Encoding", "identity")
            data = {"gzip": gzip.decompress, "deflate": zlib.decompress}.get(coding, bytes)(raw)
            out.append(json.loads(data))
        return out


@pytest.fixture
async def raw_hook() -> AsyncIterator[RawHook]:
    h = RawHook()
    await h.start()
    yield h
    await h.stop()


def settings(**overrides: Any) -> SandboxSettings:
    overrides.setdefault("connected_on_create", True)
    return SandboxSettings.compressed(0.3 / 1800, static_ips_enabled=True, **overrides)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compressed_deliveries_are_signed_over_the_bytes_as_sent(
    raw_hook: RawHook, coding: str
) -> None:
    """With compression on, each POST says its Content-Encoding and is signed as sent."""
    sandbox_settings = settings(webhook_content_encoding=coding)
    async with SandboxProvider(sandbox_settings) as sandbox:
        await sandbox.register_webhook(raw_hook.url)
        sandbox.create_accounts(2)
        await sandbox.sender.wait_idle()
    assert raw_hook.posts
    key = sandbox_settings.client_secret.encode()
    for raw, headers in raw_hook.posts:
        assert headers["Content-Encoding"] == coding
        assert headers["X-Nylas-Signature"] == hmac.new(key, raw, hashlib.sha256).hexdigest()
    assert {d["type"] for b in raw_hook.bodies() for d in b["deltas"]} == {"account.connected"}


async def test_v2_batches_mix_in_message_and_calendar_deltas(raw_hook: RawHook) -> None:
    """Other objects' deltas ride along account batches in their published shapes."""
    async with SandboxProvider(settings(other_object_deltas=1.0)) as sandbox:
        await sandbox.register_webhook(raw_hook.url)
        sandbox.create_accounts(2)
        await sandbox.sender.wait_idle()
        assert sandbox.sender.stats.other_deltas == 4
    deltas = [d for b in raw_hook.bodies() for d in b["deltas"]]
    by_object: dict[str, list[dict[str, Any]]] = {}
    for d in deltas:
        by_object.setdefault(d["object"], []).append(d)
    assert sorted(by_object) == ["account", "calendar", "message"]
    for calendar in by_object["calendar"]:
        assert "date" not in calendar
        assert {"time", "source", "id"} <= set(calendar)
    assert all("date" in m for m in by_object["message"])


async def test_v3_sends_calendar_notifications_of_their_own(raw_hook: RawHook) -> None:
    """In v3 another object's notification is a delivery of its own, without `time`."""
    async with SandboxProvider(settings(api_version=3, other_object_deltas=1.0)) as sandbox:
        await sandbox.register_webhook(raw_hook.url)
        sandbox.create_accounts(1)
        await sandbox.sender.wait_idle()
    types = sorted(b["type"] for b in raw_hook.bodies())
    assert types == ["calendar.created", "grant.created"]
    [calendar] = [b for b in raw_hook.bodies() if b["type"] == "calendar.created"]
    assert "time" not in calendar
