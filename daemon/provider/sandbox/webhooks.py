"""The provider's webhook sender: challenge handshake, signed POSTs, retries and injected faults.

Bodies are serialised once and the exact bytes are signed (``X-Nylas-Signature``: lower-case
hex HMAC-SHA256; key = client secret in v2, the destination's ``webhook_secret`` in v3). Anything
but a 200 within ``delivery_timeout`` is a failed attempt and is retried as the provider does
(docs/provider.md#retries-and-duplicates).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import itertools
import json
import random
import secrets
import string
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ._tasks import BackgroundTasks
from .accounts import Emission
from .settings import SandboxSettings

# v2 trigger (or sandbox pseudo-trigger) -> v3 trigger; None = not sent in that version.
# v3 dropped account.running/stopped (docs/provider.md#the-trigger-table); sandbox.* are emitted
# for v3's sake only.
V2_TRIGGERS: dict[str, str | None] = {
    "account.connected": "account.connected",
    "account.running": "account.running",
    "account.stopped": "account.stopped",
    "account.invalid": "account.invalid",
    "account.sync_error": "account.sync_error",
    "sandbox.reauthenticated": None,
    "sandbox.deleted": None,
}
V3_TRIGGERS: dict[str, str | None] = {
    "account.connected": "grant.created",
    "account.running": None,
    "account.stopped": None,
    "account.invalid": "grant.expired",
    "account.sync_error": None,
    "sandbox.reauthenticated": "grant.updated",
    "sandbox.deleted": "grant.deleted",
}
# `data.object.code` per v3 grant trigger (docs/provider.md#webhook-bodies-v3); grant.updated is
# 25014 unless re-auth.
V3_CODES: dict[str, int] = {
    "grant.created": 25012,
    "grant.updated": 25014,
    "grant.deleted": 25013,
    "grant.expired": 25009,
}
V3_REAUTH_CODE = 25027
_ID_ALPHABET = string.ascii_letters + string.digits


def nylas_signature(key: str, body: bytes) -> str:
    """The provider's signature header value: lower-case hex HMAC-SHA256 of the raw body."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Destination:
    """A registered webhook URL; ``state`` is active/inactive (v2) or active/failing/failed (v3)."""

    id: str
    url: str
    version: int
    state: str = "inactive"
    webhook_secret: str | None = None
    failing_since: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "callback_url": self.url, "state": self.state}
        out["version"] = self.version
        if self.webhook_secret is not None:
            out["webhook_secret"] = self.webhook_secret
        return out


@dataclass
class Attempt:
    """One POST attempt, kept for tests and stats."""

    delivery_id: str
    destination_id: str
    attempt: int
    status: int | None
    ok: bool
    bad_signature: bool = False


@dataclass
class _Delivery:
    id: str
    emissions: list[Emission]
    bad_signature: bool = False
    body: bytes = b""


@dataclass
class SenderStats:
    """Counters of the sender (exposed by /sandbox/stats)."""

    queued: int = 0
    posts: int = 0
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    bad_signatures: int = 0
    suppressed: int = 0
    challenges_ok: int = 0
    challenges_failed: int = 0
    deltas: int = 0
    # Deliveries sent compressed, and notifications about other objects mixed in.
    compressed: int = 0
    other_deltas: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _message_delta(em: Emission) -> dict[str, Any]:
    """A message.created delta of the account, shaped like the official Node SDK's fixture."""
    return {
        "date": int(em.date),
        "object": "message",
        "type": "message.created",
        "object_data": {
            "namespace_id": em.account_id,
            "account_id": em.account_id,
            "object": "message",
            "attributes": {"thread_id": f"thread-{em.account_id}", "received_date": int(em.date)},
            "id": f"msg-{em.account_id}-{int(em.date)}",
            "metadata": None,
        },
    }


