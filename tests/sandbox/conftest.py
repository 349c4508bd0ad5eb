"""Fixtures for the sandbox tests: a webhook endpoint that records what the sandbox sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web


class Hook:
    """A webhook endpoint on 127.0.0.1 that answers the challenge and keeps each POST's body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text=request.query.get("challenge", ""))
        self.bodies.append(json.loads(await request.read()))
        return web.Response()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def types(self) -> list[str]:
        """Triggers received, in order (v2 deltas or v3 notifications)."""
        out = []
        for body in self.bodies:
            out += [d["type"] for d in body["deltas"]] if "deltas" in body else [body["type"]]
        return out


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    await h.start()
    yield h
    await h.stop()
