"""The README's quick start as a newcomer runs it: `make demo` and `make test` in a fresh clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK_START = ["make demo", "make test"]
# One tiny, dependency-free test: `make test` must not recurse into this very file.
TINY_TEST = "tests/daemon/test_sdnotify.py::test_without_notify_socket_it_does_nothing"


def _quick_start_commands(readme: str) -> list[str]:
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no code block under '## Quick start'"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_readme_quick_start_is_the_two_tested_commands() -> None:
    """The README's quick-start block holds exactly the commands the quick-start test runs."""
    assert _quick_start_commands((ROOT / "README.md").read_text()) == QUICK_START


def _newcomer_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without our virtualenv or pytest settings leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "STATICIPD_", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if not p.startswith(str(ROOT)))
    env["TMPDIR"] = str(tmp_path)  # the demo's temporary log lands here and is cleaned up
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{output[-4000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_start_in_a_fresh_clone(tmp_path: Path) -> None:
    """In a fresh clone, `make demo` finishes with the summary and `make test` passes."""
    if shutil.which("make") is None:
        pytest.skip("`make` is not installed; the quick start needs it")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to clone from")
    repo = tmp_path / "staticipd"
    env = _newcomer_env(tmp_path)
    _run(
        ["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(repo)], tmp_path, env, 60
    )
    assert not (repo / ".venv").exists()

    # The Makefile passes no arguments to the demo, so it runs with its defaults.
    out = _run(["make", "demo"], repo, env, 300)
    assert "Final funnel:" in out
    summary = out.split("Final funnel:", 1)[1].splitlines()[0]
    counts = dict(re.findall(r"(\w+) (\d+)", summary))
    assert set(counts) <= {"static", "stalled"}, summary
    assert sum(int(n) for n in counts.values()) == 200
    assert int(counts["static"]) > 0
    match = re.search(r"(\S*staticipd) (verify --database .*)", out)
    assert match is not None, out[-2000:]
    assert "status page:" in out
    assert "staticipd audit " in out
    # The demo needs no test tools, and leaves no secret file in the temporary directory.
    assert not (repo / ".venv/bin/pytest").exists()
    kept = ("staticipd.db", "allowlist.txt")  # the log, and the provider's IP lists (public)
    assert not [p for p in tmp_path.glob("staticipd-demo-*/*") if p.name not in kept]
    # The log the demo leaves behind verifies with the command it printed, as printed.
    verified = _run([match.group(1), *match.group(2).split()], repo, env, 60)
    assert "expected hash(es) found" in verified

    test_env = {**env, "PYTEST_ADDOPTS": f"{TINY_TEST} -p no:cacheprovider"}
    out = _run(["make", "test"], repo, test_env, 240)
    assert re.search(r"\b1 passed\b", out), out[-2000:]
