"""Configuration loading, environment overrides, secrets and masked rendering (daemon.config)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from daemon.config import (
    Config,
    ConfigError,
    Secrets,
    load_config,
    load_secrets,
    render_effective,
)
from daemon.provider import standardwebhooks


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_file_no_env_gives_embedded_defaults(tmp_path: Path) -> None:
    """With no configuration at all the daemon gets loopback, a local SQLite file and notify."""
    config = load_config(None, {})
    assert config.listen == "127.0.0.1:8750"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8750)
    assert config.database.path == Path("staticipd.db")
    assert config.database.synchronous == "FULL"
    assert config.http.max_body_bytes == 1024 * 1024
    assert config.migration.delay_seconds == 1800
    assert config.migration.reminder_schedule_seconds == (3600, 86400, 259200)
    assert config.migration.default_policy == "notify"
    assert config.pollers.ip_list_interval_seconds == 900
    assert config.provider.api_version == 2
    assert config.provider.sandbox is False
    assert config.logging.format == "auto"


def test_database_defaults_to_systemd_state_directory(tmp_path: Path) -> None:
    """Under systemd the log file goes into the first `$STATE_DIRECTORY`."""
    config = load_config(None, {"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert config.database.path == tmp_path / "a" / "staticipd.db"


def test_allowlist_file_defaults_to_the_logs_directory(tmp_path: Path) -> None:
    """Without `[allowlist] path` the allowlist file sits next to the log; with it, where set."""
    beside = load_config(None, {"STATICIPD_DATABASE": f"{tmp_path}/log/s.db"})
    assert beside.allowlist.path == tmp_path / "log" / "allowlist.txt"
    state = load_config(None, {"STATE_DIRECTORY": str(tmp_path)})
    assert state.allowlist.path == tmp_path / "allowlist.txt"
    chosen = load_config(None, {"STATICIPD_ALLOWLIST__PATH": f"{tmp_path}/fw/list.txt"})
    assert chosen.allowlist.path == tmp_path / "fw" / "list.txt"


def test_toml_file_sets_values(tmp_path: Path) -> None:
    """Values in the TOML file replace the defaults, section by section."""
    path = write(
        tmp_path / "c.toml",
        """
listen = "0.0.0.0:9000"
[database]
path = "/var/lib/x.db"
synchronous = "EXTRA"
[migration]
delay_seconds = 60
default_policy = "restart"
reminder_schedule_seconds = [10, 20]
[provider]
client_id = "abc"
sandbox = true
static_ip_path = "/a/{client_id}/static_ips"
""",
    )
    config = load_config(path, {})
    assert config.listen_port == 9000
    assert config.database.path == Path("/var/lib/x.db")
    assert config.database.synchronous == "EXTRA"
    assert config.migration.delay_seconds == 60
    assert config.migration.default_policy == "restart"
    assert config.migration.reminder_schedule_seconds == (10, 20)
    assert config.migration.stall_after_seconds == 345600  # untouched key keeps its default
    assert config.provider.client_id == "abc"


def test_environment_overrides_file_key_by_key(tmp_path: Path) -> None:
    """`STATICIPD_*` variables win over the file without erasing the file's other keys."""
    path = write(
        tmp_path / "c.toml", '[migration]\ndelay_seconds = 60\ndefault_policy = "restart"\n'
    )
    env = {
        "STATICIPD_MIGRATION__DELAY_SECONDS": "120",
        "STATICIPD_MIGRATION__REMINDER_SCHEDULE_SECONDS": "5, 50",
        "STATICIPD_DATABASE": str(tmp_path / "env.db"),
        "STATICIPD_LISTEN": "[::1]:8751",
        "STATICIPD_PROVIDER__SANDBOX": "true",
        "STATICIPD_LOGGING__FORMAT": "json",
        "STATICIPD_CONFIG": "ignored by load_config",
        "OTHER": "not ours",
    }
    config = load_config(path, env)
    assert config.migration.delay_seconds == 120
    assert config.migration.default_policy == "restart"
    assert config.migration.reminder_schedule_seconds == (5, 50)
    assert config.database.path == tmp_path / "env.db"
    assert (config.listen_host, config.listen_port) == ("::1", 8751)
    assert config.provider.sandbox is True
    assert config.logging.format == "json"


