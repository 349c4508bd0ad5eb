"""Inputs over HTTP: the provider's signed webhooks and the application's auth events.

Both answer 2xx only after the events are committed (invariant 1). The webhook signature is
checked on the raw bytes before anything is parsed, so garbage with a bad signature is a 401
like any other forgery; a correctly signed body we cannot read is quarantined in the log once
and answered 400 naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
import structlog
from aiohttp import web

from daemon import logs, metrics
from daemon.domain import AuthReported, first_event_id
from daemon.http.context import ID_PATTERN, RUNTIME, Runtime, describe_account
from daemon.http.encoding import DecodedTooLarge, UndecodableBody, decode_content
from daemon.http.errors import (
    ApiError,
    PayloadTooLarge,
    bind_log_context,
    decode_body,
    json_answer,
    read_limited_body,
    read_raw_body,
    request_id,
    require_bearer,
)
from daemon.provider.webhooks import MalformedWebhook, parse_delivery, verify_signature
from eventstore import new_event_id

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=ID_PATTERN)]


class AuthEventBody(msgspec.Struct, forbid_unknown_fields=False):
    """What the application's backend reports when an end user authenticated."""

    account_id: _NonEmpty
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    event_id: _NonEmpty | None = None
    email: str | None = None
    provider: str | None = None


_auth_decoder = msgspec.json.Decoder(AuthEventBody)


@routes.get("/webhooks/nylas")
async def webhook_challenge(request: web.Request) -> web.Response:
    """The provider's endpoint verification: echo the challenge, raw, as text/plain."""
    challenge = request.query.get("challenge")
    if challenge is None:
        raise ApiError(
            400, "missing_challenge", "query parameter 'challenge' is required", field="challenge"
        )
    return web.Response(text=challenge, content_type="text/plain")


@routes.post("/webhooks/nylas")
async def receive_webhook(request: web.Request) -> web.Response:
    rt: Runtime = request.app[RUNTIME]
    limit = rt.config.http.max_body_bytes
    # The signature covers the bytes as sent: checked before any Content-Encoding is undone.
    raw = await read_raw_body(request, limit)
    signatures = request.headers.getall("X-Nylas-Signature", [])
    # One signature header or none: with two, which one counts would be a guess.
    signature = signatures[0] if len(signatures) == 1 else None
    if not verify_signature(raw, signature, rt.secrets.webhook_secrets):
        rt.metrics.inc(metrics.WEBHOOKS, result="bad_signature")
        raise ApiError(401, "bad_signature", "missing or wrong X-Nylas-Signature")
    received_at = datetime.now(UTC)
    try:
        body = decode_content(raw, request.headers.get("Content-Encoding"), limit)
    except DecodedTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except UndecodableBody as exc:
        # Signed by the provider, so kept (once) as sent for a look; the sender gets a 400.
        await _quarantine(rt, raw, "Content-Encoding", str(exc))
        rt.metrics.inc(metrics.WEBHOOKS, result="malformed")
        raise ApiError(400, "undecodable_body", str(exc), field="Content-Encoding") from None
    try:
        delivery = parse_delivery(body, received_at=received_at)
    except MalformedWebhook as exc:
        await _quarantine(rt, body, exc.field, exc.reason)
        rt.metrics.inc(metrics.WEBHOOKS, result="malformed")
        raise ApiError(400, "malformed_body", exc.reason, field=exc.field) from None
    for bad in delivery.malformed:
        # One unreadable account delta is kept alone (with its index) and costs nobody else.
        await _quarantine(rt, bad.raw, bad.field, bad.reason)
    skipped, quarantined = len(delivery.skipped), len(delivery.malformed)
    if quarantined:
        rt.metrics.inc(metrics.WEBHOOK_DELTAS, quarantined, result="quarantined")
    inputs = delivery.notifications
    if quarantined and not inputs and not skipped:
        # Nothing in the delivery was usable: a 400, like a body that is no delivery at all.
        rt.metrics.inc(metrics.WEBHOOKS, result="malformed")
        first = delivery.malformed[0]
        raise ApiError(400, "malformed_body", first.reason, field=first.field)
    if inputs:
        # The first delivery's ids (and how many came with it) go on every line of this request.
        first_input = inputs[0]
        bind_log_context(
            account_id=first_input.account_id,
            delivery_id=first_input.input_id,
            delivery_count=len(inputs),
        )
    decisions = await rt.engine.submit(inputs, source="webhook", correlation_id=request_id(request))
    duplicates = sum(d.duplicate for d in decisions)
    recorded = len(decisions) - duplicates
    rt.metrics.inc(metrics.WEBHOOKS, result="accepted")
    # Counted only when not 0: every series is shown from the start (count_from_zero).
    for result, n in (("recorded", recorded), ("duplicate", duplicates), ("skipped", skipped)):
        if n:
            rt.metrics.inc(metrics.WEBHOOK_DELTAS, n, result=result)
    if logs.enabled("debug"):
        log.debug(
            "webhook.accepted",
            recorded=recorded,
            duplicates=duplicates,
            skipped=skipped,
            quarantined=quarantined,
        )
    return json_answer(
        {
            "recorded": recorded,
            "duplicates": duplicates,
            "skipped": skipped,
            "quarantined": quarantined,
        }
    )


