"""The operator API (bearer `operator_token`): read the migration, and steer it.

Commands are inputs like any other: recorded in the log before they are answered. An
`Idempotency-Key` header makes a command safe to retry; without it every call is a new command.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import msgspec
import structlog
from aiohttp import web

from daemon.domain import (
    STATES,
    EnableMigration,
    Enroll,
    ExcludeAccount,
    Input,
    MarkResolved,
    Policy,
    ResetAccount,
    account_stream,
)
from daemon.http.context import ID_PATTERN, RUNTIME, Runtime, describe_account
from daemon.http.errors import (
    ApiError,
    bind_log_context,
    decode_body,
    read_limited_body,
    request_id,
    require_bearer,
)
from daemon.provider import allowlist
from daemon.runtime.audit import timeline, timeline_as_json
from eventstore import new_event_id

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
_T = TypeVar("_T")

_MAX_ID = 512
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID, pattern=ID_PATTERN)]
_MAX_PAGE = 1000
# Listing cursors carry an HMAC under this per-process key: a cursor this process did not hand
# out (made up, edited, a bare account id, from before a restart) is refused, never paged from.
_CURSOR_KEY = secrets.token_bytes(32)
_CURSOR_MAC_BYTES = 16


class EnableBody(msgspec.Struct):
    """Body of `POST /v1/migration/enable`."""

    actor: str = "operator"
    reason: str = ""


class EnrollBody(msgspec.Struct):
    """Body of `POST /v1/enrollments`: the accounts, their wave and (optionally) policy."""

    account_ids: Annotated[list[_Id], msgspec.Meta(min_length=1, max_length=100_000)]
    wave: _Id
    policy: Policy | None = None
    actor: str = "operator"
    reason: str = ""


class AccountCommandBody(msgspec.Struct):
    """Body of an operator command on one account: the reason is required, for the audit."""

    reason: Annotated[str, msgspec.Meta(min_length=1)]
    actor: str = "operator"


def _runtime(request: web.Request) -> Runtime:
    rt = request.app[RUNTIME]
    require_bearer(request, rt.secrets.operator_tokens)
    return rt


MAX_IDEMPOTENCY_KEY = 200
_IDEMPOTENCY_KEY = re.compile(f"[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}")
_enable_decoder = msgspec.json.Decoder(EnableBody)
_enroll_decoder = msgspec.json.Decoder(EnrollBody)
_account_command_decoder = msgspec.json.Decoder(AccountCommandBody)


async def _body(
    request: web.Request,
    rt: Runtime,
    decoder: msgspec.json.Decoder[_T],
    *,
    optional: bool = False,
) -> _T:
    """The JSON body; an `optional` one (every field has a default) may also be left out.

    Otherwise an empty body is not JSON: 400 `invalid_json`, field `$`, as README.md says.
    """
    raw = await read_limited_body(request, rt.config.http.max_body_bytes)
    return decode_body(raw or (b"{}" if optional else b""), decoder)


def _account_id(request: web.Request) -> str:
    """The path's account id, also bound to every log line of this request."""
    account_id = request.match_info["account_id"]
    bind_log_context(account_id=account_id)
    return account_id


