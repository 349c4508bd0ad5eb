"""The provider's account book and static-IP state machine, pure: methods take ``now`` and return
the webhook triggers to send, so the HTTP shell and the tests decide about time.

States (docs/provider.md#the-static-ip-move): an account is in ``env`` ``legacy`` (ordinary
dynamic-IP sync), ``staging`` (first auth done, parked stopped on a dynamic-environment server) or
``static``. Independently it may be ``broken`` (``invalid`` credentials or a ``sync_error``, both
asking for a re-auth: docs/provider.md#the-trigger-table): its ``sync_state`` says so until the
end user authenticates again.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any

from .settings import BreakKind, SandboxSettings

PROVIDERS = ("gmail", "eas", "ews", "imap", "office365")
_ID_ALPHABET = string.digits + string.ascii_lowercase
# What a broken account's management object says (`invalid` verified; the sync-error spelling
# is unverified, and the set of values is open: docs/provider.md#the-trigger-table) and which
# webhook announces it.
BROKEN_SYNC_STATES: dict[str, str] = {"invalid": "invalid", "sync_error": "sync-error"}
BROKEN_TRIGGERS: dict[str, str] = {"invalid": "account.invalid", "sync_error": "account.sync_error"}


@dataclass
class Account:
    """One connected account as the provider keeps it, with the sandbox's migration bookkeeping."""

    id: str
    email: str
    provider: str
    sync_state: str = "running"
    billing_state: str = "paid"
    authentication_type: str = "oauth"
    trial: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    env: str = "legacy"
    first_auth_at: float | None = None
    last_auth_at: float | None = None
    downgraded: bool = False
    auth_count: int = 0
    broken: BreakKind | None = None

    def as_json(self) -> dict[str, Any]:
        """The management-API object (docs/provider.md#the-management-api)."""
        return {
            "id": self.id,
            "account_id": self.id,
            "namespace_id": self.id,
            "email": self.email,
            "provider": self.provider,
            "billing_state": self.billing_state,
            "sync_state": self.sync_state,
            "authentication_type": self.authentication_type,
            "trial": self.trial,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Emission:
    """A webhook the provider owes: ``trigger`` (v2 name) for ``account`` at unix time ``date``."""

    trigger: str
    account_id: str
    date: float
    email: str = ""
    provider: str = ""
    # The account's last successful auth (v3 grant.expired's ``grant_updated_at``).
    last_auth_at: float | None = None


class AccountBook:
    """All accounts of the one sandbox application and the rules that move them."""

    def __init__(self, settings: SandboxSettings, rng: random.Random) -> None:
        self.settings = settings
        self._rng = rng
        self.accounts: dict[str, Account] = {}
        self.moves = 0

    def _new_id(self) -> str:
        while True:
            ident = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(25))
            if ident not in self.accounts:
                return ident

    def _emit(self, trigger: str, acct: Account, now: float) -> Emission:
        return Emission(trigger, acct.id, now, acct.email, acct.provider, acct.last_auth_at)

    def create(
        self, now: float, count: int = 0, emails: list[str] | None = None
    ) -> tuple[list[Account], list[Emission]]:
        """Connect new accounts (already syncing in the ordinary dynamic-IP environment)."""
        emails = list(emails or [])
        start = len(self.accounts)
        emails += [f"user{start + i + 1:05d}@example.com" for i in range(count)]
        created, out = [], []
        for email in emails:
            acct = Account(self._new_id(), email, self._rng.choice(PROVIDERS))
            self.accounts[acct.id] = acct
            created.append(acct)
            if self.settings.connected_on_create:
                out.append(self._emit("account.connected", acct, now))
        return created, out

    def authenticate(self, account_id: str, now: float) -> tuple[str, list[Emission]]:
        """An end user completed the OAuth flow; returns an outcome word and the webhooks owed.

        Outcomes: ``normal``, ``staged`` (first auth: parked stopped), or a second step's
        (``moved``, ``early_ignored``, ``early_restarted``: see ``_second_step``).
        """
        acct = self.accounts[account_id]
        acct.auth_count += 1
        acct.last_auth_at = now
        # Fresh credentials repair a broken account (both meanings ask for a re-auth:
        # docs/provider.md#the-trigger-table).
        was_broken, acct.broken = acct.broken, None
        if acct.env == "staging":
            assert acct.first_auth_at is not None
            if was_broken and not acct.downgraded:
                acct.sync_state = "stopped"  # repaired, but still parked until the move
            return self._second_step(acct, now, now)
        if acct.env == "legacy" and self.settings.static_ips_enabled:
            acct.env = "staging"
            acct.first_auth_at = now
            acct.sync_state = "stopped"
            return "staged", [self._emit("account.stopped", acct, now)]
        # Ordinary single auth: a stopped or broken account (not parked by the move) runs again.
        out = []
        if acct.sync_state != "running" and not acct.downgraded:
            acct.sync_state = "running"
            out.append(self._emit("account.running", acct, now))
        return "normal", out

    def _fail_again(self, acct: Account, now: float) -> list[Emission]:
        # A restart cannot mend credentials: the restarted sync fails the same way again.
        assert acct.broken is not None
        acct.sync_state = BROKEN_SYNC_STATES[acct.broken]
        return [self._emit(BROKEN_TRIGGERS[acct.broken], acct, now)]

    def _second_step(self, acct: Account, at: float, now: float) -> tuple[str, list[Emission]]:
        """A second step at ``at`` of a staged account: the user's auth or the admin's stop/start.

        ``moved`` once ``move_delay`` has passed since the first auth; an earlier step is
        answered per ``early_second_auth`` (undocumented:
        docs/provider.md#what-is-verified-and-what-is-assumed): ``early_ignored``, ``moved``, or
        ``early_restarted`` (the delay counts again from ``at``).
        """
        assert acct.first_auth_at is not None
        early = at - acct.first_auth_at < self.settings.scaled(self.settings.move_delay)
        policy = self.settings.early_second_auth
        if not early or policy == "move":
            return "moved", self._move(acct, now)
        if policy == "restart_clock":
            acct.first_auth_at = at
            return "early_restarted", []
        return "early_ignored", []

    def _move(self, acct: Account, now: float) -> list[Emission]:
        acct.env = "static"
        self.moves += 1
        if acct.downgraded:
            return []  # on a static server now, but cancelled: it syncs after the upgrade
        if acct.broken:
            # The admin's move places the account on a static server, but its sync cannot run
            # until the user re-authenticates; that auth then sends account.running.
            return self._fail_again(acct, now)
        acct.sync_state = "running"
        out = [self._emit("account.running", acct, now)]
        if self.settings.connected_on_move:
            out.append(self._emit("account.connected", acct, now))
        return out

    def break_account(self, account_id: str, kind: BreakKind, now: float) -> list[Emission]:
        """The account's credentials stop working (``invalid``) or its sync fails
        (``sync_error``): ``sync_state`` says so and the webhook is owed. A later auth repairs it.
        """
        if kind not in BROKEN_SYNC_STATES:
            raise ValueError(f"kind must be one of {sorted(BROKEN_SYNC_STATES)}, not {kind!r}")
        acct = self.accounts[account_id]
        acct.broken = kind
        if not acct.downgraded:
            acct.sync_state = BROKEN_SYNC_STATES[kind]
        return [self._emit(BROKEN_TRIGGERS[kind], acct, now)]

    def downgrade(self, account_id: str, now: float) -> list[Emission]:
        """Cancel: billing stops and sync stops."""
        acct = self.accounts[account_id]
        was_running = acct.sync_state == "running"
        acct.billing_state = "cancelled"
        acct.sync_state = "stopped"
        acct.downgraded = True
        if was_running and self.settings.stopped_on_downgrade:
            return [self._emit("account.stopped", acct, now)]
        return []

    def upgrade(self, account_id: str, now: float) -> bool:
        """Reactivate billing; returns whether a sync restart is now queued (see ``restart``)."""
        acct = self.accounts[account_id]
        acct.billing_state = "paid"
        if not acct.downgraded:
            return False
        acct.downgraded = False
        return True

    def restart(self, account_id: str, started_at: float, now: float) -> tuple[str, list[Emission]]:
        """The queued sync restart after an upgrade runs (= the dashboard's stop/start).

        ``started_at`` is when the upgrade was asked for: that instant counts against the move
        delay, as the admin's "start" would. Outcomes: ``gone`` (deleted or downgraded again),
        a staged account's second step (see ``_second_step``), else ``running`` or ``broken``.
        """
        acct = self.accounts.get(account_id)
        if acct is None or acct.downgraded:
            return "gone", []
        if acct.env == "staging":
            outcome, out = self._second_step(acct, started_at, now)
            if outcome != "moved" and acct.broken:
                out = self._fail_again(acct, now)  # still parked, and the restart fails again
            return outcome, out
        if acct.broken:
            return "broken", self._fail_again(acct, now)
        if acct.sync_state != "running":
            acct.sync_state = "running"
            return "running", [self._emit("account.running", acct, now)]
        return "running", []

    def delete(self, account_id: str) -> Account:
        return self.accounts.pop(account_id)

    def page(self, limit: int, offset: int) -> list[Account]:
        return list(self.accounts.values())[offset : offset + limit]

    def counts(self) -> dict[str, int]:
        """How many accounts are in each environment and sync state (for stats)."""
        out: dict[str, int] = {}
        for acct in self.accounts.values():
            for key in (f"env.{acct.env}", f"sync_state.{acct.sync_state}"):
                out[key] = out.get(key, 0) + 1
        return out


