"""Fixtures for end-to-end tests of a real daemon on 127.0.0.1: tmp database, generated secrets.

The pattern, to copy for other end-to-end suites: a `DaemonSetup` holds the files and
`STATICIPD_*` settings of one daemon (a SQLite log in `tmp_path`, secret files written with
fresh random values); `run_daemon(setup)` is an async context manager that starts the real
`Daemon` in-process on an ephemeral loopback port, waits until it is ready, yields a
`RunningDaemon` (its URL, an aiohttp session, signing helpers) and stops it on exit, however
the test ended. Run it twice on the same setup to test a restart on the same log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as pysecrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from daemon.config import load_config, load_secrets
from daemon.provider.standardwebhooks import generate_secret
from daemon.service import Daemon

START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0


@dataclass
class DaemonSetup:
    """The files and environment of one daemon under test; edit `env` before starting it."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)

    @property
    def database(self) -> Path:
        return self.workdir / "staticipd.db"

    @property
    def secrets_dir(self) -> Path:
        return self.workdir / "credentials"

    def write_secret(self, name: str, *values: str) -> None:
        """Write a secret file (one value a line, as during rotation), mode 600."""
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.secrets_dir / name
        path.write_text("".join(f"{v}\n" for v in values))
        path.chmod(0o600)
        self.values[name] = list(values)

    def secret(self, name: str) -> str:
        """The first (current) value of a secret."""
        return self.values[name][0]

    def all_secret_values(self) -> list[str]:
        return [v for values in self.values.values() for v in values]

    def sign(self, body: bytes, secret: str | None = None) -> str:
        """The provider's `X-Nylas-Signature`: hex HMAC-SHA256 of the raw body."""
        key = (secret or self.secret("webhook_secret")).encode()
        return hmac.new(key, body, hashlib.sha256).hexdigest()

    def events(self) -> list[dict[str, Any]]:
        """Every event in the log, read with a fresh read-only sqlite3 connection."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT position, stream, type, data, metadata, event_id FROM events "
                "ORDER BY position"
            ).fetchall()
        conn.close()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def events_of(self, type_: str, stream: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e["type"] == type_ and (stream is None or e["stream"] == stream)
        ]


def new_setup(workdir: Path) -> DaemonSetup:
    """A setup with every secret generated, provider/notify unconfigured, long migration delays."""
    workdir.mkdir(parents=True, exist_ok=True)
    setup = DaemonSetup(workdir)
    setup.write_secret("webhook_secret", pysecrets.token_hex(16))
    setup.write_secret("auth_events_token", pysecrets.token_urlsafe(24))
    setup.write_secret("operator_token", pysecrets.token_urlsafe(24))
    setup.write_secret("notify_secret", generate_secret())
    setup.env.update(
        {
            "STATICIPD_DATABASE": str(setup.database),
            "STATICIPD_LISTEN": "127.0.0.1:0",
            "STATICIPD_SECRETS_DIR": str(setup.secrets_dir),
            # Tests speed these up where they need timers to fire.
            "STATICIPD_MIGRATION__DELAY_SECONDS": "1800",
            "STATICIPD_OUTBOX__BACKOFF_BASE_SECONDS": "0.1",
            "STATICIPD_OUTBOX__BACKOFF_MAX_SECONDS": "0.5",
            "STATICIPD_HTTP__SHUTDOWN_GRACE_SECONDS": "2",
        }
    )
    return setup


@dataclass
class RunningDaemon:
    """A started daemon, with an HTTP session on its URL and request helpers."""

    daemon: Daemon
    setup: DaemonSetup
    http: aiohttp.ClientSession
    url: str

    def operator_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.setup.secret('operator_token')}"}

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.setup.secret('auth_events_token')}"}

    async def post_webhook(
        self, body: bytes, signature: str | None = None, *, signed: bool = True
    ) -> aiohttp.ClientResponse:
        """POST raw bytes to /webhooks/nylas, signed with the current secret unless told."""
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Nylas-Signature"] = signature or self.setup.sign(body)
        async with self.http.post("/webhooks/nylas", data=body, headers=headers) as resp:
            await resp.read()
            return resp

    async def operator(
        self, method: str, path: str, json_body: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """Call the operator API with the operator token; returns (status, decoded JSON)."""
        headers = {**self.operator_headers(), **kwargs.pop("headers", {})}
        async with self.http.request(
            method, path, json=json_body, headers=headers, **kwargs
        ) as resp:
            return resp.status, await resp.json()

    async def auth_event(self, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(
            "/v1/auth-events", json=body, headers=self.auth_headers()
        ) as resp:
            return resp.status, await resp.json()

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05
    ) -> None:
        """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(step)

    def account(self, account_id: str) -> Any:
        """The account's state in the live projection (None if unknown)."""
        return self.daemon.live.projection.account(account_id)


