"""Active/standby takeover: how long after the leader dies does the standby take writes.

Run with ``python -m bench.bench_takeover`` (a throwaway PostgreSQL server from the machine's
binaries, two `staticipd serve` processes on loopback). Each SIGKILL round kills the leader and
times, from the kill, until the standby's `/readyz` says `leader` and until a signed webhook
sent to it is acknowledged (200); the killed process is then started again, as systemd would,
and comes back a standby. Each SIGSTOP round freezes the leader instead: the standby can take
over only once the server has ended the frozen lock session (`[cluster] lease_seconds` without
a statement), so these measure the lease; the frozen process is continued afterwards and must
exit with status 3. Prints each round and the range.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from daemon import exitcodes
from eventstore.testing import ThrowawayPostgres, find_server_binaries

_POLL = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


class Instance:
    """One `staticipd serve` on a port of its own."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.env = {**env, "STATICIPD_LISTEN": f"127.0.0.1:{self.port}"}
        self.workdir = workdir / name
        self.workdir.mkdir(exist_ok=True)
        self.env["STATICIPD_ALLOWLIST__PATH"] = str(self.workdir / "allowlist.txt")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.workdir / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "serve"],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while self.role() == "down":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not start; see {self.workdir}/serve.log")
            time.sleep(0.05)

    def role(self) -> str:
        status, body = _request(self.url + "/readyz")
        if status == 0:
            return "down"
        return str(json.loads(body).get("role", "down"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)


def _webhook(secret: str, n: int) -> tuple[bytes, dict[str, str]]:
    delta = {
        "date": int(time.time()),
        "object": "account",
        "type": "account.running",
        "object_data": {"account_id": f"acc-{n}", "id": f"acc-{n}", "object": "account"},
    }
    body = json.dumps({"deltas": [delta]}).encode()
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-Nylas-Signature": sig, "Content-Type": "application/json"}


def _round(
    kind: str, leader: Instance, standby: Instance, secret: str, n: int, lease: float
) -> tuple[float, float]:
    """Kill or freeze `leader`; seconds until `standby` leads, and until it acknowledges a write."""
    assert leader.proc is not None
    body, headers = _webhook(secret, n)
    # At a random point of the standby's polling (it polls every lease/4 s from its start).
    time.sleep(random.uniform(0.2, 1.2) * lease)
    started = time.monotonic()
    if kind == "SIGKILL":
        leader.proc.kill()
    else:
        leader.proc.send_signal(signal.SIGSTOP)
    deadline = started + 120
    while standby.role() != "leader":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{standby.name} did not take over within 120 s")
        time.sleep(_POLL)
    leads = time.monotonic() - started
    while _request(standby.url + "/webhooks/nylas", body, headers)[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{standby.name} took no write within 120 s")
        time.sleep(_POLL)
    writes = time.monotonic() - started
    if kind == "SIGSTOP":
        leader.proc.send_signal(signal.SIGCONT)
        status = leader.proc.wait(timeout=60)
        if status != exitcodes.LEADERSHIP_LOST:
            raise RuntimeError(
                f"the frozen leader exited {status}, not {exitcodes.LEADERSHIP_LOST}"
            )
    else:
        leader.proc.wait(timeout=30)
    leader.start()  # systemd's restart: it comes back a standby
    if leader.role() != "standby":
        raise RuntimeError(f"{leader.name} came back as {leader.role()}")
    return leads, writes


def _show(kind: str, rows: list[tuple[float, float]]) -> None:
    if not rows:
        return
    for column, label in ((0, "/readyz says leader"), (1, "first write acknowledged")):
        values = [r[column] for r in rows]
        print(
            f"{kind:8} {label:26} {min(values):6.2f} – {max(values):6.2f} s"
            f"  (median {statistics.median(values):.2f} s, {len(values)} rounds)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_takeover", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="SIGKILL rounds (default 5)")
    parser.add_argument("--stop-rounds", type=int, default=2, help="SIGSTOP rounds (default 2)")
    parser.add_argument("--lease", type=float, default=2.0, help="lease_seconds (default 2)")
    args = parser.parse_args(argv)
    if find_server_binaries() is None:
        print("no PostgreSQL server binaries (initdb, pg_ctl): nothing to measure")
        return 0
    server = ThrowawayPostgres.start()
    workdir = Path(tempfile.mkdtemp(prefix="staticipd-takeover-"))
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    secret = secrets.token_hex(16)
    for name, value in (("webhook_secret", secret), ("operator_token", secrets.token_hex(16))):
        (credentials / name).write_text(value + "\n")
        (credentials / name).chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATICIPD_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        {
            "STATICIPD_DATABASE": server.url(server.create_database()),
            "STATICIPD_SECRETS_DIR": str(credentials),
            "STATICIPD_CLUSTER__LEASE_SECONDS": str(args.lease),
            "STATICIPD_LOGGING__FORMAT": "json",
        }
    )
    a, b = Instance("a", env, workdir), Instance("b", env, workdir)
    results: dict[str, list[tuple[float, float]]] = {"SIGKILL": [], "SIGSTOP": []}
    try:
        a.start()
        b.start()
        leader, standby = (a, b) if a.role() == "leader" else (b, a)
        print(f"lease {args.lease:g} s; polls every {args.lease / 4:g} s")
        rounds = [("SIGKILL", n) for n in range(args.rounds)]
        rounds += [("SIGSTOP", n) for n in range(args.stop_rounds)]
        for n, (kind, _) in enumerate(rounds):
            leads, writes = _round(kind, leader, standby, secret, n, args.lease)
            results[kind].append((leads, writes))
            print(f"{kind} round {n + 1}: leader after {leads:.2f} s, write after {writes:.2f} s")
            leader, standby = standby, leader
    finally:
        a.stop()
        b.stop()
        server.stop()
    for kind, rows in results.items():
        _show(kind, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