def count_from_zero(counts: metrics.Metrics) -> None:
    """Show every series of the webhook counters at 0 from the start, as Prometheus advises
    (a rate over a series that appears late misses its first count)."""
    for result in ("accepted", "bad_signature", "malformed"):
        counts.inc(metrics.WEBHOOKS, 0, result=result)
    for result in ("recorded", "duplicate", "skipped", "quarantined"):
        counts.inc(metrics.WEBHOOK_DELTAS, 0, result=result)


async def _quarantine(rt: Runtime, body: bytes, field: str, reason: str) -> None:
    """Keep a signed but unreadable body (or delta) in the log once, however often it comes."""
    new = await rt.engine.quarantine(body, source="webhook", field=field, reason=reason)
    log.warning("webhook.quarantined", field=field, reason=reason, new=new)


@routes.post("/v1/auth-events")
async def receive_auth_event(request: web.Request) -> web.Response:
    rt: Runtime = request.app[RUNTIME]
    require_bearer(request, rt.secrets.auth_events_tokens)
    body = await read_limited_body(request, rt.config.http.max_body_bytes)
    event = decode_body(body, _auth_decoder)
    bind_log_context(account_id=event.account_id)
    input_id = f"auth:{event.event_id}" if event.event_id else f"auth:{new_event_id()}"
    inp = AuthReported(
        input_id=input_id,
        account_id=event.account_id,
        occurred_at=event.occurred_at,
        email=event.email,
        provider=event.provider,
        source="app",
    )
    (decision,) = await rt.engine.submit(
        [inp], source="auth-event", correlation_id=request_id(request)
    )
    if decision.duplicate and event.event_id:
        await _refuse_reused_event_id(rt, input_id, event.account_id)
    rt.metrics.inc(metrics.AUTH_EVENTS, result="duplicate" if decision.duplicate else "recorded")
    if logs.enabled("debug"):
        log.debug("auth_event.accepted", duplicate=decision.duplicate)
    account = rt.live.projection.account(event.account_id)
    return json_answer(
        {"duplicate": decision.duplicate, "account": describe_account(account, event.account_id)}
    )


async def _refuse_reused_event_id(rt: Runtime, input_id: str, account_id: str) -> None:
    """409 when an `event_id` already recorded for another account is sent again.

    A true retry names the same account and is a duplicate; another account means the client
    reuses ids, and answering "duplicate" would hide that its event was never recorded.
    """
    original = await rt.store.get_event(first_event_id(input_id))
    if original is None:
        return
    try:
        recorded = msgspec.json.decode(original.data, type=_RecordedAccount).account_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    if recorded is not None and recorded != account_id:
        rt.metrics.inc(metrics.AUTH_EVENTS, result="event_id_conflict")
        raise ApiError(
            409,
            "event_id_conflict",
            "event_id was already used for another account; use a new event_id per event",
            field="$.event_id",
        )


class _RecordedAccount(msgspec.Struct):
    account_id: str | None = None