def _cursor_mac(account_id: bytes) -> bytes:
    return hmac.new(_CURSOR_KEY, account_id, hashlib.sha256).digest()[:_CURSOR_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def issue_cursor(account_id: str) -> str:
    """The opaque `next_cursor` for a page ending before `account_id`: id and MAC, url-safe."""
    raw = account_id.encode("utf-8", "surrogatepass")
    return f"{_b64(raw)}.{_b64(_cursor_mac(raw))}"


def read_cursor(cursor: str) -> str | None:
    """The account id inside a cursor this process issued, or None for any other text."""
    encoded, dot, mac = cursor.partition(".")
    if not dot or len(cursor) > 2 * _MAX_ID + 64:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling: base64's spare bits would let one cursor have many forms.
    if _b64(raw) != encoded or _b64(given) != mac:
        return None
    if not hmac.compare_digest(given, _cursor_mac(raw)):
        return None
    return raw.decode("utf-8", "surrogatepass")


def _command_id(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return f"op:{new_event_id()}"
    # The key becomes part of an event id in the log: bounded, and printable ASCII as
    # /openapi.json says (bytes that are not UTF-8 reach us as surrogates, refused here too).
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_header",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters",
            field="Idempotency-Key",
        )
    return f"op:{key}"


async def _submit(request: web.Request, rt: Runtime, inp: Input) -> bool:
    (decision,) = await rt.engine.submit(
        [inp], source="operator", correlation_id=request_id(request)
    )
    return decision.duplicate


@routes.get("/v1/summary")
async def summary(request: web.Request) -> web.Response:
    rt = _runtime(request)
    projection = rt.live.projection
    app_state = projection.application
    # Kept by the projection as accounts change: no scan of the accounts or enrolments here.
    progress = projection.wave_progress()
    return web.json_response(
        {
            "migration_enabled": app_state.migration_enabled,
            "enabled_at": msgspec.to_builtins(app_state.enabled_at),  # "...Z", as every time
            "funnel": projection.funnel(),
            "waves": {wave: p.enrolled for wave, p in progress.items()},
            "wave_progress": {
                wave: {
                    "enrolled": p.enrolled,
                    "waiting": p.waiting,
                    "static": p.states["static"],
                    "stalled": p.states["stalled"],
                    "states": p.states,
                    "first_auth_to_static_seconds": {
                        "median": _rounded(p.static_seconds_median),
                        "p90": _rounded(p.static_seconds_p90),
                    },
                }
                for wave, p in progress.items()
            },
            "position": rt.live.position,
            "role": rt.role,
        }
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@routes.get("/v1/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    rt = _runtime(request)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_query", "limit must be an integer", field="limit") from None
    if not 1 <= limit <= _MAX_PAGE:
        raise ApiError(400, "invalid_query", f"limit must be 1..{_MAX_PAGE}", field="limit")
    state = q.get("state") or None
    if state is not None and state not in STATES:
        # An unknown state would silently match nothing: a typo looks like an empty funnel.
        raise ApiError(
            400, "invalid_query", f"state must be one of {', '.join(STATES)}", field="state"
        )
    cursor = q.get("cursor") or None
    after = read_cursor(cursor) if cursor is not None else None
    if cursor is not None and after is None:
        raise ApiError(
            400, "invalid_query", "cursor must be a next_cursor this daemon returned",
            field="cursor",
        )  # fmt: skip
    page = rt.live.projection.list_accounts(
        state=state, wave=q.get("wave") or None, limit=limit, after=after
    )
    next_cursor = issue_cursor(page.next_cursor) if page.next_cursor is not None else None
    shown = rt.live.projection.with_enrollment
    return web.json_response(
        {
            "accounts": [describe_account(shown(a), a.account_id) for a in page.accounts],
            "next_cursor": next_cursor,
        }
    )


@routes.get("/v1/accounts/{account_id}")
async def get_account(request: web.Request) -> web.Response:
    rt = _runtime(request)
    account_id = _account_id(request)
    state = rt.live.projection.account(account_id)
    if state is None:
        raise ApiError(404, "unknown_account", f"no account {account_id!r} in the log")
    return web.json_response(
        describe_account(rt.live.projection.with_enrollment(state), account_id)
    )


@routes.get("/v1/accounts/{account_id}/timeline")
async def get_timeline(request: web.Request) -> web.Response:
    rt = _runtime(request)
    account_id = _account_id(request)
    records = [r async for r in rt.store.read_stream(account_stream(account_id))]
    if not records:
        raise ApiError(404, "unknown_account", f"no account {account_id!r} in the log")
    return web.json_response(
        {"account_id": account_id, "timeline": timeline_as_json(timeline(records, account_id))}
    )


@routes.post("/v1/migration/enable")
async def enable_migration(request: web.Request) -> web.Response:
    rt = _runtime(request)
    body = await _body(request, rt, _enable_decoder, optional=True)
    inp = EnableMigration(
        input_id=_command_id(request), occurred_at=datetime.now(UTC),
        actor=body.actor, reason=body.reason,
    )  # fmt: skip
    duplicate = await _submit(request, rt, inp)
    return web.json_response(
        {
            "duplicate": duplicate,
            "migration_enabled": rt.live.projection.application.migration_enabled,
        }
    )


@routes.post("/v1/enrollments")
async def enroll(request: web.Request) -> web.Response:
    rt = _runtime(request)
    body = await _body(request, rt, _enroll_decoder)
    inp = Enroll(
        input_id=_command_id(request), occurred_at=datetime.now(UTC),
        account_ids=tuple(dict.fromkeys(body.account_ids)), wave=body.wave,
        policy=body.policy, actor=body.actor, reason=body.reason,
    )  # fmt: skip
    duplicate = await _submit(request, rt, inp)
    return web.json_response(
        {"duplicate": duplicate, "wave": body.wave, "enrolled": len(inp.account_ids)},
        status=200 if duplicate else 201,
    )


_ACCOUNT_COMMANDS = {"reset": ResetAccount, "exclude": ExcludeAccount, "resolve": MarkResolved}


@routes.post("/v1/accounts/{account_id}/{command:reset|exclude|resolve}")
async def account_command(request: web.Request) -> web.Response:
    rt = _runtime(request)
    account_id = _account_id(request)
    body = await _body(request, rt, _account_command_decoder)
    if rt.live.projection.account(account_id) is None:
        # A command is not a way in: recording it would make up a `dynamic` account that the
        # funnel and metrics would then count (enrolment is how accounts enter the migration).
        raise ApiError(404, "unknown_account", f"no account {account_id!r} in the log")
    command = _ACCOUNT_COMMANDS[request.match_info["command"]]
    inp = command(
        input_id=_command_id(request), account_id=account_id,
        occurred_at=datetime.now(UTC), actor=body.actor, reason=body.reason,
    )  # fmt: skip
    duplicate = await _submit(request, rt, inp)
    log.info("operator.account_command", command=request.match_info["command"], duplicate=duplicate)
    state = rt.live.projection.account(account_id)
    if state is not None:
        state = rt.live.projection.with_enrollment(state)
    return web.json_response(
        {"duplicate": duplicate, "account": describe_account(state, account_id)}
    )


@routes.get("/v1/ip-addresses")
async def ip_addresses(request: web.Request) -> web.Response:
    rt = _runtime(request)
    fmt = request.query.get("format", "json")
    if fmt not in allowlist.FORMATS:
        raise ApiError(
            400,
            "invalid_query",
            f"format must be one of {', '.join(allowlist.FORMATS)}",
            field="format",
        )
    text = allowlist.render_observed(rt.live.projection.application.ip_lists, fmt)
    content_type = "application/json" if fmt == "json" else "text/plain"
    return web.Response(text=text, content_type=content_type)
