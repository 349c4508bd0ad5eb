"""The read-only log commands work on a real database and exit with the documented statuses."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from daemon.cli import main
from daemon.domain import (
    AuthReported,
    EnableMigration,
    Enroll,
    MigrationSettings,
    ProviderNotified,
    TimerFiredInput,
    encode_event,
)
from daemon.domain.harness import Harness
from daemon.projections import Projection
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


T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def migration_log(path: Path) -> None:
    """A real log of two accounts: one migrated to static, one stalled (never answered)."""
    settings = MigrationSettings(
        delay=timedelta(minutes=30),
        reminder_schedule=(timedelta(hours=1),),
        stall_after=timedelta(hours=1),
    )
    h = Harness(settings)

    def at(minutes: float) -> datetime:
        return T0 + timedelta(minutes=minutes)

    h.handle(EnableMigration(input_id="op:1", occurred_at=at(0), actor="ops"), at(0))
    h.handle(
        Enroll(input_id="op:2", occurred_at=at(0), account_ids=("good", "gone"), wave="w1",
               policy="notify", actor="ops"),
        at(0),
    )  # fmt: skip
    for account in ("good", "gone"):
        h.handle(AuthReported(input_id=f"auth:{account}:1", account_id=account,
                              occurred_at=at(1)), at(1))  # fmt: skip
        h.handle(ProviderNotified(input_id=f"v2:{account}:stop", account_id=account,
                                  trigger="account.stopped", occurred_at=at(2)), at(2))  # fmt: skip
    h.handle(AuthReported(input_id="auth:good:2", account_id="good", occurred_at=at(40)), at(40))
    h.handle(ProviderNotified(input_id="v2:good:run", account_id="good",
                              trigger="account.running", occurred_at=at(41)), at(41))  # fmt: skip
    for minute in range(30, 400, 10):  # the timer driver firing whatever is due
        for account in ("good", "gone"):
            state = h.accounts.get(account)
            for timer_id, due in list(state.pending_timers.items()) if state else ():
                if due <= at(minute):
                    h.handle(TimerFiredInput(input_id=f"timer:{timer_id}", account_id=account,
                                             timer_id=timer_id, due_at=due, fired_at=at(minute)),
                             at(minute))  # fmt: skip
    assert h.accounts["good"].state == "static"
    assert h.accounts["gone"].state == "stalled"

    async def write() -> None:
        store = await EventStore.open(path)
        try:
            for logged in h.log:
                encoded = encode_event(logged.event)
                await store.append(
                    [NewEvent(stream=logged.stream, type=encoded.type, data=encoded.data,
                              schema=encoded.schema, event_id=logged.event_id)]
                )  # fmt: skip
        finally:
            await store.close()

    anyio.run(write)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "migrated.db"
    migration_log(path)
    return path


def test_replay_prints_the_funnel(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --json` rebuilds the funnel from position 0: one static, one stalled."""
    assert main(["replay", "--database", str(migrated), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["funnel"]["static"] == 1
    assert doc["funnel"]["stalled"] == 1
    assert doc["snapshot"] is None


def test_replay_until_a_position_shows_the_past(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --position N` shows the state the log held at that position."""
    assert main(["replay", "--database", str(migrated), "--position", "12", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["position"] == 12
    assert doc["funnel"]["static"] == 0


def test_replay_reports_a_diverging_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot that disagrees with the log is reported and the exit status is 1."""
    path = tmp_path / "log.db"
    migration_log(path)

    async def forge() -> None:
        store = await EventStore.open(path)
        try:
            head, _ = await store.head()
            await store.save_snapshot("projection", head, Projection().to_snapshot())
        finally:
            await store.close()

    anyio.run(forge)
    assert main(["replay", "--database", str(path)]) == 1
    assert "DIVERGES" in capsys.readouterr().out


def test_audit_explains_a_stalled_account(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit` shows the stalled account's reminders and why it stalled."""
    assert main(["audit", "gone", "--database", str(migrated)]) == 0
    out = capsys.readouterr().out
    assert "AccountsEnrolled" in out
    assert "ReauthRequested" in out
    assert "second_step_due -> stalled" in out


def test_audit_json_and_unknown_account(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit --json` gives every event with state before/after; an unknown account exits 1."""
    assert main(["audit", "good", "--database", str(migrated), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["timeline"][-1]["state_after"] == "static"
    assert main(["audit", "nobody", "--database", str(migrated)]) == 1


def test_status_lists_stalled_accounts(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --json` shows the funnel and names the stalled accounts."""
    assert main(["status", "--database", str(migrated), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stalled"] == ["gone"]
    assert doc["migration_enabled"] is True


def test_allowlist_without_observed_lists_is_a_problem(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`allowlist` on a log that never saw an IP list exits 1 and says why."""
    assert main(["allowlist", "--database", str(migrated)]) == 1
    assert "no IP list" in capsys.readouterr().err
