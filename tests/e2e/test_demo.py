"""`staticipd demo` as a user runs it: it finishes, its log passes the audit tools, Ctrl-C works."""

from __future__ import annotations

import os
import re
import signal
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