def test_environment_list_as_toml_array() -> None:
    """A list variable may also be written as a TOML array."""
    env = {"STATICIPD_POLLERS__IP_CHANGE_COMMAND": '["/usr/bin/reload-fw", "--all"]'}
    assert load_config(None, env).pollers.ip_change_command == ("/usr/bin/reload-fw", "--all")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("colour = 1\n", "'colour'"),
        ("[migration]\ndelay_secondz = 3\n", "'migration.delay_secondz'"),
        ("[nonsense]\nx = 1\n", "'nonsense'"),
        ("[migration]\ndelay_seconds = -3\n", "migration.delay_seconds"),
        ("[migration]\ndefault_policy = 'shout'\n", "migration.default_policy"),
        ("[provider]\napi_version = 4\n", "provider.api_version"),
        ("[provider]\nbase_url = 'ftp://x'\n", "base_url"),
        ("listen = 'localhost'\n", "listen"),
        ("listen = 'localhost:99999'\n", "out of range"),
        ("[pollers]\nip_list_interval_seconds = 60\n", "ip_list_interval_seconds"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    """A bad or unknown key in the file is an error whose message names the key."""
    path = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"STATICIPD_MIGRATION__DELAY_SECOND": "1"}, "STATICIPD_MIGRATION__DELAY_SECOND"),
        ({"STATICIPD_NOPE__X": "1"}, "unknown section"),
        ({"STATICIPD_LISTN": "x"}, "STATICIPD_LISTN"),
        ({"STATICIPD_OUTBOX__CONCURRENCY": "many"}, "STATICIPD_OUTBOX__CONCURRENCY"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], needle: str) -> None:
    """A mistyped or unparsable `STATICIPD_*` variable is an error naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert needle in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """Pointing at a file that does not exist says so."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", {})


def test_fast_ip_polling_is_allowed_only_for_the_sandbox() -> None:
    """Polling the IP list more often than every 6 minutes is refused unless on a sandbox."""
    fast = {"STATICIPD_POLLERS__IP_LIST_INTERVAL_SECONDS": "5"}
    with pytest.raises(ConfigError, match="10 IP-list calls an hour"):
        load_config(None, fast)
    sandbox = load_config(None, {**fast, "STATICIPD_PROVIDER__SANDBOX": "1"})
    assert sandbox.pollers.ip_list_interval_seconds == 5


def test_ip_polling_floor_doubles_when_the_static_list_is_polled_too() -> None:
    """With a static list path each poll makes two calls, so the floor is 12 minutes, not 6."""
    static = {"STATICIPD_PROVIDER__STATIC_IP_PATH": "/a/{client_id}/static_ips"}
    one_list_ok = {"STATICIPD_POLLERS__IP_LIST_INTERVAL_SECONDS": "360"}
    assert load_config(None, one_list_ok).pollers.ip_list_interval_seconds == 360
    with pytest.raises(ConfigError) as info:
        load_config(None, {**one_list_ok, **static})
    message = str(info.value)
    assert "below 720" in message
    assert "2 calls" in message
    both = {**static, "STATICIPD_POLLERS__IP_LIST_INTERVAL_SECONDS": "720"}
    assert load_config(None, both).pollers.ip_list_interval_seconds == 720


def test_config_is_immutable() -> None:
    """A loaded configuration cannot be changed by accident at run time."""
    config = load_config(None, {})
    with pytest.raises(AttributeError):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]


# --- secrets ---

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make_secrets_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "webhook_secret").write_text("new-webhook-secret\nold-webhook-secret\n\n")
    (directory / "provider_api_key").write_text("prov-api-key-123\n")
    (directory / "operator_token").write_text("operator-token-xyz\n")
    (directory / "notify_secret").write_text(WHSEC + "\n")
    for file in directory.iterdir():
        file.chmod(0o600)
    return directory


def test_secrets_from_credentials_directory(tmp_path: Path) -> None:
    """Secret files in `$CREDENTIALS_DIRECTORY` are read; rotation files keep every line."""
    creds = make_secrets_dir(tmp_path / "creds")
    secrets = load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.webhook_secrets == (b"new-webhook-secret", b"old-webhook-secret")
    assert secrets.provider_api_key == "prov-api-key-123"
    assert secrets.operator_tokens == ("operator-token-xyz",)
    assert secrets.notify_secrets == (WHSEC,)
    assert set(secrets.missing) == {"auth_events_token", "checkpoint_key"}
    assert secrets.warnings == ()