class IpLists:
    """The dynamic list (one address replaced every rotation period) and the static list."""

    def __init__(self, settings: SandboxSettings, seed: int, started_at: float) -> None:
        self.settings = settings
        self._seed = seed
        self._started_at = started_at
        self._cache: tuple[int, list[str]] | None = None

    def dynamic(self, now: float) -> tuple[list[str], int]:
        """Return the dynamic list and its ``updated_at`` (unix seconds) as of ``now``."""
        period = max(self.settings.scaled(self.settings.dynamic_ip_rotation), 1e-6)
        rotations = max(0, int((now - self._started_at) / period))
        if self._cache is None or self._cache[0] > rotations:
            rng = random.Random(self._seed)
            ips = [self._address(rng) for _ in range(self.settings.dynamic_ip_count)]
            self._cache = (0, ips)
        done, ips = self._cache
        for step in range(done, rotations):
            rng = random.Random(f"{self._seed}:{step}")
            ips[rng.randrange(len(ips))] = self._address(rng)
        self._cache = (rotations, ips)
        return sorted(ips), int(self._started_at + rotations * period)

    @staticmethod
    def _address(rng: random.Random) -> str:
        # Documentation ranges (RFC 5737): clearly fake, never routable.
        return f"{rng.choice(('192.0.2', '198.51.100'))}.{rng.randrange(1, 255)}"

    def static(self) -> list[str]:
        return list(self.settings.static_ips) if self.settings.static_ips_enabled else []
