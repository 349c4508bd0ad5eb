"""The daemon on a PostgreSQL log, as README's "PostgreSQL" sets it up: the daemon's role with
INSERT and SELECT on the log, its password a secret file. A server that goes away answers
webhooks 503 with Retry-After, and the daemon recovers by itself when it is back.

Skipped, saying why, without the machine's PostgreSQL server binaries.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from daemon.config import load_config
from eventstore import EventStore
from eventstore.testing import ThrowawayPostgres
from tests.daemon.conftest import new_setup, run_daemon, v2_body
from tests.eventstore.test_postgres import DAEMON_PASSWORD, DAEMON_ROLE, grant_daemon_role

pytestmark = pytest.mark.anyio


async def test_the_daemon_serves_from_postgres_and_recovers_from_a_lost_server(
    pg_lone_server: ThrowawayPostgres, tmp_path: Path
) -> None:
    """Webhooks are recorded in the database; while the server is down they get 503 with
    Retry-After and /readyz is 503; once it is back, /readyz is 200 again and webhooks are
    recorded, without a restart, and every acknowledged one is in the log."""
    server = pg_lone_server
    database = server.create_database()
    async with EventStore.open(server.url(database)):
        pass  # the tables, created by their owner
    await grant_daemon_role(server.url(database))
    setup = new_setup(tmp_path / "daemon")
    setup.write_secret("database_password", DAEMON_PASSWORD)
    url = server.url(database, user=DAEMON_ROLE)
    setup.env["STATICIPD_DATABASE"] = url
    assert load_config(None, setup.env).database.url == url

    async with run_daemon(setup) as running:
        assert (await running.post_webhook(v2_body("acc-1", "account.running"))).status == 200

        await anyio.to_thread.run_sync(server.kill)
        resp = await running.post_webhook(v2_body("acc-2", "account.running"))
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        async with running.http.get("/readyz") as ready:
            assert ready.status == 503

        await anyio.to_thread.run_sync(server.restart)
        with anyio.fail_after(30):
            while True:
                async with running.http.get("/readyz") as ready:
                    if ready.status == 200:
                        break
                await anyio.sleep(0.2)
        assert (await running.post_webhook(v2_body("acc-3", "account.running"))).status == 200

    async with EventStore.open(url, readonly=True, password=DAEMON_PASSWORD) as store:
        streams = {e.stream async for e in store.read_all() if e.type.startswith("Provider")}
        assert {"account-acc-1", "account-acc-3"} <= streams
        assert (await store.verify()).ok
