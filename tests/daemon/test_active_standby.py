"""Two `staticipd serve` processes on one PostgreSQL log (README.md, "Active/standby on
PostgreSQL"): one leads and takes writes, the other follows the log, answers reads and refuses
writes with 503 until it takes over.

Real subprocesses on loopback ports (tests/daemon/test_process.py's `spawn`) and the throwaway
server of tests/conftest.py; skipped, saying why, without the PostgreSQL binaries.
"""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon import exitcodes
from daemon.config import ConfigError, load_config
from tests.daemon.conftest import DaemonSetup, new_setup
from tests.daemon.test_process import Child, free_port, signed_webhook, spawn

pytestmark = [pytest.mark.timeout(90)]

LEASE = 2.0
WAIT = 30.0


def pair_setup(workdir: Path, url: str, **env: str) -> DaemonSetup:
    """One set of secrets and settings for both instances (each gets its own port)."""
    setup = new_setup(workdir)
    setup.env.update(
        {
            "STATICIPD_DATABASE": url,
            "STATICIPD_CLUSTER__LEASE_SECONDS": str(LEASE),
            "STATICIPD_LOGGING__FORMAT": "json",
            **env,
        }
    )
    return setup


@contextmanager
def instance(setup: DaemonSetup, name: str) -> Iterator[Child]:
    """`serve` on a port of its own, started in its own directory, up (not necessarily ready)."""
    port = free_port()
    workdir = setup.workdir / name
    workdir.mkdir(exist_ok=True)
    env = {
        **setup.env,
        "STATICIPD_LISTEN": f"127.0.0.1:{port}",
        "STATICIPD_ALLOWLIST__PATH": str(workdir / "allowlist.txt"),
    }
    with spawn(env, workdir, port, ready=False) as child:
        child.wait_for_log("daemon.ready", timeout=WAIT)
        yield child


def until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def readyz(child: Child) -> tuple[int, dict[str, Any]]:
    status, body = child.request("GET", "/readyz")
    return status, json.loads(body)


def role(child: Child) -> str:
    try:
        return str(readyz(child)[1]["role"])
    except OSError:
        return "down"


def webhook(setup: DaemonSetup, child: Child, account_id: str) -> tuple[int, bytes]:
    body, sig = signed_webhook(setup, account_id)
    return child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})


def operator(setup: DaemonSetup, child: Child, path: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {setup.secret('operator_token')}"}
    status, body = child.request("GET", path, headers=auth)
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_one_leads_the_other_follows_and_refuses_writes(tmp_path: Path, pg_url: str) -> None:
    """The first instance leads (/readyz 200, role leader); the second is a standby: /readyz
    503 with role standby, /healthz 200, every write 503 `standby` with Retry-After, and its
    reads (summary, accounts) follow what the leader records; when the leader stops, the
    standby takes over and takes writes; a standby stops on SIGTERM with status 0, writing no
    snapshot."""
    setup = pair_setup(tmp_path, pg_url)
    with ExitStack() as stack:
        leader = stack.enter_context(instance(setup, "a"))
        until(lambda: role(leader) == "leader", what="the first instance leads")
        standby = stack.enter_context(instance(setup, "b"))
        assert readyz(leader)[0] == 200
        status, body = readyz(standby)
        assert status == 503
        assert body["role"] == "standby"
        assert body["checks"]["leader"] is False
        assert standby.request("GET", "/healthz")[0] == 200

        refused = [
            standby.request(*req)
            for req in [
                ("POST", "/webhooks/nylas", b"{}", {"X-Nylas-Signature": "x"}),
                ("POST", "/v1/auth-events", b"{}", {"Authorization": "Bearer x"}),
                ("POST", "/v1/migration/enable", b"{}", {"Authorization": "Bearer x"}),
            ]
        ]
        for status, answer in refused:
            assert status == 503
            assert json.loads(answer)["error"]["code"] == "standby"
        _, headers = _head(standby, "/webhooks/nylas")
        assert headers["Retry-After"] == str(math.ceil(LEASE))

        for n in range(5):
            assert webhook(setup, leader, f"acc-{n}")[0] == 200
        leader_summary = operator(setup, leader, "/v1/summary")
        assert leader_summary["role"] == "leader"
        until(
            lambda: (
                operator(setup, standby, "/v1/summary")["position"] == leader_summary["position"]
            ),
            what="the standby's projection follows the leader's commits",
        )
        summary = operator(setup, standby, "/v1/summary")
        assert summary["role"] == "standby"
        assert summary["funnel"] == leader_summary["funnel"]
        assert operator(setup, standby, "/v1/accounts/acc-3")["account_id"] == "acc-3"
        status, page = standby.request("GET", "/")
        assert status == 200
        assert b"standby" in page
        for child, leads in ((leader, 1), (standby, 0)):
            scraped = child.request("GET", "/metrics")[1].decode()
            assert f"\nstaticipd_leader {leads}.0\n" in scraped

        assert leader.stop(signal.SIGTERM) == exitcodes.OK
        until(lambda: role(standby) == "leader", what="the standby takes over")
        assert readyz(standby)[0] == 200
        assert webhook(setup, standby, "acc-after")[0] == 200
        with instance(setup, "c") as third:  # a standby stops cleanly and writes nothing
            assert role(third) == "standby"
            assert third.stop(signal.SIGTERM) == exitcodes.OK
        assert third.wait_for_log("daemon.stopped")["role"] == "standby"
        assert not [e for e in third.log_events() if e.get("event") == "snapshot.written"]
        assert standby.stop(signal.SIGTERM) == exitcodes.OK
    taken = [e for e in standby.log_events() if e.get("event") == "leadership.acquired"]
    assert len(taken) == 1
    assert taken[0]["position"] == leader_summary["position"]


def _head(child: Child, path: str) -> tuple[int, dict[str, str]]:
    """POST an empty body and return the status and headers."""
    req = urllib.request.Request(child.url + path, data=b"{}", method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_the_lease_is_ten_seconds_unless_set_and_must_be_positive() -> None:
    """`[cluster] lease_seconds` defaults to 10, is set by STATICIPD_CLUSTER__LEASE_SECONDS,
    and a lease of 0 is a configuration error."""
    assert load_config(None, {}).cluster.lease_seconds == 10
    env = {"STATICIPD_CLUSTER__LEASE_SECONDS": "2.5"}
    assert load_config(None, env).cluster.lease_seconds == 2.5
    with pytest.raises(ConfigError):
        load_config(None, {"STATICIPD_CLUSTER__LEASE_SECONDS": "0"})
