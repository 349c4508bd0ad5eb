"""What every route of the listener shares: the process's parts (`Runtime`), how storage
trouble and a stopping daemon become a 503, and how an account is shown."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from aiohttp import web

from daemon.config import Config, Secrets
from daemon.domain import AccountState
from daemon.http.errors import HttpError, ServiceUnavailable, Standby
from daemon.metrics import Metrics
from daemon.runtime.engine import Engine
from daemon.runtime.live import LiveProjection
from eventstore import EventStore, NotLeader, StorageUnavailable, StoreClosed, WriterBusy

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
Role = Literal["leader", "standby"]
# What a request refused because the daemon is stopping is told: a restart takes a few seconds.
STOPPING_RETRY_AFTER = 5
# Methods that only read: still served while stopping (probes, status, operator reads).
_READS = frozenset({"GET", "HEAD", "OPTIONS"})

# Ids sent in bodies (account, event, wave) hold no control characters: they end up in log
# lines, terminals and listings. `\Z`, not `$`, which would let a final newline through.
ID_PATTERN = r"^[^\x00-\x1f\x7f]*\Z"


@dataclass
class Runtime:
    """What every route needs; `secrets` is replaced as a whole when SIGHUP reloads them."""

    config: Config
    store: EventStore
    live: LiveProjection
    engine: Engine
    metrics: Metrics
    secrets: Secrets
    stopping: bool = False
    requests_in_flight: int = 0  # handlers running now (the shutdown waits for them)
    # "standby" while another process leads a PostgreSQL log (daemon/service.py); one way.
    role: Role = "leader"

    @property
    def standby_retry_after(self) -> int:
        """What a standby's 503 says: a takeover takes about the lease."""
        return max(1, math.ceil(self.config.cluster.lease_seconds))

    @functools.cached_property
    def storage_guard(self) -> StorageGuard:
        """`with rt.storage_guard:` storage trouble answers 503. Around every handler (the
        listener's middleware, daemon/http/frame.py), so a route need not say it."""
        return StorageGuard(self.standby_retry_after)

    def refusal(self, method: str) -> HttpError | None:
        """Why a request with `method` is refused before its body is read (None: it is not).

        Once the daemon is stopping, or while it is a standby, a request that would write is
        answered 503 at once, so nothing of it is recorded; the sender retries after
        `Retry-After`. Reads are still served.
        """
        if method in _READS:
            return None
        if self.stopping:
            return ServiceUnavailable(
                "the daemon is stopping; retry shortly", retry_after=STOPPING_RETRY_AFTER
            )
        if self.role == "standby":
            # Refused, not forwarded: README.md, "Active/standby on PostgreSQL", says why.
            return Standby(
                "this instance is a standby; send writes to the leader (/readyz 200)",
                retry_after=self.standby_retry_after,
            )
        return None


async def close_while_stopping(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer given while stopping ends its connection (`Connection: close`).

    A keep-alive client then opens a new connection for its next request (refused, or sent to
    the next process) instead of writing into one the daemon is about to close.
    """
    if request.app[RUNTIME].stopping:
        response.force_close()
        # aiohttp writes the Connection header before this hook runs: say it here too.
        response.headers["Connection"] = "close"


class StorageGuard:
    """Storage trouble becomes 503 with Retry-After: the sender retries and nothing is lost.

    A commit refused by the leadership fence (NotLeader: another process now leads) is the
    standby's 503, with the Retry-After a standby gives (about the lease: the time a takeover
    takes). A plain (synchronous) context manager: it only translates what the awaits inside it
    raise, and costs a fraction of a generator-based one on the ingest hot path.
    """

    def __init__(self, standby_retry_after: int) -> None:
        self.standby_retry_after = standby_retry_after

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, WriterBusy):
            raise ServiceUnavailable("the event log is busy; retry shortly", retry_after=2) from exc
        if isinstance(exc, StoreClosed):
            raise ServiceUnavailable(
                "the daemon is stopping; retry shortly", retry_after=STOPPING_RETRY_AFTER
            ) from exc
        if isinstance(exc, NotLeader):
            raise Standby(
                "this instance no longer leads; retry at the leader",
                retry_after=self.standby_retry_after,
            ) from exc
        if isinstance(exc, StorageUnavailable):
            raise ServiceUnavailable(
                "the event log is unavailable; retry later", retry_after=10
            ) from exc


def describe_account(state: AccountState | None, account_id: str) -> dict[str, Any]:
    """The account as the API shows it: its state as JSON, without the timer bookkeeping."""
    if state is None:
        return {"account_id": account_id, "state": "unknown"}
    # One encoder for every field, so every time reads the same way ("...Z").
    fields = {name: getattr(state, name) for name in state.__struct_fields__}
    doc = msgspec.to_builtins(fields, order="deterministic")  # flags sorted too
    doc["pending_effects"] = sorted(state.pending_effects)
    doc["next_due"] = msgspec.to_builtins(state.next_due)
    for key in ("closed_timers", "timer_purposes"):
        doc.pop(key, None)
    return doc
