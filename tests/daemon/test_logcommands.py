"""The read-only log commands work on a real database and exit with the documented statuses."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from daemon.cli.main import main
from daemon.domain import (
    AuthReported,
    EffectOutcome,
    EnableMigration,
    Enroll,
    IpListObserved,
    MigrationSettings,
    ProviderNotified,
    TimerDue,
    encode_event,
)
from daemon.domain.testing import Harness
from daemon.runtime.live import SNAPSHOT_NAME
from daemon.runtime.projections import Projection
from eventstore import AppendCall, EventStore, NewEvent
from eventstore.chain import canonical_row, row_hash


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
                    h.handle(TimerDue(input_id=f"timer:{timer_id}", account_id=account,
                                      timer_id=timer_id, due_at=due, fired_at=at(minute)),
                             at(minute))  # fmt: skip
    assert h.accounts["good"].state == "static"
    assert h.accounts["gone"].state == "stalled"

    write_harness_log(h, path)


def write_harness_log(h: Harness, path: Path) -> None:
    """Append the harness's events, each recorded at its own occurred_at (so --until has a past)."""
    now = [T0]

    async def write() -> None:
        async with EventStore.open(path, clock=lambda: now[0]) as store:
            for logged in h.log:
                now[0] = getattr(logged.event, "occurred_at", None) or now[0]
                encoded = encode_event(logged.event)
                await store.append(
                    [NewEvent(stream=logged.stream, type=encoded.type, data=encoded.data,
                              schema=encoded.schema, event_id=logged.event_id)]
                )  # fmt: skip

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


def save_snapshot(path: Path, position: int, projection: Projection | None = None) -> None:
    """Save `projection` as the daemon's snapshot at `position`; by default, what the daemon
    would save there: the projection of the log up to `position`."""

    async def save() -> None:
        async with EventStore.open(path) as store:
            snap = projection
            if snap is None:
                snap = Projection()
                async for rec in store.read_all(1, position):
                    snap.apply_record(rec)
            taken = snap.take_snapshot()
            parts = taken.encode(0, len(taken.items))
            await store.save_snapshot_parts(
                SNAPSHOT_NAME, position, taken.header, parts, complete=True
            )

    anyio.run(save)


