"""The daemon's settings: a TOML file, overridden key by key by `STATICIPD_*` variables.

Environment scheme: `STATICIPD_<SECTION>__<KEY>` sets `[section] key` (double underscore
between section and key, e.g. `STATICIPD_MIGRATION__DELAY_SECONDS=600`); top-level keys are
`STATICIPD_<KEY>` (`STATICIPD_LISTEN`, `STATICIPD_SECRETS_DIR`), and `STATICIPD_DATABASE` is
short for `STATICIPD_DATABASE__PATH`. Lists are comma-separated (`3600,86400`) or a TOML
array. Secrets never live in the file or the environment: `load_secrets` reads them from
files in `$CREDENTIALS_DIRECTORY` (systemd credentials) or `secrets_dir`.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from daemon.validation import validation_field

__all__ = [
    "ENV_PREFIX",
    "SECRET_NAMES",
    "AllowlistConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "HttpConfig",
    "LoggingConfig",
    "MigrationConfig",
    "NotifyConfig",
    "OutboxConfig",
    "PollersConfig",
    "ProviderConfig",
    "Secrets",
    "TimersConfig",
    "load_config",
    "load_secrets",
    "render_effective",
]

ENV_PREFIX = "STATICIPD_"
# Read by the command line itself, not a setting: never an "unknown key".
_ENV_NOT_SETTINGS = frozenset({"STATICIPD_CONFIG"})
_ENV_ALIASES = {"DATABASE": ("database", "path")}

# The provider's IP-address endpoint allows about 10 calls an hour per application
# (docs/provider.md#the-ip-address-endpoints), and every list polled is one call: this is the
# floor for one list.
MIN_IP_LIST_INTERVAL = 360
# The provider moves an account only if its second auth comes at least 30 minutes after the
# first (docs/provider.md#the-static-ip-move): a shorter delay would ask users too early.
PROVIDER_MOVE_DELAY = 1800

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key or file and why."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of the sections; each repeats `frozen=True`, which msgspec inherits but type
    checkers read per class (a non-frozen subclass of a frozen one is an error to them)."""


class DatabaseConfig(_Section, frozen=True):
    """Where the event log lives and how hard each commit is pushed to disk."""

    path: Path = Path("staticipd.db")
    # FULL: fsync on every commit, so an acknowledged webhook survives a power cut.
    synchronous: Literal["FULL", "EXTRA", "NORMAL"] = "FULL"
    # A PostgreSQL database holding the log instead of `path` (README, "PostgreSQL"); its
    # password is the secret file `database_password`, never in the URL.
    url: Annotated[str, msgspec.Meta(pattern=r"^(postgres(ql)?://.*)?$")] = ""

    @property
    def location(self) -> str | Path:
        """What holds the log: the URL when one is set, else the SQLite file."""
        return self.url or self.path


class HttpConfig(_Section, frozen=True):
    """Limits of the HTTP listener."""

    max_body_bytes: _PositiveInt = 1024 * 1024
    # A connection gets this long from its first byte (or from connecting) to finish a request's
    # head, else it is closed: a client trickling headers cannot hold connections open forever.
    header_timeout_seconds: _Positive = 10.0
    # An idle kept-alive connection is closed after this long (aiohttp's own default is an hour).
    keepalive_timeout_seconds: _Positive = 75.0
    # Within the provider's 10 s wait for an answer, with margin (README, "Under systemd").
    shutdown_grace_seconds: _NonNegative = 5.0
    # uvloop (the `fast` extra) carries about 15 % more webhooks a second (bench/bench_ingest.py).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"


class ProviderConfig(_Section, frozen=True):
    """How to reach the provider's management API."""

    base_url: str = "https://api.nylas.com"
    api_version: Literal[2, 3] = 2
    client_id: str = ""
    sandbox: bool = False
    # A sandbox's times run this many times faster than the provider's (shown on the status page).
    time_scale: _Positive = 1.0
    timeout_seconds: _Positive = 10.0
    # The provider does not document where an application's static IP list lives
    # (docs/provider.md#the-ip-address-endpoints); empty means "not configured, don't poll it".
    static_ip_path: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")


class MigrationConfig(_Section, frozen=True):
    """Timing and policy of the two-step move into the static environment."""

    delay_seconds: _NonNegative = 1800.0
    reminder_schedule_seconds: tuple[_Positive, ...] = (3600.0, 86400.0, 259200.0)
    stall_after_seconds: _Positive = 345600.0
    stop_grace_seconds: _Positive = 900.0
    # Not running this long after the second step: check the provider, and ask again if the
    # account is still stopped there (the provider's delay may be longer than ours).
    running_grace_seconds: _Positive = 900.0
    default_policy: Literal["notify", "restart"] = "notify"


