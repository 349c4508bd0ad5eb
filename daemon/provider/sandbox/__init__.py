"""Sandbox of the email-sync provider (v2 management API, IP lists, signed webhooks, the static-IP
move) and simulated end users, for tests and ``staticipd demo``. Never used against production.
"""

from .accounts import Account, AccountBook, Emission, IpLists
from .provider import SandboxProvider
from .settings import BreakKind, Faults, SandboxSettings
from .users import SimulatedUsers, UserCounters, UsersSettings
from .webhooks import Attempt, Destination, WebhookSender, nylas_signature

__all__ = [
    "Account",
    "AccountBook",
    "Attempt",
    "BreakKind",
    "Destination",
    "Emission",
    "Faults",
    "IpLists",
    "SandboxProvider",
    "SandboxSettings",
    "SimulatedUsers",
    "UserCounters",
    "UsersSettings",
    "WebhookSender",
    "nylas_signature",
]