def test_replay_reports_a_diverging_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot that disagrees with the log is reported and the exit status is 1."""
    path = tmp_path / "log.db"
    migration_log(path)
    save_snapshot(path, 33, Projection())  # an empty projection where the log has two accounts
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
    assert "reminder 1/1: the user is asked to re-authenticate" in out
    assert re.search(r"T\d\d:\d\d:\d\d\.\d{3}\+00:00", out), "times to the millisecond"


def test_audit_shows_a_failed_attempt_and_its_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit` says an attempt failed and when it is retried, and that the retry succeeded; a
    stop delivered before its auth event reads as the usual order, not as an anomaly."""
    h = Harness(MigrationSettings(delay=timedelta(minutes=30)))

    def at(minutes: float) -> datetime:
        return T0 + timedelta(minutes=minutes)

    h.handle(EnableMigration(input_id="op:1", occurred_at=at(0), actor="ops"), at(0))
    h.handle(Enroll(input_id="op:2", occurred_at=at(0), account_ids=("x",), wave="w1",
                    policy="notify", actor="ops"), at(0))  # fmt: skip
    h.handle(ProviderNotified(input_id="v2:x:stop", account_id="x",
                              trigger="account.stopped", occurred_at=at(1)), at(1))  # fmt: skip
    h.handle(AuthReported(input_id="auth:x:1", account_id="x", occurred_at=at(1.01)), at(1.01))
    (timer_id, due), *_ = h.accounts["x"].pending_timers.items()
    h.handle(TimerDue(input_id=f"timer:{timer_id}", account_id="x", timer_id=timer_id,
                      due_at=due, fired_at=at(32)), at(32))  # fmt: skip
    (key, *_) = h.accounts["x"].pending_effects
    attempts = ((1, "failed_retrying", "application answered 503", at(34)),
                (2, "succeeded", "200", None))  # fmt: skip
    for attempt, outcome, detail, retry_at in attempts:
        h.handle(EffectOutcome(input_id=f"outcome:{key}:{attempt}", account_id="x",
                               effect_key=key, outcome=outcome, attempt=attempt, detail=detail,
                               occurred_at=at(32 + attempt), next_attempt_at=retry_at),
                 at(32 + attempt))  # fmt: skip
    path = tmp_path / "retry.db"
    write_harness_log(h, path)
    assert main(["audit", "x", "--database", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stop before its auth event (the usual order)" in out
    assert "attempt 1 failed: application answered 503; retry 2026-03-01T09:34:00.000+00:00" in out
    assert "retry succeeded (attempt 2): 200" in out


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


def test_replay_until_a_time_shows_the_past_funnel(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay --until TIME` shows the funnel as the log held it then, state by state."""
    until = (T0 + timedelta(minutes=45)).isoformat()
    assert main(["replay", "--database", str(migrated), "--until", until, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["until"] == until
    assert doc["funnel"] == {
        "dynamic": 0,
        "first_auth": 0,
        "stopped_waiting": 0,
        "second_step_due": 1,  # "gone": its grace period is over, no second sign-in yet
        "second_auth": 0,
        "static": 1,  # "good": signed in again at 09:40 and runs on static IPs since 09:41
        "stalled": 0,
        "excluded": 0,
    }
    assert main(["replay", "--database", str(migrated), "--until", "2026-03-01T09:20"]) == 0
    out = capsys.readouterr().out
    assert "stopped_waiting  2" in out
    assert "static           0" in out


def test_replay_says_a_matching_snapshot_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot equal to the replayed log is reported as matching, exit 0."""
    path = tmp_path / "log.db"
    migration_log(path)
    save_snapshot(path, 33)
    assert main(["replay", "--database", str(path)]) == 0
    assert "snapshot at position 33: matches the log" in capsys.readouterr().out


def fresh_log(path: Path) -> None:
    """A log where "a" has signed in once (a timer pending) and "idle" is only enrolled."""
    h = Harness(MigrationSettings(delay=timedelta(minutes=30)))
    h.handle(EnableMigration(input_id="op:1", occurred_at=T0, actor="ops"), T0)
    h.handle(Enroll(input_id="op:2", occurred_at=T0, account_ids=("a", "idle"), wave="w1",
                    policy="notify", actor="ops"), T0)  # fmt: skip
    later = T0 + timedelta(minutes=1)
    h.handle(AuthReported(input_id="auth:a:1", account_id="a", occurred_at=later), later)
    assert h.accounts["a"].pending_timers
    write_harness_log(h, path)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "fresh.db"
    fresh_log(path)
    return path


def test_status_lists_the_account_due_next(fresh: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` names the account whose timer comes next, with its due time."""
    assert main(["status", "--database", str(fresh), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["account_id"] for d in doc["due_next"]] == ["a"]
    due = datetime.fromisoformat(doc["due_next"][0]["due_at"])
    assert due > T0 + timedelta(minutes=1)
    assert main(["status", "--database", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert f"{due.isoformat(timespec='seconds')}  a  (" in out
    assert "nothing pending" not in out


def test_audit_of_an_enrolled_only_account_shows_its_enrolment(
    fresh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An account enrolled but with no events of its own yet shows its enrolment, exit 0."""
    assert main(["audit", "idle", "--database", str(fresh), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(e["type"], e["state_after"]) for e in doc["timeline"]] == [
        ("AccountsEnrolled", "dynamic")
    ]
    assert main(["audit", "idle", "--database", str(fresh)]) == 0
    assert "account idle: 1 events" in capsys.readouterr().out


def fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes and mtime, and every file in its directory."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


@pytest.mark.parametrize("command", ["verify", "replay", "audit", "status", "export", "allowlist"])
def test_an_empty_file_is_refused_and_left_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Every log command on a 0-byte file exits 1 and leaves the file exactly as it was."""
    db = tmp_path / "wiped.db"
    db.write_bytes(b"")
    before = fingerprint(db)
    args = [command, *(["someone"] if command == "audit" else []), "--database", str(db)]
    assert main(args) == 1
    assert "not a staticipd log" in capsys.readouterr().err
    assert fingerprint(db) == before


def test_another_programs_database_is_refused_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` on another program's SQLite file exits 1 and adds none of our tables."""
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('ann')")
    con.commit()
    con.close()
    before = fingerprint(db)
    assert main(["status", "--database", str(db)]) == 1
    err = capsys.readouterr().err
    assert "not a staticipd log" in err
    assert "Traceback" not in err
    assert fingerprint(db) == before


def test_a_read_only_copy_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A copy in a directory nobody may write to verifies (exit 0) and gains no -wal/-shm file."""
    folder = tmp_path / "copy"
    folder.mkdir()
    db = folder / "log.db"
    build_log(db, n=7)
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        # As root the permissions do not bind; unchanged bytes/mtime and no new files still show
        # that nothing was written.
        before = fingerprint(db)
        assert main(["verify", "--database", str(db)]) == 0
        assert "ok: 7 events" in capsys.readouterr().out
        assert main(["status", "--database", str(db)]) == 0
        assert fingerprint(db) == before
        assert before[2] == ["log.db"]
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--until", "garbage"], "--until: not an ISO 8601 time: 'garbage'"),
        (["replay", "--position", "-5"], "--position must be from 0 to 9223372036854775807"),
        (["export", "--from", "0"], "--from must be from 1 to 9223372036854775807, not 0"),
        (
            ["export", "--to", str(2**64)],
            f"--to must be from 1 to 9223372036854775807, not {2**64}",
        ),
        (["export", "--from", "9", "--to", "5"], "--from 9 is after --to 5"),
        (["verify", "--checkpoint-key-file", "/missing/key"], "cannot read the checkpoint key"),
    ],
    ids=["until", "position", "export-from", "export-to-huge", "export-backwards", "key-file"],
)
def test_usage_errors_exit_2_with_one_line(
    migrated: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """A bad option value exits 2 with one line on stderr naming it, and no traceback."""
    assert main([*args, "--database", str(migrated)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("staticipd: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_verify_finds_the_key_in_the_secrets_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify` checks signatures with checkpoint_key from $STATICIPD_SECRETS_DIR first."""
    db, secrets, creds = tmp_path / "log.db", tmp_path / "secrets", tmp_path / "creds"
    build_log(db, key=b"right-key")
    secrets.mkdir()
    creds.mkdir()
    (creds / "checkpoint_key").write_bytes(b"wrong-key\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.delenv("STATICIPD_SECRETS_DIR", raising=False)
    assert main(["verify", "--database", str(db)]) == 1  # the credentials' key is wrong
    assert "checkpoint_other_key" in capsys.readouterr().out
    (secrets / "checkpoint_key").write_bytes(b"right-key\n")
    monkeypatch.setenv("STATICIPD_SECRETS_DIR", str(secrets))
    assert main(["verify", "--database", str(db)]) == 0
    assert "1 signed checkpoint(s) valid" in capsys.readouterr().out


def test_commands_read_the_log_and_key_the_config_names(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --database, a command reads the log of the daemon's configuration file, and
    verify finds the checkpoint key in that configuration's secrets_dir, as `serve` would."""
    db, secrets = tmp_path / "state" / "log.db", tmp_path / "secrets"
    db.parent.mkdir()
    secrets.mkdir()
    build_log(db, key=b"right-key")
    (secrets / "checkpoint_key").write_bytes(b"right-key\n")
    config = tmp_path / "staticipd.toml"
    config.write_text(f'secrets_dir = "{secrets}"\n\n[database]\npath = "{db}"\n')
    for name in ("STATICIPD_DATABASE", "STATICIPD_SECRETS_DIR", "STATICIPD_CONFIG",
                 "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no staticipd.db here: only the config can name the log

    assert main(["verify", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ok: 20 events, chain intact" in out
    assert "1 signed checkpoint(s) valid" in out
    monkeypatch.setenv("STATICIPD_CONFIG", str(config))  # the same, named by the environment
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["position"] == 20
    assert main(["status", "--json", "--database", str(tmp_path / "other.db")]) == 2
    assert "no event log at" in capsys.readouterr().err  # --database still wins


def test_a_bad_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration the daemon would refuse makes a log command exit 2, naming the problem."""
    config = tmp_path / "staticipd.toml"
    config.write_text("[database]\npaht = 'x.db'\n")
    assert main(["status", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("staticipd: configuration error:")
    assert "paht" in err


def test_allowlist_renders_the_latest_lists_the_log_observed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`allowlist` shows each list as its last observation left it, dated by the last change."""
    h = Harness(MigrationSettings())
    seen = [
        ("static", ("198.51.100.0/24", "203.0.113.7"), 1),
        ("dynamic", ("192.0.2.1", "2001:db8::1"), 2),
        ("static", ("203.0.113.7", "203.0.113.8"), 3),  # the /24 is gone, .8 is new
        ("dynamic", ("2001:db8::1", "192.0.2.1"), 4),  # the same list: no change
    ]
    for n, (kind, addresses, minute) in enumerate(seen):
        at = T0 + timedelta(minutes=minute)
        h.handle(IpListObserved(input_id=f"ip:{n}", kind=kind, addresses=addresses,
                                observed_at=at), at)  # fmt: skip
    h.handle(AuthReported(input_id="auth:a:1", account_id="a", occurred_at=T0), T0)
    path = tmp_path / "log.db"
    write_harness_log(h, path)

    assert main(["allowlist", "--database", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lists"] == {
        "dynamic": ["192.0.2.1/32", "2001:db8::1/128"],
        "static": ["203.0.113.7/32", "203.0.113.8/32"],
    }
    assert doc["updated_at"] == (T0 + timedelta(minutes=3)).isoformat()
    assert main(["allowlist", "--database", str(path)]) == 0
    assert capsys.readouterr().out.split() == [
        "192.0.2.1/32", "203.0.113.7/32", "203.0.113.8/32", "2001:db8::1/128"
    ]  # fmt: skip


def test_replay_compares_an_older_snapshot_and_still_shows_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot saved before the last events matches the log at its own position, and the
    funnel is still the one at the head."""
    path = tmp_path / "log.db"
    migration_log(path)
    save_snapshot(path, 12)
    assert main(["replay", "--database", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["snapshot"] == {"position": 12, "matches": True, "differing_accounts": []}
    assert doc["position"] == 33
    assert (doc["funnel"]["static"], doc["funnel"]["stalled"]) == (1, 1)


def test_replay_says_a_snapshot_past_the_log_diverges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot of positions the log does not have (a truncated log) is reported, exit 1."""
    path = tmp_path / "log.db"
    migration_log(path)
    save_snapshot(path, 40, Projection())
    assert main(["replay", "--database", str(path)]) == 1
    out = capsys.readouterr().out
    assert "snapshot at position 40: DIVERGES from the log" in out
    assert "the log ends at position 33, before the snapshot" in out


def test_verify_checks_heads_written_down_earlier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`verify --expect POS:HASH` catches a rewrite that recomputed the whole chain (which the
    chain alone cannot see), and a log cut short before POS; no key is needed."""
    db = tmp_path / "log.db"
    build_log(db, n=10)
    assert main(["verify", "--database", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    anchor = f"{report['head_position']}:{report['head_hash']}"
    assert main(["verify", "--database", str(db), "--expect", anchor]) == 0
    assert "1 expected hash(es) found" in capsys.readouterr().out

    # Someone with write access edits event 3, recomputes every hash after it and puts the
    # append-only triggers back.
    con = sqlite3.connect(db)
    triggers = con.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'").fetchall()
    for name, _ in triggers:
        con.execute(f"DROP TRIGGER {name}")
    con.execute("""UPDATE events SET data='{"i":999}' WHERE position=3""")
    prev = con.execute("SELECT hash FROM events WHERE position=2").fetchone()[0]
    rows = con.execute(
        "SELECT position, stream, version, type, schema, event_id, recorded_at, data, metadata"
        " FROM events WHERE position >= 3 ORDER BY position"
    ).fetchall()
    for position, *fields, data, metadata in rows:
        digest = row_hash(prev, canonical_row(*fields, data.encode(), metadata.encode()))
        con.execute(
            "UPDATE events SET prev_hash=?, hash=? WHERE position=?", (prev, digest, position)
        )
        prev = digest
    for _, sql in triggers:
        con.execute(sql)
    con.commit()
    con.close()
    assert main(["verify", "--database", str(db)]) == 0  # the chain alone is consistent again
    capsys.readouterr()
    assert main(["verify", "--database", str(db), "--expect", anchor, "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [(d["position"], d["kind"]) for d in found["damage"]] == [(10, "anchor_mismatch")]

    assert main(["verify", "--database", str(db), "--expect", f"11:{'0' * 64}"]) == 1
    assert "DAMAGE at position 11: truncated" in capsys.readouterr().out
    assert main(["verify", "--database", str(db), "--expect", "10:abc"]) == 2
    assert "--expect: want POSITION:HASH" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("column", "value"),
    [("data", b'{"i":5}'), ("recorded_at", "yesterday")],
    ids=["blob-for-text", "not-a-time"],
)
def test_a_row_of_the_wrong_type_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: object
) -> None:
    """A row edited behind the store's back so that it cannot be read makes the reading
    commands exit 1 naming its position, and verify still reports it as damage."""
    db = tmp_path / "log.db"
    build_log(db, n=8)
    con = sqlite3.connect(db)
    triggers = con.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'").fetchall()
    for name, _ in triggers:
        con.execute(f"DROP TRIGGER {name}")
    con.execute(f"UPDATE events SET {column}=? WHERE position=5", (value,))  # noqa: S608
    for _, sql in triggers:
        con.execute(sql)
    con.commit()
    con.close()
    for command in (["replay"], ["status"], ["export"]):
        assert main([*command, "--database", str(db)]) == 1
        err = capsys.readouterr().err
        assert "the event at position 5 cannot be read" in err
        assert "Traceback" not in err
    assert main(["verify", "--database", str(db)]) == 1
    assert "DAMAGE at position 5" in capsys.readouterr().out


def test_verify_checks_every_head_given_for_one_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two `--expect` values for the same position are both checked: a wrong one is not
    dropped because a right one for that position came after it."""
    db = tmp_path / "log.db"
    build_log(db, n=10)
    assert main(["verify", "--database", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    right = f"{report['head_position']}:{report['head_hash']}"
    wrong = f"{report['head_position']}:{'f' * 64}"
    assert main(["verify", "--database", str(db), "--expect", wrong, "--expect", right]) == 1
    assert "DAMAGE at position 10: anchor_mismatch" in capsys.readouterr().out
    assert main(["verify", "--database", str(db), "--expect", right, "--expect", right]) == 0
    assert "2 expected hash(es) found" in capsys.readouterr().out


def test_verify_names_an_expected_row_gone_from_the_middle_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expected row deleted from the middle of the log is `missing`, not a log that ends
    before it."""
    db = tmp_path / "log.db"
    build_log(db, n=10)
    con = sqlite3.connect(db)
    digest = con.execute("SELECT hash FROM events WHERE position=5").fetchone()[0]
    con.execute("DROP TRIGGER events_refuse_delete")
    con.execute("DELETE FROM events WHERE position=5")
    con.commit()
    con.close()
    assert main(["verify", "--database", str(db), "--expect", f"5:{digest}", "--json"]) == 1
    damage = json.loads(capsys.readouterr().out)["damage"]
    anchored = [d for d in damage if digest in d["detail"]]
    assert [(d["position"], d["kind"]) for d in anchored] == [(5, "missing")]
    assert "ends" not in anchored[0]["detail"]


def test_verify_refuses_an_expected_position_past_any_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An `--expect` position no SQLite log can reach is a usage error, not a failed log."""
    db = tmp_path / "log.db"
    build_log(db, n=3)
    too_far = f"{2**63}:{'f' * 64}"
    assert main(["verify", "--database", str(db), "--expect", too_far]) == 2
    err = capsys.readouterr().err
    assert "--expect: want POSITION:HASH" in err
    assert "event log failed" not in err


def test_a_command_told_the_log_reads_no_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --database (and, for verify, --checkpoint-key-file) nothing else is needed: a
    broken configuration in the environment does not stop an auditor's command."""
    db, key = tmp_path / "copy.db", tmp_path / "key"
    build_log(db, key=b"k")
    key.write_bytes(b"k\n")
    monkeypatch.setenv("STATICIPD_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STATICIPD_LISTEN", "not an address")
    monkeypatch.setenv("STATICIPD_NO_SUCH_KEY", "1")
    assert main(["status", "--database", str(db)]) == 0
    assert main(["verify", "--database", str(db), "--checkpoint-key-file", str(key)]) == 0
    assert "1 signed checkpoint(s) valid" in capsys.readouterr().out
    assert main(["verify", "--database", str(db)]) == 2  # the key's place is in that config
    assert "configuration error" in capsys.readouterr().err


def rewrite_row(db: Path, position: int, data: bytes) -> None:
    """Replace one row's data behind the store's back and re-chain every row from it on, as
    someone with write access could: the hash chain alone is consistent again."""
    con = sqlite3.connect(db)
    triggers = con.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'").fetchall()
    for name, _ in triggers:
        con.execute(f"DROP TRIGGER {name}")
    con.execute("UPDATE events SET data=? WHERE position=?", (data.decode(), position))
    prev = con.execute("SELECT prev_hash FROM events WHERE position=?", (position,)).fetchone()[0]
    rows = con.execute(
        "SELECT position, stream, version, type, schema, event_id, recorded_at, data, metadata"
        " FROM events WHERE position >= ? ORDER BY position",
        (position,),
    ).fetchall()
    for pos, *fields, text, metadata in rows:
        digest = row_hash(prev, canonical_row(*fields, text.encode(), metadata.encode()))
        con.execute("UPDATE events SET prev_hash=?, hash=? WHERE position=?", (prev, digest, pos))
        prev = digest
    for _, sql in triggers:
        con.execute(sql)
    con.commit()
    con.close()


def test_verify_finds_every_move_of_a_real_log_allowed(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a log the daemon's rules wrote, `verify` checks each state change against the
    transition table and finds nothing to report."""
    assert main(["verify", "--database", str(migrated), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["moves"] == []
    assert report["moves_checked"] >= 8  # good: 4 moves to static; gone: 3 moves to stalled
    assert main(["verify", "--database", str(migrated)]) == 0
    assert "state change(s) as the transition table allows" in capsys.readouterr().out


def test_verify_reports_a_forged_move_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A StateChanged rewritten to jump from dynamic to static, with the chain recomputed so
    the hashes match, is reported with its position and account (and the next move, which
    starts from a state the account was not in), and `verify` exits 1."""
    db = tmp_path / "log.db"
    migration_log(db)
    con = sqlite3.connect(db)
    [(position, data)] = con.execute(
        "SELECT position, data FROM events WHERE stream='account-gone' AND type='StateChanged'"
        " ORDER BY position LIMIT 1"
    ).fetchall()
    [(after,)] = con.execute(
        "SELECT position FROM events WHERE stream='account-gone' AND type='StateChanged'"
        " AND position > ? ORDER BY position LIMIT 1",
        (position,),
    ).fetchall()
    con.close()
    assert '"to_state":"first_auth"' in data
    rewrite_row(
        db, position, data.replace('"to_state":"first_auth"', '"to_state":"static"').encode()
    )

    assert main(["verify", "--database", str(db), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["damage"] == []  # the chain itself is intact: only the content is wrong
    assert report["ok"] is False
    found = [(m["position"], m["account_id"], m["kind"], m["from_state"], m["to_state"], m["on"])
             for m in report["moves"]]  # fmt: skip
    assert found == [
        (position, "gone", "illegal_move", "dynamic", "static", "auth"),
        (after, "gone", "wrong_from_state", "first_auth", "stopped_waiting", "provider"),
    ]

    assert main(["verify", "--database", str(db)]) == 1
    out = capsys.readouterr().out
    assert (
        f"BAD MOVE at position {position}: illegal_move: account gone: dynamic -> static on auth"
        in out
    )
    assert f"BAD MOVE at position {after}: wrong_from_state: account gone:" in out
    assert "the account was in static" in out


def test_verify_tells_a_wrong_key_from_tampering_and_json_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With another key `verify` says the checkpoint names another key, not DAMAGE; without a
    key text and `--json` both say no signature was checked."""
    db, wrong = tmp_path / "log.db", tmp_path / "wrong"
    wrong.write_bytes(b"not the checkpoint key\n")
    build_log(db, key=b"checkpoint-secret")
    assert main(["verify", "--database", str(db), "--checkpoint-key-file", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert "WRONG KEY? at position 20: checkpoint_other_key" in out
    assert "DAMAGE" not in out
    assert main(["verify", "--database", str(db), "--checkpoint-key-file", str(wrong),
                 "--json"]) == 1  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["signatures_checked"] == 0
    assert doc["checkpoint_key"] is True
    assert doc["checkpoint_key_fingerprint"].startswith("sha256:")
    assert main(["verify", "--database", str(db)]) == 0
    assert "1 checkpoint(s) match the chain (their signatures not checked" in (
        capsys.readouterr().out
    )
    assert main(["verify", "--database", str(db), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["checkpoint_key"], doc["signatures_checked"], doc["checkpoints_checked"]) == (
        False, 0, 1,
    )  # fmt: skip


def test_status_reads_a_snapshot_that_agrees_with_the_log_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the daemon's snapshot in place `status` starts from it and the log after it, says
    so, and shows what a replay from the first event shows; a snapshot that does not match the
    log is not trusted, and `status` says why."""
    path = tmp_path / "log.db"
    migration_log(path)
    assert main(["status", "--database", str(path), "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["read_from"] == {"source": "replay", "why_not_snapshot": "no snapshot"}
    save_snapshot(path, 20)
    assert main(["status", "--database", str(path), "--json"]) == 0
    from_snapshot = json.loads(capsys.readouterr().out)
    assert from_snapshot["read_from"]["source"] == "snapshot"
    assert {k: v for k, v in from_snapshot.items() if k != "read_from"} == {
        k: v for k, v in replayed.items() if k != "read_from"
    }
    assert main(["status", "--database", str(path)]) == 0
    assert "read from the daemon's snapshot" in capsys.readouterr().out
    forged = Projection()
    forged.position, forged.head_hash = 20, "0" * 64  # claims a row the log does not have
    save_snapshot(path, 20, forged)
    assert main(["status", "--database", str(path)]) == 0
    out = capsys.readouterr().out
    assert "replayed from the first event: the snapshot does not match the log" in out


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log longer than one read batch (5,000 rows), written on two days."""
    path = tmp_path_factory.mktemp("long") / "log.db"
    days = iter([datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)])
    day = next(days)

    async def fill() -> None:
        nonlocal day
        async with EventStore.open(path, clock=lambda: day) as store:
            for half in range(2):
                calls = [
                    AppendCall([NewEvent(f"account-{i % 50}", "Noted", b'{"i":%d}' % i)])
                    for i in range(half * 6000, (half + 1) * 6000)
                ]
                await store.append_many(calls)
                day = next(days, day)

    anyio.run(fill)
    return path


@pytest.mark.parametrize(
    "command",
    [["replay", "--until", "2026-03-01T12:00:00Z"], ["export"]],
    ids=["replay --until", "export | head -1"],
)
def test_a_command_that_stops_reading_early_prints_nothing_more(
    long_log: Path, command: list[str]
) -> None:
    """`replay --until` a time before the head, and `export` into a reader that takes one line,
    stop reading the log early: stderr stays empty (a read still under way once printed a
    StoreClosed traceback there)."""
    args = [sys.executable, "-m", "daemon", *command, "--database", str(long_log)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert first
    assert err == b""