class NotifyConfig(_Section, frozen=True):
    """The application's endpoint that asks end users to re-authenticate."""

    url: str = ""  # empty: not configured
    timeout_seconds: _Positive = 10.0

    def __post_init__(self) -> None:
        if self.url and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")


class PollersConfig(_Section, frozen=True):
    """Intervals of the IP-list watcher and the account reconciler."""

    ip_list_interval_seconds: _Positive = 900.0
    reconciler_interval_seconds: _Positive = 3600.0
    ip_change_command: tuple[str, ...] = ()  # argv run when a list changes; empty: none


class AllowlistConfig(_Section, frozen=True):
    """The allowlist file a firewall reloads from (README.md, "The allowlist file")."""

    # Relative to the current directory; `load_config` defaults it to the log's directory.
    path: Path = Path("allowlist.txt")


class TimersConfig(_Section, frozen=True):
    """How overdue timers are released after a restart."""

    overdue_stagger_per_second: _Positive = 50.0


class OutboxConfig(_Section, frozen=True):
    """How side effects are retried."""

    concurrency: _PositiveInt = 4
    max_attempts: _PositiveInt = 8
    backoff_base_seconds: _Positive = 1.0
    backoff_max_seconds: _Positive = 300.0


class ClusterConfig(_Section, frozen=True):
    """Active/standby on a PostgreSQL log (README.md, "Active/standby on PostgreSQL")."""

    # How long a leader that sends nothing (paused, or its host gone) keeps the leader lock.
    lease_seconds: _Positive = 10.0


