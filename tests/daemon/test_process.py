"""`staticipd serve` as a real subprocess: signals, systemd notification, defaults, log hygiene.

Each test starts `python -m daemon serve` with `STATICIPD_*` variables (a free loopback port,
a SQLite file and secret files in `tmp_path`), waits for `/readyz`, and always kills the child
in `finally`. Logs (JSON lines on stderr when not a terminal) are captured to a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon import exitcodes

pytestmark = [pytest.mark.timeout(60)]

READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
# Variables of the test runner's own environment that would change what the child does.
_INHERITED_OUT = ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STATICIPD_") and k not in _INHERITED_OUT
    }
    return {**env, **extra}


class Child:
    """A running `staticipd` subprocess and its captured log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                events.append({"event": "<not json>", "line": line})
        return events

    def wait_for_log(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.log_events():
                if entry.get("event") == event:
                    return entry
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} in the log:\n{self.log_text()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        # Always http://127.0.0.1:<port>: no file: or other scheme can sneak in (S310).
        req = urllib.request.Request(  # noqa: S310
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready within {READY_TIMEOUT} s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=EXIT_TIMEOUT)


@contextmanager
def spawn(
    env: dict[str, str], cwd: Path, port: int, *args: str, ready: bool = True
) -> Iterator[Child]:
    """Run `python -m daemon serve` (or `args`) for the block; the child never outlives it."""
    log_path = cwd / f"child-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *(args or ("serve",))],
            env=clean_env(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    child = Child(proc, log_path, port)
    try:
        if ready:
            child.wait_ready()
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT)


@pytest.fixture
def served(setup: Any) -> tuple[Any, int]:
    """The conftest setup on a fixed free port (the child cannot report an ephemeral one)."""
    port = free_port()
    setup.env["STATICIPD_LISTEN"] = f"127.0.0.1:{port}"
    setup.env["STATICIPD_LOGGING__FORMAT"] = "json"
    return setup, port


def signed_webhook(setup: Any, account_id: str, secret: str | None = None) -> tuple[bytes, str]:
    delta = {
        "date": int(time.time()),
        "object": "account",
        "type": "account.running",
        "object_data": {"account_id": account_id, "id": account_id, "object": "account"},
    }
    body = json.dumps({"deltas": [delta]}).encode()
    key = (secret or setup.secret("webhook_secret")).encode()
    return body, hmac.new(key, body, hashlib.sha256).hexdigest()


def run_staticipd(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m daemon ARGS` to its end, as a user runs it, in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=clean_env(env), cwd=cwd, capture_output=True, timeout=EXIT_TIMEOUT, check=False,
    )  # fmt: skip


def test_sigterm_exits_zero_after_writing_a_snapshot(served: tuple[Any, int]) -> None:
    """SIGTERM ends `serve` with exit status 0 and a snapshot of the log's head on disk."""
    setup, port = served
    with spawn(setup.env, setup.workdir, port) as child:
        body, sig = signed_webhook(setup, "acc-1")
        status, _ = child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})
        assert status == 200
        assert child.stop(signal.SIGTERM) == 0
    with sqlite3.connect(setup.database) as conn:
        rows = conn.execute("SELECT name, position FROM snapshots").fetchall()
    conn.close()
    assert rows == [("projection", 1)]
    assert child.wait_for_log("snapshot.written")["position"] == 1


def test_sighup_reloads_secrets_and_keeps_running(served: tuple[Any, int]) -> None:
    """SIGHUP re-reads the secret files: the process keeps running and the new token works."""
    setup, port = served
    old = setup.secret("operator_token")
    with spawn(setup.env, setup.workdir, port) as child:
        setup.write_secret("operator_token", "the-new-operator-token")
        child.proc.send_signal(signal.SIGHUP)
        reloaded = child.wait_for_log("daemon.reloaded")
        assert "operator_token" in reloaded["configured"]
        assert child.proc.poll() is None
        new_auth = {"Authorization": "Bearer the-new-operator-token"}
        assert child.request("GET", "/v1/summary", headers=new_auth)[0] == 200
        old_auth = {"Authorization": f"Bearer {old}"}
        assert child.request("GET", "/v1/summary", headers=old_auth)[0] == 401
        assert child.stop() == 0


def test_notify_socket_receives_ready_then_stopping(served: tuple[Any, int]) -> None:
    """With `$NOTIFY_SOCKET` set, systemd hears READY=1 once serving and STOPPING=1 on SIGTERM."""
    setup, port = served
    # AF_UNIX paths are limited to ~108 bytes: a short directory, not the deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="sd-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(EXIT_TIMEOUT)
            env = {**setup.env, "NOTIFY_SOCKET": path}
            with spawn(env, setup.workdir, port) as child:
                assert sock.recv(4096) == b"READY=1"
                assert child.stop() == 0
                messages = []
                while b"STOPPING=1" not in messages:
                    messages.append(sock.recv(4096))
    assert all(m.startswith(b"STATUS=") for m in messages[:-1])


def test_serve_without_any_configuration_starts_on_loopback_defaults(tmp_path: Path) -> None:
    """With no file, variables or secrets, `serve` runs on 127.0.0.1 and logs what is missing."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    port = 8750
    env: dict[str, str] = {"STATICIPD_LOGGING__FORMAT": "json"}
    if not port_is_free(port):
        # Another process holds the default port on this shared machine: keep every other
        # default and move only the port.
        port = free_port()
        env["STATICIPD_LISTEN"] = f"127.0.0.1:{port}"
    with spawn(env, cwd, port) as child:
        assert child.request("GET", "/healthz")[0] == 200
        ready = child.wait_for_log("daemon.ready")
        assert ready["listen"] == f"http://127.0.0.1:{port}"
        missing = child.wait_for_log("daemon.not_configured")["missing"]
        assert set(missing) >= {"webhook_secret", "operator_token", "auth_events_token"}
        child.wait_for_log("daemon.provider_not_configured")
        child.wait_for_log("daemon.notify_not_configured")
        # Unconfigured APIs are closed, not open.
        assert child.request("GET", "/v1/summary", headers={"Authorization": "Bearer x"})[0] == 401
        assert child.stop() == 0
    assert (cwd / "staticipd.db").exists()


def test_no_secret_or_signature_ever_reaches_the_log(served: tuple[Any, int]) -> None:
    """Even at debug level, with forged and valid requests and a reload, no secret is logged."""
    setup, port = served
    setup.env["STATICIPD_LOGGING__LEVEL"] = "debug"
    setup.write_secret("webhook_secret", "webhook-secret-current", "webhook-secret-previous")
    setup.write_secret("provider_api_key", "provider-api-key-value")
    setup.write_secret("checkpoint_key", "checkpoint-key-value")
    presented: list[str] = []
    with spawn(setup.env, setup.workdir, port) as child:
        body, good = signed_webhook(setup, "acc-1")
        _, old_key = signed_webhook(setup, "acc-1", "webhook-secret-previous")
        _, forged = signed_webhook(setup, "acc-1", "guessed-secret")
        for sig in (good, old_key, forged, good.upper(), "x" * 64):
            child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})
            presented.append(sig)
        child.request("POST", "/webhooks/nylas", b"\xff{", {"X-Nylas-Signature": forged})
        _, garbage_sig = signed_webhook(setup, "x")
        presented.append(garbage_sig)
        for token in (
            setup.secret("auth_events_token"),
            setup.secret("operator_token"),
            setup.secret("operator_token") + "x",
            "wrong-bearer-token",
        ):
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            child.request("POST", "/v1/auth-events", b'{"account_id": 1}', headers)
            child.request("GET", "/v1/summary", headers=headers)
            child.request("POST", "/v1/migration/enable", b"{", headers)
            presented.append(token)
        child.proc.send_signal(signal.SIGHUP)
        child.wait_for_log("daemon.reloaded")
        assert child.stop() == 0
    text = child.log_text()
    assert "http.error" in text  # the refusals were logged...
    for value in [*setup.all_secret_values(), *presented]:
        assert value not in text  # ...without any secret, token or signature
        assert value.lower() not in text.lower()


def test_the_journal_keeps_the_checkpoints_verify_can_check(served: tuple[Any, int]) -> None:
    """A signed checkpoint at shutdown is also a log line with its position and hash, and
    `staticipd verify --expect POS:HASH` confirms the log against it."""
    setup, port = served
    setup.write_secret("checkpoint_key", "checkpoint-key-value")
    with spawn(setup.env, setup.workdir, port) as child:
        body, sig = signed_webhook(setup, "acc-1")
        assert child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})[0] == 200
        assert child.stop() == 0
    (line,) = [e for e in child.log_events() if e.get("event") == "checkpoint.written"]
    assert line["position"] >= 1
    assert "checkpoint-key-value" not in child.log_text()
    expect = f"{line['position']}:{line['head_hash']}"
    result = run_staticipd(setup.env, setup.workdir, "verify", "--expect", expect)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"1 signed checkpoint(s) valid, 1 expected hash(es) found" in result.stdout


def test_an_empty_log_gets_no_checkpoint(served: tuple[Any, int]) -> None:
    """A daemon stopped before anything was recorded signs nothing: there is no head to vouch
    for, and every `checkpoint.written` line must be one `verify --expect` can take."""
    setup, port = served
    setup.write_secret("checkpoint_key", "checkpoint-key-value")
    with spawn(setup.env, setup.workdir, port) as child:
        assert child.stop() == 0
    assert not [e for e in child.log_events() if e.get("event") == "checkpoint.written"]


def test_check_config_prints_the_effective_config_with_secrets_masked(
    served: tuple[Any, int],
) -> None:
    """`staticipd check-config` prints the effective settings as JSON, every secret masked."""
    setup, port = served
    result = run_staticipd(setup.env, setup.workdir, "check-config")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["listen"] == f"127.0.0.1:{port}"
    assert document["database"]["path"] == str(setup.database)
    assert document["secrets"]["webhook_secret"] == "configured (1 value, masked)"
    assert document["secrets"]["provider_api_key"] == "missing"
    output = result.stdout.decode() + result.stderr.decode()
    for value in setup.all_secret_values():
        assert value not in output


def test_a_dead_part_takes_the_whole_process_down(served: tuple[Any, int]) -> None:
    """If a part fails (here: another process writes to the log), `serve` exits non-zero."""
    setup, port = served
    with spawn(setup.env, setup.workdir, port) as child:
        body, sig = signed_webhook(setup, "acc-1")
        assert child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})[0] == 200

        async def intrude() -> None:
            from eventstore import EventStore, NewEvent

            async with EventStore.open(setup.database) as store:
                await store.append([NewEvent(stream="intruder", type="Forged", data=b"{}")])

        import anyio

        anyio.run(intrude)
        body, sig = signed_webhook(setup, "acc-2")
        # Its events are committed, but the process goes down before answering: the sender
        # sees a dropped connection, retries later, and the retry is recognised as recorded.
        with contextlib.suppress(OSError):
            child.request("POST", "/webhooks/nylas", body, {"X-Nylas-Signature": sig})
        assert child.proc.wait(timeout=EXIT_TIMEOUT) != 0
    assert child.wait_for_log("daemon.part_failed")["part"] == "projection"


def test_sigterm_lets_an_in_flight_request_finish(served: tuple[Any, int]) -> None:
    """A request being recorded when SIGTERM comes is answered 200, then serve exits 0."""
    setup, port = served
    body = json.dumps(
        {"account_id": "acc-slow", "occurred_at": "2026-11-25T10:00:00Z", "event_id": "slow-1"}
    ).encode()
    request = (
        f"POST /v1/auth-events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {setup.secret('auth_events_token')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with spawn(setup.env, setup.workdir, port) as child:
        # Hold the database's write lock so the request is stuck in its durable append.
        blocker = sqlite3.connect(setup.database, timeout=10)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=EXIT_TIMEOUT) as sock:
                sock.sendall(request)
                time.sleep(0.3)
                child.proc.send_signal(signal.SIGTERM)
                child.wait_for_log("daemon.stopping")
                blocker.rollback()  # the append can go on now
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
        finally:
            blocker.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert child.proc.wait(timeout=EXIT_TIMEOUT) == 0
    with sqlite3.connect(setup.database) as conn:
        query = "SELECT COUNT(*) FROM events WHERE event_id = 'auth:slow-1#0'"
        (n,) = conn.execute(query).fetchone()
    conn.close()
    assert n == 1


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_delay_below_the_providers_30_minutes_is_refused_for_the_real_provider(
    setup: Any, command: str
) -> None:
    """`check-config` and `serve` refuse `migration.delay_seconds` under 1800 unless the
    provider is a sandbox, saying why, before anything runs."""
    env = {**setup.env, "STATICIPD_MIGRATION__DELAY_SECONDS": "600"}
    result = run_staticipd(env, setup.workdir, command)
    assert result.returncode == exitcodes.USAGE
    message = result.stderr.decode()
    assert "migration.delay_seconds = 600 is below 1800" in message
    assert "provider.sandbox = true" in message
    assert not setup.database.exists()
    sandboxed = {**env, "STATICIPD_PROVIDER__SANDBOX": "true"}
    result = run_staticipd(sandboxed, setup.workdir, "check-config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["migration"]["delay_seconds"] == 600


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is not None, reason="uvloop installed")
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_uvloop_without_uvloop_installed_is_refused_alike(setup: Any, command: str) -> None:
    """`check-config` refuses what `serve` would: `event_loop = "uvloop"` on a host without
    uvloop is one line and exit 2 from both, before anything runs."""
    env = {**setup.env, "STATICIPD_HTTP__EVENT_LOOP": "uvloop"}
    result = run_staticipd(env, setup.workdir, command)
    assert result.returncode == exitcodes.USAGE
    assert "uvloop is not installed" in result.stderr.decode()
    assert not result.stdout
    assert not setup.database.exists()


def test_check_config_warns_of_a_secret_file_others_can_read(setup: Any) -> None:
    """What `serve` logs as `daemon.secret_file`, `check-config` says on stderr, naming the file
    and never its value; the configuration is still printed (exit 0)."""
    setup.write_secret("operator_token", "readable-token-value")
    (setup.secrets_dir / "operator_token").chmod(0o644)
    result = run_staticipd(setup.env, setup.workdir, "check-config")
    assert result.returncode == 0, result.stderr
    warning = result.stderr.decode()
    assert warning.startswith("staticipd: warning:")
    assert "operator_token" in warning
    assert "readable-token-value" not in warning + result.stdout.decode()
    assert json.loads(result.stdout)["secrets"]["operator_token"].startswith("configured")


def test_a_log_that_cannot_be_created_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    """`serve` on a log in a directory that does not exist says so in one log line, whatever
    the timing of the storage library's thread (a traceback once slipped out after it)."""
    for _ in range(5):
        env = {"STATICIPD_LISTEN": f"127.0.0.1:{free_port()}"}
        result = run_staticipd(env, tmp_path, "serve", "--database", str(tmp_path / "no" / "x.db"))
        assert result.returncode == exitcodes.PROBLEM
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert "daemon.storage_failed" in lines[0]


def test_serve_takes_database_like_every_other_command(tmp_path: Path) -> None:
    """`serve --database PATH` opens that log, whatever the configuration's default."""
    port = free_port()
    env = {"STATICIPD_LISTEN": f"127.0.0.1:{port}", "STATICIPD_DATABASE": str(tmp_path / "no")}
    chosen = tmp_path / "chosen" / "log.db"
    chosen.parent.mkdir()
    with spawn(env, tmp_path, port, "serve", "--database", str(chosen)) as child:
        assert child.request("GET", "/readyz")[0] == 200
        assert child.stop() == 0
    assert chosen.exists()
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", [["check-config"], ["--help"], ["export", "--help"]])
def test_a_reader_gone_away_ends_the_command_quietly(tmp_path: Path, command: list[str]) -> None:
    """`staticipd check-config | head -1`: output into a closed pipe is no traceback, status 0."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "daemon", *command], env=clean_env({}), cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE, timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.stderr == b""
    assert done.returncode == 0
