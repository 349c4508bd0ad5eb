"""`staticipd backup DEST`: a verified copy of the log, its head printed as `verify --expect`
takes it, and a destination that exists refused in one line."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from daemon.cli.main import build_parser, main
from tests.daemon.test_logcommands import build_log

KEY = b"checkpoint-secret"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    db = tmp_path / "log.db"
    build_log(db, n=30, key=KEY)
    return db


def test_backup_prints_a_head_that_verify_expect_accepts(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The copy's head is printed as POS:HASH; `verify --expect` with it passes on the copy and
    on the log, and without a key the text says the signatures were not checked."""
    dest = tmp_path / "copy.db"
    assert main(["backup", str(dest), "--database", str(log)]) == 0
    out = capsys.readouterr().out
    head = re.search(r"^head (\d+:[0-9a-f]{64}) ", out, flags=re.M)
    assert head is not None, out
    assert head.group(1).startswith("30:")
    assert "chain intact" in out
    assert "signatures not checked: no key given" in out
    for db in (dest, log):
        assert main(["verify", "--database", str(db), "--expect", head.group(1)]) == 0
    capsys.readouterr()


def test_backup_checks_the_copy_s_signatures_with_the_key(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the checkpoint key, the copy's last signed checkpoint is checked; `--json` says so."""
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    dest = tmp_path / "copy.db"
    argv = ["backup", str(dest), "--database", str(log), "--checkpoint-key-file", str(key)]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["head_position"] == 30
    assert doc["expect"] == f"30:{doc['head_hash']}"
    assert doc["checkpoint_key"] is True
    assert doc["signatures_checked"] == 1
    assert doc["last_checkpoint"]["position"] == 30
    assert doc["damage"] == []


def test_backup_refuses_a_destination_that_exists(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing DEST (even the log itself) is a usage error in one line, and is untouched."""
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"yesterday's backup")
    for target in (dest, log):
        before = target.read_bytes()
        assert main(["backup", str(target), "--database", str(log)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert "already exists" in err
        assert target.read_bytes() == before


def test_backup_into_a_missing_directory_is_a_usage_error(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A destination whose directory does not exist is refused in one line (exit 2)."""
    assert main(["backup", str(tmp_path / "nowhere" / "copy.db"), "--database", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("staticipd: cannot write ")
    assert len(err.strip().splitlines()) == 1


def test_backup_of_a_damaged_log_keeps_the_copy_and_exits_1(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log edited behind the daemon's back is copied as it is, and the copy's check fails."""
    con = sqlite3.connect(log)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    con.execute("""UPDATE events SET data='{"i":999}' WHERE position=7""")
    con.commit()
    con.close()
    dest = tmp_path / "copy.db"
    assert main(["backup", str(dest), "--database", str(log)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGE in the copy at position 7: edited" in out
    assert dest.exists()


README = (Path(__file__).parent.parent.parent / "README.md").read_text()
SYSTEMD = Path(__file__).parent.parent.parent / "systemd"


def test_readme_names_every_field_of_backup_json(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `--json` fields README lists for `backup` are exactly those it prints, in order."""
    text = " ".join(README.split("`--json` gives", 1)[1].split("It takes", 1)[0].split())
    documented = re.findall(r"`(\w+)`", text)
    assert main(["backup", str(tmp_path / "copy.db"), "--database", str(log), "--json"]) == 0
    assert documented == list(json.loads(capsys.readouterr().out))


def test_backup_refuses_a_partial_file_left_by_another_run(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `DEST.partial` that exists (a backup running, or one interrupted) is left alone: exit 2."""
    partial = tmp_path / "copy.db.partial"
    partial.write_bytes(b"another run's")
    assert main(["backup", str(tmp_path / "copy.db"), "--database", str(log)]) == 2
    assert "copy.db.partial already exists" in capsys.readouterr().err
    assert partial.read_bytes() == b"another run's"
    assert not (tmp_path / "copy.db").exists()


def test_backup_without_a_log_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No log at `--database`: one line, exit 2, and no copy made."""
    argv = ["backup", str(tmp_path / "copy.db"), "--database", str(tmp_path / "none.db")]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's settings, each key with its values in order (continuation lines joined)."""
    settings: dict[str, list[str]] = {}
    text = (SYSTEMD / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_backup_service_runs_a_backup_the_cli_accepts_into_its_one_writable_dir() -> None:
    """The example service runs `staticipd backup` with options the command takes, into a file
    named by the UTC date in the only directory it may write, and is sandboxed as README says."""
    service = unit("staticipd-backup.service")
    (start,) = service["ExecStart"]
    *shell, script = shlex.split(start)  # /bin/sh -c 'SCRIPT'
    assert shell == ["/bin/sh", "-c"]
    words = shlex.split(script)
    assert words[:3] == ["exec", "/opt/staticipd/.venv/bin/staticipd", "backup"]
    argv = words[3:]
    # systemd turns %% into %: the file is named by the UTC date.
    assert argv[-1] == "/var/backups/staticipd/staticipd-$(date -u +%%Y-%%m-%%d).db"
    args = build_parser().parse_args(["backup", *argv])
    assert args.database == Path("/var/lib/staticipd/staticipd.db")
    assert service["ReadWritePaths"] == ["/var/backups/staticipd"]
    assert service["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["PrivateNetwork"] == ["yes"]
    assert "StateDirectory" not in service  # it would make the state directory writable
    (post,) = service["ExecStartPost"]
    assert "/var/backups/staticipd" in post


def test_the_backup_service_deletes_copies_older_than_14_days_and_no_others(
    tmp_path: Path,
) -> None:
    """The clean-up the service runs after a good backup, run on a directory of copies: those
    older than 14 days go, a younger one and files that are not copies stay."""
    (post,) = unit("staticipd-backup.service")["ExecStartPost"]
    command = shlex.split(post.replace("/var/backups/staticipd", str(tmp_path)))
    now = time.time()
    ages = {"staticipd-old.db": 14 * 86400 + 3600, "staticipd-young.db": 14 * 86400 - 3600}
    ages["notes.txt"] = 30 * 86400
    for name, age in ages.items():
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, (now - age, now - age))
    subprocess.run(command, check=True, timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "staticipd-young.db"]


def test_the_backup_timer_runs_nightly_and_catches_up() -> None:
    """The timer fires at 03:00 (up to 30 minutes later) and catches up a missed night."""
    timer = unit("staticipd-backup.timer")
    assert timer["OnCalendar"] == ["*-*-* 03:00:00"]
    assert timer["RandomizedDelaySec"] == ["30min"]
    assert timer["Persistent"] == ["true"]
    assert timer["Unit"] == ["staticipd-backup.service"]
    assert unit("staticipd.service")["WatchdogSec"] == ["30s"]
