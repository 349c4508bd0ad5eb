"""The log commands on a PostgreSQL log: `create-log`, `copy-log` from SQLite, and the read-only
commands printing for a copied log exactly what they print for its SQLite original.

They use the throwaway server of tests/conftest.py and are skipped, saying why, without the
machine's PostgreSQL server binaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from daemon.cli.main import main
from daemon.config import load_config, load_secrets
from daemon.runtime.live import SNAPSHOT_NAME, LiveProjection
from daemon.runtime.projections import Projection
from eventstore import EventStore, NewEvent
from eventstore.testing import ThrowawayPostgres
from tests.daemon.test_logcommands import migration_log, save_snapshot
from tests.eventstore.test_postgres import DAEMON_PASSWORD, DAEMON_ROLE, grant_daemon_role

KEY = b"checkpoint-secret"


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A migration's SQLite log (accounts, timers, effects), a signed checkpoint, and its key."""
    directory = tmp_path_factory.mktemp("original")
    db, key = directory / "log.db", directory / "key"
    migration_log(db)

    async def sign() -> None:
        async with EventStore.open(db) as store:
            await store.checkpoint(KEY)

    anyio.run(sign)
    key.write_bytes(KEY)
    return db, key


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_copy_log_copies_and_verifies_then_commands_print_the_same(
    original: tuple[Path, Path], pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`copy-log` moves an SQLite log into an empty database and verifies it there; `export`,
    `verify`, `replay`, `audit` and `status` then print exactly what they print for the file."""
    db, key = original
    status, out, _ = run(capsys, "copy-log", str(db), pg_url, "--checkpoint-key-file", str(key))
    assert status == 0
    copied, verified = out.splitlines()
    assert copied.startswith("copied ")
    assert " events, head " in copied
    assert verified == "verified: chain intact, 1 checkpoints, 1 signatures"
    exported = run(capsys, "export", "--format", "jsonl", "--database", str(db))[1]
    streams = {json.loads(line)["stream"] for line in exported.splitlines()}
    account = sorted(s.removeprefix("account-") for s in streams if s.startswith("account-"))[0]
    commands = [
        ["audit", account],
        ["audit", "--json", account],
        ["export", "--format", "jsonl"],
        ["verify", "--checkpoint-key-file", str(key)],
        ["verify", "--json", "--checkpoint-key-file", str(key)],
        ["replay"],
        ["replay", "--json", "--position", "7"],
        ["status", "--json"],
    ]
    for argv in commands:
        from_file = run(capsys, *argv, "--database", str(db))
        from_database = run(capsys, *argv, "--database", pg_url)
        assert from_file[0] == from_database[0] == 0, argv
        assert from_database[1] == from_file[1].replace(str(db), pg_url), argv
    accounts = json.loads(run(capsys, "status", "--json", "--database", str(db))[1])
    assert accounts  # the log is a real migration, not an empty one


def test_a_copied_snapshot_keeps_its_labels_and_times_and_reads_the_same(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's snapshot travels with `copy-log`, parts' labels and times included: `status`
    and `replay` start from it on both logs and print the same, and the daemon's projection
    loads from it on PostgreSQL (every account read at once) as it does from the file."""
    db = tmp_path / "log.db"
    migration_log(db)
    save_snapshot(db, 20)
    assert run(capsys, "copy-log", str(db), pg_url)[0] == 0
    for argv in (["status", "--json"], ["status"], ["replay"], ["replay", "--json"]):
        from_file = run(capsys, *argv, "--database", str(db))
        from_database = run(capsys, *argv, "--database", pg_url)
        assert from_file[0] == from_database[0] == 0, argv
        assert from_database[1] == from_file[1].replace(str(db), pg_url), argv
    doc = json.loads(run(capsys, "status", "--json", "--database", pg_url)[1])
    assert doc["read_from"] == {"source": "snapshot", "why_not_snapshot": None}

    async def compare() -> None:
        async with EventStore.open(db) as lite, EventStore.open(pg_url) as pg:
            readers = [
                await lite.open_snapshot(SNAPSHOT_NAME),
                await pg.open_snapshot(SNAPSHOT_NAME),
            ]
            seen = []
            for reader in readers:
                assert reader is not None
                with reader:
                    assert Projection.from_reader(reader).position == 20
                    seen.append(
                        (
                            reader.position,
                            reader.header,
                            reader.blobs(),
                            reader.labels(),
                            reader.times(),
                        )
                    )
            assert seen[0] == seen[1]
            assert set(seen[1][3]) - {""}  # the parts are labelled and timed, not defaulted
            assert seen[1][4]
            assert pg.part_fetcher(SNAPSHOT_NAME) is None
            loaded = [await LiveProjection.load(lite), await LiveProjection.load(pg)]
            shown = [
                (
                    live.position,
                    live.projection.funnel(),
                    live.projection.due_soonest(None),
                    [live.projection.account(a) for a in ("good", "gone")],
                )
                for live in loaded
            ]
            assert shown[0] == shown[1]
            assert shown[1][3][0] is not None

    anyio.run(compare)


def test_copy_log_refuses_a_database_holding_a_log(
    original: tuple[Path, Path], pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target that already has events is refused with exit 2, and nothing is copied."""
    db, _ = original

    async def one() -> None:
        async with EventStore.open(pg_url) as store:
            await store.append([NewEvent("x", "T", b"{}")])

    anyio.run(one)
    status, _, err = run(capsys, "copy-log", str(db), pg_url)
    assert status == 2
    assert "not empty" in err
    assert "nothing copied" in err
    assert run(capsys, "export", "--format", "jsonl", "--database", pg_url)[1].count("\n") == 1


def test_copy_log_refuses_a_missing_source(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source that does not exist is a usage error (exit 2)."""
    status, _, err = run(capsys, "copy-log", str(tmp_path / "none.db"), pg_url)
    assert status == 2
    assert "no event log" in err


def test_create_log_makes_an_empty_log(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`create-log` creates the tables, and the log reads as empty with an intact chain."""
    status, out, _ = run(capsys, "create-log", pg_url)
    assert status == 0
    assert out.startswith("log ready at postgresql://")
    assert out.rstrip().endswith(":" + "0" * 64)
    status, out, _ = run(capsys, "verify", "--database", pg_url)
    assert status == 0
    assert "ok: 0 events" in out


def test_the_configuration_names_a_database_and_its_password_file(
    pg_server: ThrowawayPostgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[database] url` and the `database_password` secret file let the log commands read a log
    as the daemon's role; the password never shows in what they print."""
    database = pg_server.create_database()
    assert run(capsys, "create-log", pg_server.url(database))[0] == 0
    anyio.run(grant_daemon_role, pg_server.url(database))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "database_password").write_text(DAEMON_PASSWORD + "\n")
    (secrets / "database_password").chmod(0o600)
    url = pg_server.url(database, user=DAEMON_ROLE)
    config = tmp_path / "staticipd.toml"
    config.write_text(f'secrets_dir = "{secrets}"\n[database]\nurl = "{url}"\n')
    loaded = load_config(config, {})
    assert loaded.database.location == url
    assert load_secrets(loaded, {}).database_password == DAEMON_PASSWORD
    status, out, err = run(capsys, "verify", "--config", str(config))
    assert status == 0, err
    assert DAEMON_PASSWORD not in out + err


def test_the_environment_names_a_database_url() -> None:
    """STATICIPD_DATABASE takes a URL (it sets `[database] url`) as well as a path."""
    url = "postgresql://staticipd@db.example.com/staticipd?sslmode=verify-full"
    config = load_config(None, {"STATICIPD_DATABASE": url})
    assert config.database.url == url
    assert config.database.location == url
    path = load_config(None, {"STATICIPD_DATABASE": "/var/lib/x.db"}).database
    assert (path.url, path.location) == ("", Path("/var/lib/x.db"))


def test_check_config_hides_a_password_written_into_the_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`check-config` shows `[database] url` with a password written into it as `***`."""
    env = {"STATICIPD_DATABASE": "postgresql://staticipd:hunter2-secret@db.example.com/log"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        status, out, _ = run(capsys, "check-config")
    assert status == 0
    assert json.loads(out)["database"]["url"] == "postgresql://staticipd:***@db.example.com/log"
    assert "hunter2" not in out


def test_serve_and_check_config_take_a_url_for_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--database postgresql://…` (as `serve` and `check-config` take it) sets the URL."""
    url = "postgresql://staticipd@db.example.com/staticipd?sslmode=verify-full"
    status, out, _ = run(capsys, "check-config", "--database", url)
    assert status == 0
    assert json.loads(out)["database"]["url"] == url