def v2_body(account_id: str, trigger: str, date: int | None = None) -> bytes:
    """A v2 webhook body with one account delta, as the provider sends it."""
    delta = {
        "date": int(time.time()) if date is None else date,
        "object": "account",
        "type": trigger,
        "object_data": {
            "namespace_id": account_id,
            "account_id": account_id,
            "object": "account",
            "attributes": None,
            "id": account_id,
            "metadata": None,
        },
    }
    return json.dumps({"deltas": [delta]}).encode()


def v3_body(event_id: str, grant_id: str, trigger: str = "grant.updated", **obj: Any) -> bytes:
    """A v3 webhook body (CloudEvents-like) for one grant."""
    return json.dumps(
        {
            "specversion": "1.0",
            "type": trigger,
            "source": "/nylas/system",
            "id": event_id,
            "time": int(time.time()),
            "webhook_delivery_attempt": 1,
            "data": {
                "application_id": "app-1",
                "object": {"grant_id": grant_id, "object": "grant", **obj},
            },
        }
    ).encode()


@asynccontextmanager
async def run_daemon(setup: DaemonSetup) -> AsyncIterator[RunningDaemon]:
    """Run the real daemon until the block ends; it is stopped (and awaited) on every exit."""

    def load() -> tuple[Any, Any]:
        config = load_config(None, setup.env)
        return config, load_secrets(config, setup.env)

    config, secrets = load()
    daemon = Daemon(config, secrets, reload=load)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        try:
            with anyio.fail_after(START_TIMEOUT):
                await daemon.ready.wait()
            url = f"http://127.0.0.1:{daemon.bound_port}"
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(base_url=url, timeout=timeout) as http:
                yield RunningDaemon(daemon, setup, http, url)
        finally:
            daemon.stopped.set()
            # A daemon that does not stop in time is a failure, not a hang.
            tg.cancel_scope.deadline = anyio.current_time() + STOP_TIMEOUT


@pytest.fixture
def setup(tmp_path: Path) -> DaemonSetup:
    """Files and settings for a daemon in this test's tmp directory."""
    return new_setup(tmp_path / "daemon")


@pytest.fixture
def start_daemon() -> Callable[[DaemonSetup], AbstractAsyncContextManager[RunningDaemon]]:
    """`async with start_daemon(setup) as d:` runs a daemon; use it twice for a restart."""
    return run_daemon


@pytest.fixture
async def running(setup: DaemonSetup) -> AsyncIterator[RunningDaemon]:
    """A daemon on the default test setup, running for the whole test."""
    async with run_daemon(setup) as running_daemon:
        yield running_daemon


@pytest.fixture
def v2() -> Callable[..., bytes]:
    """`v2(account_id, trigger, date=None)`: a v2 webhook body."""
    return v2_body


@pytest.fixture
def v3() -> Callable[..., bytes]:
    """`v3(event_id, grant_id, trigger="grant.updated", **object_fields)`: a v3 webhook body."""
    return v3_body
