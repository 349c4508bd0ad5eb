"""The read-only log commands work on a real database and exit with the documented statuses."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from daemon.cli import main
from eventstore import EventStore, NewEvent
from eventstore.chain import canonical_row


def build_log(path: Path, n: int = 20, key: bytes | None = None) -> None:
    async def fill() -> None:
        store = await EventStore.open(path)
        try:
            for i in range(n):
                await store.append(
                    [NewEvent(stream=f"account-{i % 3}", type="Noted", data=b'{"i":%d}' % i)]
                )
            if key is not None:
                await store.checkpoint(key)
        finally:
            await store.close()

    anyio.run(fill)


def test_verify_passes_on_an_intact_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`verify` exits 0 and says the chain is intact, checkpoints included when keyed."""
    db, key = tmp_path / "log.db", tmp_path / "key"
    key.write_bytes(b"checkpoint-secret\n")
    build_log(db, key=b"checkpoint-secret")
    assert main(["verify", "--database", str(db), "--checkpoint-key-file", str(key)]) == 0
    out = capsys.readouterr().out
    assert "ok: 20 events" in out
    assert "1 signed checkpoint(s) valid" in out


def test_verify_reports_an_edited_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edit made behind the daemon's back makes `verify` exit 1 naming the position."""
    db = tmp_path / "log.db"
    build_log(db)
    con = sqlite3.connect(db)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    con.execute("""UPDATE events SET data='{"i":999}' WHERE position=7""")
    con.commit()
    con.close()
    assert main(["verify", "--database", str(db), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    kinds = {(d["position"], d["kind"]) for d in report["damage"]}
    assert (7, "edited") in kinds
    assert any(kind == "triggers_missing" for _, kind in kinds)


def test_missing_database_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pointing a command at a file that does not exist exits 2 and creates nothing."""
    db = tmp_path / "nope.db"
    assert main(["verify", "--database", str(db)]) == 2
    assert "no event log" in capsys.readouterr().err
    assert not db.exists()


def test_export_lines_let_an_auditor_recompute_the_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each exported line carries the exact stored fields; rehashing them gives each line's hash."""
    db = tmp_path / "log.db"
    build_log(db, n=12)
    assert main(["export", "--database", str(db), "--from", "5", "--to", "9"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["position"] for line in lines] == [5, 6, 7, 8, 9]
    prev = lines[0]["prev_hash"]
    for line in lines:
        row = canonical_row(
            line["stream"],
            line["version"],
            line["type"],
            line["schema"],
            line["event_id"],
            line["recorded_at"],
            line["data"].encode(),
            line["metadata"].encode(),
        )
        assert line["prev_hash"] == prev
        assert hashlib.sha256(prev.encode() + row).hexdigest() == line["hash"]
        prev = line["hash"]
