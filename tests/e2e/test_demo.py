"""`staticipd demo` as a user runs it: it finishes, its log passes the audit tools, Ctrl-C works."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def staticipd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATICIPD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=cwd,
        env={**env, "TMPDIR": str(cwd)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_on_a_named_database_leaves_a_log_the_audit_tools_read(tmp_path: Path) -> None:
    """A small demo exits 0; verify, replay, status and audit of a printed account all work."""
    db = tmp_path / "demo.db"
    args = ["demo", "--accounts", "20", "--time-scale", "1200", "--policy", "notify"]
    done = staticipd(*args, "--seed", "3", "--database", str(db), cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Final funnel:" in done.stdout
    account = re.search(r"audit (\w+) --database", done.stdout)
    assert account is not None
    for command in (["verify"], ["replay"], ["status"], ["audit", account.group(1)]):
        result = staticipd(*command, "--database", str(db), cwd=tmp_path)
        assert result.returncode == 0, (command, result.stdout[-1000:], result.stderr[-1000:])
    audit = staticipd("audit", account.group(1), "--database", str(db), cwd=tmp_path).stdout
    assert "-> static" in audit
    # The key stays beside the named log, and the printed verify checks its signatures.
    key = tmp_path / "demo.db.checkpoint-key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    printed = re.search(r"staticipd (verify .*)", done.stdout)
    assert printed is not None
    verified = staticipd(*printed.group(1).split(), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    assert "signed checkpoint(s) valid" in verified.stdout
    # Run again on the same log: refused in one line, unless continued on purpose.
    again = staticipd(*args, "--database", str(db), cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "already holds a log" in again.stderr
    assert "--continue" in again.stderr
    go_on = [*args, "--seed", "4", "--database", str(db), "--continue"]
    assert staticipd(*go_on, cwd=tmp_path, timeout=90).returncode == 0
    verified = staticipd(*printed.group(1).split(), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    assert "2 signed checkpoint(s) valid" in verified.stdout


def test_the_default_demo_leaves_its_log_and_no_secret_file(tmp_path: Path) -> None:
    """Without --database the log stays in a temporary directory, every secret file is gone,
    and the printed verify command vouches for the head the demo ended at."""
    args = ["demo", "--accounts", "8", "--time-scale", "1200", "--policy", "notify"]
    done = staticipd(*args, cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    # The log and the provider's IP lists as the firewall's allowlist (public, not a secret).
    assert sorted(p.name for p in left) == ["allowlist.txt", "staticipd.db"], left
    printed = re.search(r"staticipd (verify --database \S+ --expect \d+:[0-9a-f]{64})", done.stdout)
    assert printed is not None, done.stdout
    verified = staticipd(*printed.group(1).split(), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    assert "1 expected hash(es) found" in verified.stdout


def test_demo_start_failures_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """A busy --port or a --database that cannot be created: one line on stderr, status 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = staticipd("demo", "--accounts", "2", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("staticipd: demo: cannot listen on")
    assert "Traceback" not in done.stderr
    nowhere = tmp_path / "no" / "such" / "dir" / "demo.db"
    done = staticipd("demo", "--database", str(nowhere), cwd=tmp_path)
    assert done.returncode == 2
    want = f"staticipd: demo: cannot create the log {nowhere}: no directory {nowhere.parent}\n"
    assert done.stderr == want


def test_ctrl_c_stops_the_demo_promptly_and_keeps_a_valid_log(tmp_path: Path) -> None:
    """SIGINT mid-run exits 130 within seconds, and the log it leaves verifies."""
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATICIPD_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "demo", "--accounts", "60", "--database", str(db)],
        cwd=tmp_path,
        env={**env, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted" in err
    assert staticipd("verify", "--database", str(db), cwd=tmp_path).returncode == 0