def test_configured_secrets_dir_is_used_and_wins(tmp_path: Path) -> None:
    """A `secrets_dir` setting is read before the systemd credentials directory."""
    mine = make_secrets_dir(tmp_path / "mine")
    (mine / "provider_api_key").write_text("from-secrets-dir\n")
    creds = make_secrets_dir(tmp_path / "creds")
    (creds / "auth_events_token").write_text("auth-token-from-creds\n")
    config = load_config(None, {"STATICIPD_SECRETS_DIR": str(mine)})
    secrets = load_secrets(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.provider_api_key == "from-secrets-dir"
    assert secrets.auth_events_tokens == ("auth-token-from-creds",)


def test_no_secrets_anywhere_is_reported_not_fatal() -> None:
    """Without any secret file every secret is listed as missing and loading still succeeds."""
    secrets = load_secrets(load_config(None, {}), {})
    assert secrets.describe() == dict.fromkeys(secrets.missing, "missing")
    assert len(secrets.missing) == 6


def test_empty_secret_file_counts_as_missing(tmp_path: Path) -> None:
    """An empty secret file is reported as missing rather than as an empty secret."""
    (tmp_path / "webhook_secret").write_text("\n\n")
    secrets = load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "webhook_secret" in secrets.missing
    assert secrets.webhook_secrets == ()


def test_world_readable_secret_is_warned_about(tmp_path: Path) -> None:
    """A secret file other users can read produces a warning naming the file."""
    make_secrets_dir(tmp_path)
    (tmp_path / "operator_token").chmod(0o644)
    secrets = load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert any("operator_token" in w for w in secrets.warnings)


def test_malformed_notify_secret_is_an_error_without_its_value(tmp_path: Path) -> None:
    """A notify secret that is not `whsec_<base64>` is refused without echoing the value."""
    (tmp_path / "notify_secret").write_text("plain-text-secret-value\n")
    with pytest.raises(ConfigError) as info:
        load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "notify_secret" in str(info.value)
    assert "plain-text-secret-value" not in str(info.value)


def test_an_unpadded_notify_secret_is_accepted_as_the_signer_accepts_it(tmp_path: Path) -> None:
    unpadded = "whsec_" + base64.b64encode(b"k" * 20).decode().rstrip("=")
    assert not unpadded.endswith("=")
    (tmp_path / "notify_secret").write_text(unpadded + "\n")
    secrets = load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert standardwebhooks.decode_secret(secrets.notify_secrets[0]) == b"k" * 20


def test_secret_values_never_appear_in_repr(tmp_path: Path) -> None:
    """Printing or logging the Secrets object shows which are configured, not their values."""
    creds = make_secrets_dir(tmp_path)
    secrets = load_secrets(load_config(None, {}), {"CREDENTIALS_DIRECTORY": str(creds)})
    text = repr(secrets) + str(secrets) + f"{secrets}"
    for value in ("new-webhook-secret", "old-webhook-secret", "prov-api-key-123", WHSEC):
        assert value not in text
    assert "provider_api_key" in text
    assert len(secrets.values()) == 5


def test_render_effective_masks_secrets(tmp_path: Path) -> None:
    """`check-config` output is valid JSON with every setting and no secret value."""
    creds = make_secrets_dir(tmp_path)
    config = load_config(
        None,
        {"STATICIPD_MIGRATION__DELAY_SECONDS": "42", "STATICIPD_PROVIDER__SANDBOX": "true"},
    )
    secrets = load_secrets(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    text = render_effective(config, secrets)
    document = json.loads(text)
    assert document["migration"]["delay_seconds"] == 42
    assert document["listen"] == "127.0.0.1:8750"
    assert document["database"]["path"] == "staticipd.db"
    assert document["secrets"]["webhook_secret"] == "configured (2 values, masked)"
    assert document["secrets"]["checkpoint_key"] == "missing"
    for value in ("new-webhook-secret", "prov-api-key-123", WHSEC, "operator-token-xyz"):
        assert value not in text


def test_render_effective_round_trips_through_the_loader(tmp_path: Path) -> None:
    """The rendered settings (without the secrets block) load back to the same configuration."""
    config = load_config(None, {"STATICIPD_PROVIDER__CLIENT_ID": "cid"})
    document = json.loads(render_effective(config, Secrets()))
    document.pop("secrets")
    document.pop("secrets_dir")
    assert msgspec.convert(document, Config, dec_hook=lambda t, o: t(o)) == config


def test_the_domains_default_settings_are_the_configurations_defaults() -> None:
    """Code that builds MigrationSettings() (the harness, the benchmarks) runs on what users get."""
    from daemon.domain import MigrationSettings
    from daemon.service import migration_settings

    assert migration_settings(load_config(None, {})) == MigrationSettings()
