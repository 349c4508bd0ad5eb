"""Failover under load (README.md, "Active/standby on PostgreSQL"): two `staticipd serve`
processes on one PostgreSQL log while signed webhooks and auth events go to both the whole
time; the leader is killed (SIGKILL), then the next leader is frozen (SIGSTOP) past its lease.

Afterwards every acknowledged input is in the log once, every timer fired once, every
re-authentication request reached the application under its effect's key as `webhook-id`, the
frozen leader exited with status 3 once continued, having written nothing after the takeover,
and `staticipd verify` passes.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from daemon import exitcodes
from eventstore import EventStore, RecordedEvent
from tests.daemon.conftest import DaemonSetup
from tests.daemon.test_active_standby import LEASE, instance, pair_setup, role, until
from tests.daemon.test_process import Child

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACCOUNTS = 12
DELAY = 3.0  # seconds from first auth to the second step (a sandbox may go below 30 min)


class Receiver:
    """The application's notify endpoint: records each message's `webhook-id` and body."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.status = 200  # what it answers (a test makes it refuse for a while)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    outer.messages.append((self.headers["webhook-id"], json.loads(body)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def reauth_for(self, account_id: str) -> bool:
        with self._lock:
            return any(m.get("data", m).get("account_id") == account_id for _, m in self.messages)


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def post(child: Child, path: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(child.url + path, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # refused, reset or timed out: a dead or frozen instance


class Load:
    """Sends every account's migration (first auth, stop, second auth, running) to both
    instances, each input to a random one first and to the other on anything but 200, until
    it is acknowledged; records what was acknowledged."""

    def __init__(self, setup: DaemonSetup, receiver: Receiver) -> None:
        self.setup = setup
        self.receiver = receiver
        self.instances: list[Child] = []
        self.acked_auth: set[str] = set()
        self.acked_hooks: set[tuple[str, str]] = set()
        self.answers: Counter[int] = Counter()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.started_at = time.monotonic()

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            targets = list(self.instances)
            random.shuffle(targets)
            for child in targets:
                status = post(child, path, body, headers)
                self.answers[status] += 1
                if status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"never acknowledged: {path} {body!r}")

    def auth(self, account_id: str, event_id: str) -> None:
        body = {
            "account_id": account_id,
            "occurred_at": datetime.now(UTC).isoformat(),
            "event_id": event_id,
        }
        token = self.setup.secret("auth_events_token")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.send("/v1/auth-events", json.dumps(body).encode(), headers)
        self.acked_auth.add(event_id)

    def hook(self, account_id: str, trigger: str) -> None:
        delta = {
            "date": int(time.time()),
            "object": "account",
            "type": trigger,
            "object_data": {"account_id": account_id, "id": account_id, "object": "account"},
        }
        body = json.dumps({"deltas": [delta]}).encode()
        headers = {"X-Nylas-Signature": self.setup.sign(body), "Content-Type": "application/json"}
        self.send("/webhooks/nylas", body, headers)
        self.acked_hooks.add((account_id, trigger))

    def run(self) -> None:
        try:
            started: dict[str, float] = {}
            finished: set[str] = set()
            ids = [f"acc-{n}" for n in range(ACCOUNTS)]
            while len(finished) < len(ids):
                for account_id in ids:
                    if (
                        account_id not in started
                        and len(started) * 0.4 <= time.monotonic() - self.started_at
                    ):
                        self.auth(account_id, f"first-{account_id}")
                        self.hook(account_id, "account.stopped")
                        started[account_id] = time.monotonic()
                    elif (
                        account_id in started
                        and account_id not in finished
                        and time.monotonic() - started[account_id] > DELAY
                        and self.receiver.reauth_for(account_id)
                    ):
                        self.auth(account_id, f"second-{account_id}")
                        self.hook(account_id, "account.running")
                        finished.add(account_id)
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def operator_post(setup: DaemonSetup, child: Child, path: str, doc: dict[str, Any]) -> int:
    headers = {
        "Authorization": f"Bearer {setup.secret('operator_token')}",
        "Content-Type": "application/json",
    }
    return post(child, path, json.dumps(doc).encode(), headers)


def migrating_pair(
    stack: ExitStack, setup: DaemonSetup, account_ids: list[str]
) -> tuple[Child, Child]:
    """Instance `a` leading and `b` standing by (both stopped by `stack`), the migration enabled
    and `account_ids` enrolled in wave w1 with the notify policy."""
    a = stack.enter_context(instance(setup, "a"))
    until(lambda: role(a) == "leader", what="the first instance leads")
    b = stack.enter_context(instance(setup, "b"))
    assert operator_post(setup, a, "/v1/migration/enable", {"reason": "failover"}) == 200
    enrol = {"account_ids": account_ids, "wave": "w1", "policy": "notify"}
    assert operator_post(setup, a, "/v1/enrollments", enrol) in (200, 201)
    return a, b


def summary(setup: DaemonSetup, child: Child) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {setup.secret('operator_token')}"}
    status, body = child.request("GET", "/v1/summary", headers=auth)
    assert status == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


def read_log(url: str) -> list[RecordedEvent]:
    async def read() -> list[RecordedEvent]:
        async with EventStore.open(url, readonly=True) as store:
            return [e async for e in store.read_all()]

    return anyio.run(read)


def first(child: Child, event: str) -> dict[str, Any]:
    return child.wait_for_log(event, timeout=1)


def test_failover_under_load_keeps_every_input_timer_and_effect(
    tmp_path: Path, pg_url: str
) -> None:
    """SIGKILL of the leader, then SIGSTOP of the next one past its lease, while inputs keep
    coming to both instances: every acknowledged input is in the log once, every timer fired
    once, every effect reached the application under its key, the frozen leader exits 3 once
    continued without writing after the takeover, and verify passes."""
    with ExitStack() as stack:
        receiver = stack.enter_context(receiving())
        setup = pair_setup(
            tmp_path,
            pg_url,
            STATICIPD_PROVIDER__SANDBOX="true",
            STATICIPD_MIGRATION__DELAY_SECONDS=str(DELAY),
            STATICIPD_MIGRATION__STOP_GRACE_SECONDS="600",
            STATICIPD_MIGRATION__RUNNING_GRACE_SECONDS="600",
            STATICIPD_MIGRATION__REMINDER_SCHEDULE_SECONDS="600",
            STATICIPD_MIGRATION__STALL_AFTER_SECONDS="600",
            STATICIPD_NOTIFY__URL=receiver.url,
        )
        ids = [f"acc-{n}" for n in range(ACCOUNTS)]
        a, b = migrating_pair(stack, setup, ids)

        load = Load(setup, receiver)
        load.instances = [a, b]
        load.started_at = time.monotonic()
        driver = threading.Thread(target=load.run, daemon=True)
        driver.start()

        # 1. The leader dies: its socket closes, the standby takes over.
        time.sleep(2.0)
        a.proc.kill()
        a.proc.wait(timeout=10)
        until(lambda: role(b) == "leader", what="the standby takes over after SIGKILL")
        a2 = stack.enter_context(instance(setup, "a2"))  # systemd's restart: a standby
        load.instances = [b, a2]
        assert role(a2) == "standby"

        # 2. The new leader freezes past its lease; the restarted one takes over.
        time.sleep(1.5)
        b.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        until(lambda: role(a2) == "leader", what="the standby takes over from a frozen leader")
        time.sleep(max(0.0, frozen_at + LEASE + 1 - time.monotonic()))
        b.proc.send_signal(signal.SIGCONT)
        assert b.proc.wait(timeout=30) == exitcodes.LEADERSHIP_LOST

        assert load.done.wait(60), "the load did not finish"
        assert load.error is None, load.error
        until(
            lambda: summary(setup, a2)["funnel"]["static"] == ACCOUNTS,
            what="every account static",
        )
        assert a2.stop(signal.SIGTERM) == exitcodes.OK

    events = read_log(pg_url)
    ids_in_log = Counter(e.event_id for e in events)
    assert all(n == 1 for n in ids_in_log.values())
    for event_id in load.acked_auth:
        assert ids_in_log[f"auth:{event_id}#0"] == 1, event_id
    hooks = Counter(
        (e.stream.removeprefix("account-"), json.loads(e.data)["trigger"])
        for e in events
        if e.type == "ProviderNotificationRecorded"
    )
    for key in load.acked_hooks:
        assert hooks[key] == 1, key
    assert len(load.acked_auth) == len(load.acked_hooks) == 2 * ACCOUNTS

    fired = Counter(json.loads(e.data)["timer_id"] for e in events if e.type == "TimerFired")
    assert fired
    assert all(n == 1 for n in fired.values())
    second_steps = [
        json.loads(e.data)
        for e in events
        if e.type == "TimerFired" and json.loads(e.data)["purpose"] == "second_step"
    ]
    assert len(second_steps) == ACCOUNTS

    keys = {json.loads(e.data)["idempotency_key"] for e in events if e.type == "ReauthRequested"}
    assert len(keys) >= ACCOUNTS
    received: defaultdict[str, int] = defaultdict(int)
    for webhook_id, _ in receiver.messages:
        received[webhook_id] += 1
    assert keys <= set(received), "a re-authentication request never reached the application"
    assert set(received) <= keys | {
        json.loads(e.data)["idempotency_key"] for e in events if e.type == "AppNotified"
    }
    succeeded = Counter(
        json.loads(e.data)["idempotency_key"] for e in events if e.type == "EffectSucceeded"
    )
    assert all(succeeded[k] == 1 for k in keys)

    # Two takeovers; the frozen leader's last position is at or before the second one's.
    taken = first(b, "leadership.acquired")["position"]
    retaken = first(a2, "leadership.acquired")["position"]
    lost = first(b, "leadership.lost")
    assert taken <= retaken
    assert lost["position"] <= retaken
    assert load.answers[503] > 0  # the standbys refused writes meanwhile

    verify = subprocess.run(
        [sys.executable, "-m", "daemon", "verify", "--database", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_new_leader_performs_a_pending_effect_under_the_same_key(
    tmp_path: Path, pg_url: str
) -> None:
    """A re-authentication request the old leader could not deliver (the application answered
    503) is delivered by the new leader after a SIGKILL, with the same `webhook-id` (the
    effect's idempotency key), and recorded as performed once."""
    with ExitStack() as stack:
        receiver = stack.enter_context(receiving())
        receiver.status = 503
        setup = pair_setup(
            tmp_path,
            pg_url,
            STATICIPD_PROVIDER__SANDBOX="true",
            STATICIPD_MIGRATION__DELAY_SECONDS="1",
            STATICIPD_MIGRATION__STOP_GRACE_SECONDS="600",
            STATICIPD_NOTIFY__URL=receiver.url,
        )
        a, b = migrating_pair(stack, setup, ["acc-1"])
        load = Load(setup, receiver)
        load.instances = [a]
        load.auth("acc-1", "first-acc-1")
        load.hook("acc-1", "account.stopped")
        until(lambda: len(receiver.messages) >= 1, what="the old leader tries the effect")
        (refused_id, _), *_ = receiver.messages
        a.proc.kill()
        a.proc.wait(timeout=10)
        tried = len(receiver.messages)
        receiver.status = 200
        until(lambda: role(b) == "leader", what="the standby takes over")
        until(lambda: len(receiver.messages) > tried, what="the new leader performs the effect")
        assert {webhook_id for webhook_id, _ in receiver.messages} == {refused_id}
        until(
            lambda: any(e.type == "EffectSucceeded" for e in read_log(pg_url)),
            what="the new leader records the effect performed",
        )
        assert b.stop(signal.SIGTERM) == exitcodes.OK

    events = read_log(pg_url)
    keys = [json.loads(e.data)["idempotency_key"] for e in events if e.type == "ReauthRequested"]
    assert keys == [refused_id]
    succeeded = [e for e in events if e.type == "EffectSucceeded"]
    assert [json.loads(e.data)["idempotency_key"] for e in succeeded] == [refused_id]