class WebhookSender:
    """Queues emissions and delivers them to every active destination, with faults and retries."""

    def __init__(
        self, settings: SandboxSettings, rng: random.Random, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._rng = rng
        self._clock = clock
        self.destinations: dict[str, Destination] = {}
        self.attempts: list[Attempt] = []
        self.stats = SenderStats()
        self._queue: asyncio.Queue[Emission] = asyncio.Queue()
        self._tasks = BackgroundTasks()
        self._held: list[tuple[Destination, _Delivery]] = []
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Ids and the other objects' notifications come from their own seeded streams so they do
        # not shift the fault draws.
        self._id_rng = random.Random(f"{settings.seed}:notification-ids")
        self._other_rng = random.Random(f"{settings.seed}:other-objects")
        self.integration_id = self._new_uuid()

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def _new_notification_id(self) -> str:
        """An opaque id shaped like the published ones (``Kkx2QQB7TWjWM3KXRQQn562394``): twenty
        letters and digits, then six digits; not a UUID (docs/provider.md#webhook-bodies-v3)."""
        head = "".join(self._id_rng.choice(_ID_ALPHABET) for _ in range(20))
        return head + "".join(self._id_rng.choice(string.digits) for _ in range(6))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks.spawn(self._dispatch_loop())

    async def stop(self) -> None:
        await self._tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending(self) -> int:
        """Deliveries not yet finished (queued, held, delayed or retrying)."""
        return self._queue.qsize() + len(self._tasks) - 1

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or in flight (for tests and the demo's shutdown)."""
        async with asyncio.timeout(timeout):
            # Polling is fine here: only tests and shutdown wait, and "idle" spans many tasks.
            while self.pending > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    # -- registration --------------------------------------------------------------------------

    async def register(self, url: str, version: int | None = None) -> Destination:
        """Register ``url``; it becomes active only if it answers the challenge correctly."""
        dest = Destination(f"wh{next(self._ids)}", url, version or self.settings.api_version)
        self.destinations[dest.id] = dest
        await self.challenge(dest)
        return dest

    async def challenge(self, dest: Destination) -> bool:
        """GET url?challenge=<random>: 200 with exactly the value as body, in time, activates."""
        assert self._session is not None, "sender not started"
        value = secrets.token_urlsafe(16)
        ok = False
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.challenge_timeout)
            async with self._session.get(
                dest.url, params={"challenge": value}, timeout=timeout
            ) as resp:
                ok = resp.status == 200 and (await resp.read()) == value.encode()
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.stats.challenges_ok += 1
            dest.state = "active"
            dest.failing_since = None
            if dest.version == 3 and dest.webhook_secret is None:
                dest.webhook_secret = secrets.token_hex(32)
        else:
            self.stats.challenges_failed += 1
            dest.state = "inactive"
        return ok

    # -- queueing and faults -------------------------------------------------------------------

    def send(self, emissions: list[Emission]) -> None:
        """Queue webhooks owed by the provider (non-blocking)."""
        for em in emissions:
            self.stats.queued += 1
            self._queue.put_nowait(em)

    async def _dispatch_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            if (
                self.settings.api_version == 2
                and self._rng.random() < self.settings.batch_probability
            ):
                while len(batch) < self.settings.max_deltas_per_post and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            for dest in list(self.destinations.values()):
                if dest.state in ("active", "failing"):
                    self._fan_out(dest, batch)

    def _fan_out(self, dest: Destination, batch: list[Emission]) -> None:
        table = V2_TRIGGERS if dest.version == 2 else V3_TRIGGERS
        kept = [e for e in batch if table.get(e.trigger)]
        self.stats.suppressed += len(batch) - len(kept)
        if not kept:
            return
        groups = [kept] if dest.version == 2 else [[e] for e in kept]
        faults = self.settings.faults
        deliveries = []
        for group in groups:
            # Opaque ids like the provider's (docs/provider.md#webhook-bodies-v3); seeded so runs
            # repeat.
            delivery = _Delivery(self._new_notification_id(), group)
            others = self._other_rng.random() < self.settings.other_object_deltas
            if dest.version == 2:
                delivery.body = self._v2_body(group, others)
            deliveries.append(delivery)
            if dest.version == 3 and others:
                deliveries.append(self._v3_other(group[0]))
        for delivery in deliveries:
            if self._rng.random() < faults.webhook_drop:
                self.stats.dropped += 1
                continue
            delivery.bad_signature = self._rng.random() < faults.webhook_bad_signature
            copies = 2 if self._rng.random() < faults.webhook_duplicate else 1
            self.stats.duplicated += copies - 1
            if self._rng.random() < faults.webhook_reorder:
                self.stats.reordered += 1
                self._held.append((dest, delivery))
                self._tasks.spawn(self._release_later(delivery))
                copies -= 1
            elif self._rng.random() < faults.webhook_delay:
                self.stats.delayed += 1
                low, high = faults.webhook_delay_range
                wait = self.settings.scaled(self._rng.uniform(low, high))
                self._tasks.spawn(self._deliver(dest, delivery, wait))
                copies -= 1
            for _ in range(copies):
                self._tasks.spawn(self._deliver(dest, delivery, 0.0))
            self._release_held(except_for=delivery)

    def _release_held(self, except_for: _Delivery | None = None) -> None:
        """Send held (reordered) deliveries now that a later one has gone out first."""
        keep = []
        for dest, held in self._held:
            if held is except_for:
                keep.append((dest, held))
            else:
                self._tasks.spawn(self._deliver(dest, held, 0.0))
        self._held = keep

    async def _release_later(self, delivery: _Delivery) -> None:
        # Nothing else may come for a while: a held delivery is sent anyway after a short wait.
        await asyncio.sleep(self.settings.scaled(self.settings.faults.webhook_delay_range[0]))
        for dest, held in list(self._held):
            if held is delivery:
                self._held.remove((dest, held))
                self._tasks.spawn(self._deliver(dest, held, 0.0))

    # -- bodies --------------------------------------------------------------------------------

    @staticmethod
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _v2_body(self, group: list[Emission], others: bool = False) -> bytes:
        deltas: list[dict[str, Any]] = []
        for em in group:
            object_data = {
                "namespace_id": em.account_id,
                "account_id": em.account_id,
                "object": "account",
                "attributes": None,
                "id": em.account_id,
                "metadata": None,
            }
            deltas.append(
                {
                    "date": int(em.date),
                    "object": "account",
                    "type": em.trigger,
                    "object_data": object_data,
                }
            )
        if others:
            # A message and a calendar delta of one of the accounts, in the shapes the provider
            # publishes (the calendar delta has `time` and `source`, no `date`), somewhere in the
            # batch.
            em = group[0]
            self.stats.other_deltas += 2
            for extra in (_message_delta(em), self._calendar_delta(em)):
                deltas.insert(self._other_rng.randint(0, len(deltas)), extra)
        return self._dumps({"deltas": deltas})

    def _calendar_delta(self, em: Emission) -> dict[str, Any]:
        return {
            "object": "calendar",
            "type": "calendar.updated",
            "source": "/google/events/realtime",
            "id": self._new_notification_id(),
            "time": int(em.date),
            "object_data": {
                "namespace_id": em.account_id,
                "account_id": em.account_id,
                "object": "calendar",
                "attributes": None,
                "id": f"cal-{em.account_id}",
                "metadata": None,
            },
        }

    def _v3_other(self, em: Emission) -> _Delivery:
        """A v3 calendar notification of the account's grant, shaped like the schema pages'
        (no ``time``): a delivery of its own, with no emission behind it."""
        self.stats.other_deltas += 1
        body = {
            "specversion": "1.0",
            "type": "calendar.created",
            "source": "gma/nylas_core_sync/google/events/realtime",
            "id": self._new_notification_id(),
            "data": {
                "application_id": self.settings.application_id,
                "object": {
                    "grant_id": em.account_id,
                    "id": f"cal-{em.account_id}",
                    "is_primary": False,
                    "name": "Calendar",
                    "object": "calendar",
                    "read_only": False,
                    "timezone": "America/New_York",
                },
            },
        }
        return _Delivery(self._new_notification_id(), [], body=self._dumps(body))

    def _v3_body(self, delivery: _Delivery, attempt: int) -> bytes:
        em = delivery.emissions[0]
        trigger = V3_TRIGGERS[em.trigger]
        assert trigger is not None
        obj: dict[str, Any] = {
            "code": V3_CODES[trigger],
            "grant_id": em.account_id,
            "integration_id": self.integration_id,
            "email": em.email,
            "provider": em.provider,
        }
        if trigger == "grant.expired":
            # The last successful refresh: only grant.expired carries it.
            obj["grant_updated_at"] = int(em.last_auth_at or em.date)
        if em.trigger == "sandbox.reauthenticated":
            obj.update({"code": V3_REAUTH_CODE, "reauthentication_flag": True})
        return self._dumps(
            {
                "specversion": "1.0",
                "type": trigger,
                "source": "/nylas/system",
                "id": delivery.id,
                "time": int(em.date),
                "webhook_delivery_attempt": attempt,
                "data": {"application_id": self.settings.application_id, "object": obj},
            }
        )

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(self, dest: Destination, delivery: _Delivery, wait: float) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        delays = self.settings.retry_delays
        for attempt in range(1, len(delays) + 2):
            if dest.state not in ("active", "failing"):
                return
            if attempt > 1:
                self.stats.retries += 1
            if await self._attempt(dest, delivery, attempt):
                return
            if attempt <= len(delays):
                await asyncio.sleep(delays[attempt - 1])
        self.stats.failed += 1
        self._note_failure(dest)

    async def _attempt(self, dest: Destination, delivery: _Delivery, attempt: int) -> bool:
        assert self._session is not None
        fixed = dest.version == 2 or not delivery.emissions
        body = delivery.body if fixed else self._v3_body(delivery, attempt)
        headers = {"Content-Type": "application/json"}
        encoding = self.settings.webhook_content_encoding
        if encoding != "identity":
            # Compressed, then signed: the signature covers the bytes as sent.
            body = gzip.compress(body, mtime=0) if encoding == "gzip" else zlib.compress(body)
            headers["Content-Encoding"] = encoding
            self.stats.compressed += 1
        key = self.settings.client_secret if dest.version == 2 else (dest.webhook_secret or "")
        bad = delivery.bad_signature and attempt == 1
        sig = nylas_signature(key + ("-wrong" if bad else ""), body)
        self.stats.bad_signatures += int(bad)
        headers["X-Nylas-Signature"] = sig
        status: int | None = None
        self.stats.posts += 1
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.delivery_timeout)
            async with self._session.post(
                dest.url, data=body, headers=headers, timeout=timeout
            ) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            status = None
        ok = status == 200
        self.attempts.append(Attempt(delivery.id, dest.id, attempt, status, ok, bad))
        if ok:
            self.stats.delivered += 1
            self.stats.deltas += len(delivery.emissions)
            dest.failing_since = None
            if dest.state == "failing":
                dest.state = "active"
        else:
            self._note_failure(dest)
        return ok

    def _note_failure(self, dest: Destination) -> None:
        now = self._clock()
        if dest.failing_since is None:
            dest.failing_since = now
        if dest.version == 3 and dest.state == "active":
            dest.state = "failing"
        if now - dest.failing_since >= self.settings.scaled(self.settings.disable_after):
            dest.state = "inactive" if dest.version == 2 else "failed"
