"""The operator API (bearer `operator_token`): read the migration, and steer it.

Commands are inputs like any other: recorded in the log before they are answered. An
`Idempotency-Key` header makes a command safe to retry; without it every call is a new command.
"""

from __future__ import annotations

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
from daemon.http.context import RUNTIME, Runtime, describe_account, storage_guard
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
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID)]
_MAX_PAGE = 1000


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


_enable_decoder = msgspec.json.Decoder(EnableBody)
_enroll_decoder = msgspec.json.Decoder(EnrollBody)
_account_command_decoder = msgspec.json.Decoder(AccountCommandBody)


async def _body(request: web.Request, rt: Runtime, decoder: msgspec.json.Decoder[_T]) -> _T:
    raw = await read_limited_body(request, rt.config.http.max_body_bytes)
    return decode_body(raw or b"{}", decoder)


def _account_id(request: web.Request) -> str:
    """The path's account id, also bound to every log line of this request."""
    account_id = request.match_info["account_id"]
    bind_log_context(request, account_id=account_id)
    return account_id


def _plausible_id(text: str) -> bool:
    """Text an account id could be: not too long, no control or undecodable characters.

    The query parser turns bytes that are not UTF-8 into U+FFFD (or surrogates): such a cursor
    was never handed out, and would silently page from an arbitrary place.
    """
    return len(text) <= _MAX_ID and not any(
        ch == "\ufffd" or ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff" for ch in text
    )


def _command_id(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key and any("\ud800" <= ch <= "\udfff" for ch in key):
        # Bytes that are not UTF-8 reach us as surrogates, which no event id can hold.
        raise ApiError(
            400, "invalid_header", "Idempotency-Key must be UTF-8 text", field="Idempotency-Key"
        )
    return f"op:{key}" if key else f"op:{new_event_id()}"


async def _submit(request: web.Request, rt: Runtime, inp: Input) -> bool:
    with storage_guard():
        (decision,) = await rt.engine.submit(
            [inp], source="operator", correlation_id=request_id(request)
        )
    return decision.duplicate


@routes.get("/v1/summary")
async def summary(request: web.Request) -> web.Response:
    rt = _runtime(request)
    app_state = rt.live.projection.application
    return web.json_response(
        {
            "migration_enabled": app_state.migration_enabled,
            "enabled_at": app_state.enabled_at.isoformat() if app_state.enabled_at else None,
            "funnel": rt.live.projection.funnel(),
            "waves": app_state.waves(),
            "position": rt.live.position,
        }
    )


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
    if cursor is not None and not _plausible_id(cursor):
        raise ApiError(
            400, "invalid_query", "cursor must be an account id as returned in next_cursor",
            field="cursor",
        )  # fmt: skip
    page = rt.live.projection.list_accounts(
        state=state, wave=q.get("wave") or None, limit=limit, after=cursor
    )
    return web.json_response(
        {
            "accounts": [describe_account(a, a.account_id) for a in page.accounts],
            "next_cursor": page.next_cursor,
        }
    )


@routes.get("/v1/accounts/{account_id}")
async def get_account(request: web.Request) -> web.Response:
    rt = _runtime(request)
    account_id = _account_id(request)
    state = rt.live.projection.account(account_id)
    if state is None:
        raise ApiError(404, "unknown_account", f"no account {account_id!r} in the log")
    return web.json_response(describe_account(state, account_id))


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
    body = await _body(request, rt, _enable_decoder)
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
