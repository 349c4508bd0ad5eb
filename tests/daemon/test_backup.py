"""`staticipd backup DEST`: a verified copy of the log, its head printed as `verify --expect`
takes it, and a destination that exists refused in one line."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from daemon.cli.main import main
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
