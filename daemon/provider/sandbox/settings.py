"""Settings of the sandbox provider: every duration in nominal seconds, plus one time scale.

Defaults follow docs/provider.md; where the provider's documentation is silent the behaviour is a
setting and the default is the safe reading (docs/provider.md#what-is-verified-and-what-is-assumed).
``scaled()`` turns a nominal duration into real seconds, so a demo with ``time_scale=0.005`` sees
the 30-minute move delay pass in 9 seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

EarlySecondAuth = Literal["ignore", "move", "restart_clock"]
BreakKind = Literal["invalid", "sync_error"]
# The bodies a 2xx answer to downgrade/upgrade may have (docs/provider.md#the-management-api):
# `{"success": true}`, `{"success": "true"}` (one SDK's own test mocks), `{"success": true}` with
# extra fields, the account object (another SDK's fixtures), an empty body, and a body that breaks
# off after the status (the connection drops mid-body).
ActionBody = Literal["success", "success_string", "extra_fields", "account", "empty", "unreadable"]
ACTION_BODIES: tuple[ActionBody, ...] = get_args(ActionBody)
# Management calls the "sync has been stopped" refusal can be applied to
# (docs/provider.md#what-is-verified-and-what-is-assumed).
REFUSABLE_CALLS = frozenset({"update", "downgrade", "upgrade"})


@dataclass
class Faults:
    """Fault-injection probabilities (0..1) and sizes; changeable at runtime via /sandbox/faults."""

    webhook_drop: float = 0.0
    webhook_duplicate: float = 0.0
    # A reordered delivery is held back until the next delivery to the destination went out.
    webhook_reorder: float = 0.0
    webhook_delay: float = 0.0
    # Nominal seconds (scaled) a delayed delivery waits, drawn uniformly from this range.
    webhook_delay_range: tuple[float, float] = (30.0, 300.0)
    webhook_bad_signature: float = 0.0
    api_429: float = 0.0
    api_5xx: float = 0.0
    api_timeout: float = 0.0
    # Real seconds a "timed out" API call hangs before answering (not scaled: it is network I/O).
    api_timeout_seconds: float = 15.0
    # Chance that an account breaks (account.invalid or account.sync_error, even odds) some
    # time after an end user's auth; a later auth by the user repairs it
    # (docs/provider.md#the-trigger-table).
    account_break: float = 0.0
    # Nominal seconds (scaled) between the auth and the break, drawn uniformly from this range.
    account_break_delay_range: tuple[float, float] = (60.0, 600.0)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; unknown names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}")
            if key.endswith("_range"):
                value = (float(value[0]), float(value[1]))
            else:
                value = float(value)
                if not key.endswith("seconds") and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} must be a probability between 0 and 1")
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SandboxSettings:
    """Everything the sandbox provider can be told; durations are nominal (provider) seconds."""

    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"  # noqa: S105 -- a sandbox fixture value
    application_id: str = "sandbox-application"
    api_version: Literal[2, 3] = 2
    time_scale: float = 1.0
    seed: int = 0
    # -- the static-IP move (docs/provider.md#the-static-ip-move) --
    static_ips_enabled: bool = False
    move_delay: float = 1800.0
    early_second_auth: EarlySecondAuth = "ignore"
    # The trigger after the move is unverified: account.running always, account.connected too
    # when set.
    connected_on_move: bool = False
    # Downgrade stops sync; whether the provider then sends account.stopped is unverified.
    stopped_on_downgrade: bool = True
    # After upgrade the account is re-queued and runs "within about a minute".
    upgrade_delay: float = 30.0
    # The body of each 2xx answer to downgrade/upgrade, taken in turn (members of ACTION_BODIES).
    action_bodies: tuple[ActionBody, ...] = ("success",)
    # The most accounts one page of the account list holds, whatever `limit` asks (None: no cap);
    # nothing says the provider never caps its pages (docs/provider.md#the-management-api).
    page_cap: int | None = None
    connected_on_create: bool = True
    # Modifying calls on an account whose sync is stopped fail with a fixed body
    # (docs/provider.md#what-is-verified-and-what-is-assumed);
    # which calls that covers (notably downgrade/upgrade, the restart) and the status code are
    # unverified, so the default refuses none. Members of REFUSABLE_CALLS.
    stopped_account_refuses: frozenset[str] = frozenset()
    stopped_account_status: int = 403
    # -- IP lists (docs/provider.md#the-ip-address-endpoints) --
    ip_rate_limit: int = 10
    ip_rate_window: float = 3600.0
    dynamic_ip_rotation: float = 900.0
    dynamic_ip_count: int = 12
    static_ips: list[str] = field(default_factory=lambda: [f"203.0.113.{n}" for n in range(10, 18)])
    # -- webhooks (docs/provider.md#retries-and-duplicates) --
    webhook_url: str | None = None
    # Real seconds; timeouts bound network I/O and are not scaled.
    challenge_timeout: float = 10.0
    delivery_timeout: float = 10.0
    # Waits before attempts 2..n (nominal seconds). v2: 5 attempts over ~20 min; v3: 3 attempts,
    # the last 10-20 min after the first. Exact intervals are undocumented.
    v2_retry_delays: list[float] = field(default_factory=lambda: [60.0, 120.0, 300.0, 720.0])
    v3_retry_delays: list[float] = field(default_factory=lambda: [300.0, 600.0])
    # A destination failing for this long is disabled (v2 inactive, v3 failed).
    disable_after: float = 72 * 3600.0
    # v2: chance that a POST carries several queued deltas, and the most it carries.
    batch_probability: float = 0.0
    max_deltas_per_post: int = 5
    # Content-Encoding of every delivery, signed as sent (the provider's opt-in compression).
    webhook_content_encoding: Literal["identity", "gzip", "deflate"] = "identity"
    # Chance that a delivery is joined by notifications about other objects, in the published
    # shapes (docs/provider.md#webhook-bodies-v2): v2 adds message/calendar deltas to the batch,
    # v3 sends a calendar notification of its own. The daemon must skip them and lose nothing.
    other_object_deltas: float = 0.0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.stopped_account_refuses = frozenset(self.stopped_account_refuses)
        unknown = self.stopped_account_refuses - REFUSABLE_CALLS
        if unknown:
            raise ValueError(f"stopped_account_refuses: unknown calls {sorted(unknown)}")
        self.action_bodies = tuple(self.action_bodies)
        odd = set(self.action_bodies) - set(ACTION_BODIES)
        if odd or not self.action_bodies:
            raise ValueError(
                f"action_bodies: one or more of {list(ACTION_BODIES)}, not {sorted(odd)}"
            )

    def scaled(self, seconds: float) -> float:
        """Real seconds for a nominal provider duration."""
        return seconds * self.time_scale

    @property
    def retry_delays(self) -> list[float]:
        """Real waits before each retry for the configured API version."""
        delays = self.v2_retry_delays if self.api_version == 2 else self.v3_retry_delays
        return [self.scaled(d) for d in delays]

    @classmethod
    def compressed(cls, time_scale: float, **overrides: Any) -> SandboxSettings:
        """Settings whose nominal durations run ``time_scale`` times as fast as real time."""
        return cls(time_scale=time_scale, **overrides)