class LoggingConfig(_Section, frozen=True):
    """Log verbosity and format (`auto`: coloured console on a terminal, JSON lines otherwise)."""

    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _section(cls: type[_Section]) -> Any:
    return msgspec.field(default_factory=cls)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every setting of the daemon, validated; built by `load_config`."""

    listen: str = "127.0.0.1:8750"
    secrets_dir: Path | None = None
    database: DatabaseConfig = _section(DatabaseConfig)
    http: HttpConfig = _section(HttpConfig)
    provider: ProviderConfig = _section(ProviderConfig)
    migration: MigrationConfig = _section(MigrationConfig)
    notify: NotifyConfig = _section(NotifyConfig)
    pollers: PollersConfig = _section(PollersConfig)
    allowlist: AllowlistConfig = _section(AllowlistConfig)
    timers: TimersConfig = _section(TimersConfig)
    outbox: OutboxConfig = _section(OutboxConfig)
    cluster: ClusterConfig = _section(ClusterConfig)
    logging: LoggingConfig = _section(LoggingConfig)

    def __post_init__(self) -> None:
        _split_listen(self.listen)
        delay = self.migration.delay_seconds
        if delay < PROVIDER_MOVE_DELAY and not self.provider.sandbox:
            raise ValueError(
                f"migration.delay_seconds = {delay:g} is below {PROVIDER_MOVE_DELAY}: the "
                "provider moves an account only when its second auth comes at least 30 minutes "
                "after the first, so an earlier second step would not take (only a sandbox "
                "provider, provider.sandbox = true, may use a shorter delay)"
            )
        interval = self.pollers.ip_list_interval_seconds
        # One poll calls the provider once per list (dynamic, plus static when its path is
        # set), and the ~10 calls an hour are counted per application, not per list: the
        # floor scales with the lists, or two lists at 360 s would make 20 calls an hour.
        lists = 2 if self.provider.static_ip_path else 1
        floor = MIN_IP_LIST_INTERVAL * lists
        if interval < floor and not self.provider.sandbox:
            polled = "dynamic and static lists" if lists == 2 else "dynamic list"
            raise ValueError(
                f"pollers.ip_list_interval_seconds = {interval:g} is below {floor}: the "
                f"provider allows about 10 IP-list calls an hour and each poll of the {polled} "
                f"makes {lists} call{'s' if lists > 1 else ''} (only a sandbox provider may be "
                "polled faster)"
            )

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]


def _split_listen(listen: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]]+):(?P<p>\d+)", listen)
    if not match:
        raise ValueError(f"listen must be HOST:PORT or [IPV6]:PORT, got {listen!r}")
    host = match["v6"] or match["host"]
    port = int(match["port"] or match["p"])
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port {port} is out of range")
    return host, port


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Path and isinstance(obj, str | Path):
        return Path(obj)
    raise NotImplementedError


def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


_SECTIONS: dict[str, type[_Section]] = {
    name: type_
    for name, type_ in _field_types(Config).items()
    if isinstance(type_, type) and issubclass(type_, _Section)
}


def _coerce_env(name: str, value: str, type_: Any) -> Any:
    """Convert one environment string to its field's type, naming the variable on failure."""
    info = msgspec.inspect.type_info(type_)
    if isinstance(info, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
        text = value.strip()
        if text.startswith("["):
            try:
                items: Any = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{name}: not a TOML array: {exc}") from None
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
        value_in: Any = items
    else:
        value_in = value
    try:
        return msgspec.convert(value_in, type_, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{name}={value!r}: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    top_types = _field_types(Config)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        key = name[len(ENV_PREFIX) :]
        if key in _ENV_ALIASES:
            section, field = _ENV_ALIASES[key]
            if key == "DATABASE" and env[name].startswith(("postgresql://", "postgres://")):
                field = "url"  # STATICIPD_DATABASE takes a URL as well as a path
        elif "__" in key:
            section, _, field = key.lower().partition("__")
        else:
            section, field = "", key.lower()
        if section:
            if section not in _SECTIONS:
                raise ConfigError(f"{name}: unknown section {section!r}")
            types = _field_types(_SECTIONS[section])
            if field not in types:
                raise ConfigError(f"{name}: unknown key {field!r} in section [{section}]")
            value = _coerce_env(name, env[name], types[field])
            overrides.setdefault(section, {})[field] = value
        else:
            if field not in top_types or field in _SECTIONS:
                raise ConfigError(f"{name}: unknown setting {field!r}")
            overrides[field] = _coerce_env(name, env[name], top_types[field])
    return overrides


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _explain(error: msgspec.ValidationError) -> str:
    """msgspec says "Object contains unknown field `x` - at `$.migration`"; say `migration.x`."""
    field, reason = validation_field(error, prefix="")
    key = field.lstrip(".")
    if reason == "unknown field":
        return f"unknown key {key!r}"
    return f"{key}: {reason}" if key else reason


def load_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """Build the effective configuration: defaults, then the TOML file, then `STATICIPD_*`.

    Without a database path, the log goes to `staticipd.db` in systemd's `$STATE_DIRECTORY`
    (first entry) if set, else in the current directory; without an allowlist path, the
    allowlist file is `allowlist.txt` next to the log. Raises `ConfigError`.
    """
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    for key, value in _env_overrides(env).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    database = data.get("database")
    if not isinstance(database, dict) or "path" not in database:
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        default = Path(state_dir or ".") / "staticipd.db"
        if database is None:
            data["database"] = {"path": default}
        elif isinstance(database, dict):
            data["database"] = {**database, "path": default}
    allowlist = data.get("allowlist")
    if allowlist is None or (isinstance(allowlist, dict) and "path" not in allowlist):
        database_path = data["database"].get("path") if isinstance(data["database"], dict) else None
        if isinstance(database_path, str | Path):
            beside = Path(database_path).parent / "allowlist.txt"
            data["allowlist"] = {**(allowlist or {}), "path": beside}
    try:
        return msgspec.convert(data, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{_explain(exc)}") from None


# --- secrets -------------------------------------------------------------------------------

SECRET_NAMES = (
    "webhook_secret",
    "provider_api_key",
    "auth_events_token",
    "operator_token",
    "notify_secret",
    "checkpoint_key",
)
# Files holding several values, one a line, so an old and a new value can overlap in rotation.
_MULTI_VALUE = frozenset({"webhook_secret", "auth_events_token", "operator_token", "notify_secret"})


@dataclass(frozen=True, repr=False)
class Secrets:
    """Credentials read from files; `repr()` says which are configured, never their values."""

    webhook_secrets: tuple[bytes, ...] = ()
    provider_api_key: str | None = None
    auth_events_tokens: tuple[str, ...] = ()
    operator_tokens: tuple[str, ...] = ()
    notify_secrets: tuple[str, ...] = ()  # Standard Webhooks `whsec_<base64>`
    checkpoint_key: bytes | None = None
    # The password of `[database] url`'s role, when the log is in PostgreSQL (not a part that is
    # off without it: libpq's own ~/.pgpass or PGPASSWORD may hold it instead).
    database_password: str | None = None
    missing: tuple[str, ...] = SECRET_NAMES  # file names not found: said in the log, not fatal
    warnings: tuple[str, ...] = ()  # e.g. a secret file readable by other users
    sources: dict[str, Path] = field(default_factory=dict)

    def __repr__(self) -> str:
        present = [name for name in SECRET_NAMES if name not in self.missing]
        return f"Secrets(configured={present}, missing={list(self.missing)})"

    __str__ = __repr__

    def values(self) -> list[str | bytes]:
        """Every secret value, for the log redactor (`daemon.logs.register_secrets`)."""
        found: list[str | bytes] = [*self.webhook_secrets, *self.auth_events_tokens]
        found += [*self.operator_tokens, *self.notify_secrets]
        found += [v for v in (self.provider_api_key, self.checkpoint_key) if v]
        found += [self.database_password] if self.database_password else []
        return found

    def describe(self) -> dict[str, str]:
        """Masked status of each secret, for `check-config` and the start-up log."""
        counts = {
            "webhook_secret": len(self.webhook_secrets),
            "provider_api_key": int(self.provider_api_key is not None),
            "auth_events_token": len(self.auth_events_tokens),
            "operator_token": len(self.operator_tokens),
            "notify_secret": len(self.notify_secrets),
            "checkpoint_key": int(self.checkpoint_key is not None),
        }
        described = {}
        for name, count in counts.items():
            if name in self.missing or not count:
                described[name] = "missing"
            else:
                plural = "s" if count > 1 else ""
                described[name] = f"configured ({count} value{plural}, masked)"
        return described


def secret_dirs(config: Config, env: Mapping[str, str]) -> list[Path]:
    """Where secret files are looked for, first match wins: `secrets_dir`, then systemd's."""
    dirs = [config.secrets_dir] if config.secrets_dir is not None else []
    if credentials := env.get("CREDENTIALS_DIRECTORY"):
        dirs.append(Path(credentials))
    return dirs


def _check_whsec(value: str) -> None:
    prefix, _, encoded = value.partition("_")
    try:
        # Unpadded base64 is accepted, as the signer (standardwebhooks.decode_secret) does.
        padded = encoded + "=" * (-len(encoded) % 4)
        ok = prefix == "whsec" and bool(base64.b64decode(padded, validate=True))
    except binascii.Error:
        ok = False
    if not ok:
        raise ConfigError("notify_secret: each line must be `whsec_` followed by base64")


def load_secrets(config: Config, env: Mapping[str, str]) -> Secrets:
    """Read the secret files from `config.secrets_dir`, then `$CREDENTIALS_DIRECTORY`.

    The first directory holding a file wins. Missing files are listed in `Secrets.missing`
    (the daemon runs without what is not configured); unreadable or malformed ones raise
    `ConfigError` naming the file, never its content.
    """
    raw: dict[str, bytes] = {}
    sources: dict[str, Path] = {}
    warnings: list[str] = []
    for name in (*SECRET_NAMES, "database_password"):
        for directory in secret_dirs(config, env):
            file = directory / name
            try:
                raw[name] = file.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigError(f"{file}: cannot read secret: {exc.strerror}") from None
            sources[name] = file
            if file.stat().st_mode & 0o077:
                warnings.append(f"{file} is readable by other users; chmod 600 it")
            break
    text: dict[str, list[str]] = {}
    for name, content in raw.items():
        if name == "checkpoint_key":
            continue
        try:
            decoded = content.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{sources[name]}: secret is not UTF-8 text") from None
        lines = [line.strip() for line in decoded.splitlines() if line.strip()]
        text[name] = lines if name in _MULTI_VALUE else lines[:1]
    for value in text.get("notify_secret", []):
        _check_whsec(value)
    checkpoint = raw.get("checkpoint_key", b"").rstrip(b"\r\n") or None
    api_key = next(iter(text.get("provider_api_key", [])), None)
    secrets = Secrets(
        webhook_secrets=tuple(v.encode() for v in text.get("webhook_secret", [])),
        provider_api_key=api_key,
        auth_events_tokens=tuple(text.get("auth_events_token", [])),
        operator_tokens=tuple(text.get("operator_token", [])),
        notify_secrets=tuple(text.get("notify_secret", [])),
        checkpoint_key=checkpoint,
        database_password=next(iter(text.get("database_password", [])), None),
        missing=(),
        warnings=tuple(warnings),
        sources=sources,
    )
    # An empty file is as good as no file: report it as missing.
    described = secrets.describe()
    missing = tuple(name for name in SECRET_NAMES if described[name] == "missing")
    return replace(secrets, missing=missing)


def render_effective(config: Config, secrets: Secrets) -> str:
    """The effective configuration as JSON, secrets masked, for `staticipd check-config`."""
    document = msgspec.to_builtins(config, enc_hook=str)
    if config.database.url:  # a password written into the URL is not shown (README, "PostgreSQL")
        parts = urlsplit(config.database.url)
        if parts.password is not None:
            user, host = parts.netloc.rsplit("@", 1)
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
            document["database"]["url"] = urlunsplit(parts._replace(netloc=netloc))
    document["secrets"] = secrets.describe()
    if secrets.sources:
        document["secret_files"] = {name: str(path) for name, path in secrets.sources.items()}
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode()
