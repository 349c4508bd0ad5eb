"""HTTP routes of the sandbox: the provider's v2 management API, a thin v3 grants list, and the
sandbox-only control endpoints under ``/sandbox/``.

Provider routes (Basic auth, client secret as user, empty password; errors ``{"message","type"}``):
``GET /a/{client_id}/accounts`` (limit/offset), ``GET|PUT|DELETE /a/{client_id}/accounts/{id}``,
``POST /a/{client_id}/accounts/{id}/downgrade|upgrade``, ``GET /a/{client_id}/ip_addresses``.
A downgrade/upgrade answers 200 with each body of ``action_bodies`` in turn; the account list's
pages hold at most ``page_cap`` accounts when that is set.
The static list's real endpoint is undocumented; the sandbox serves it at
``GET /a/{client_id}/ip_addresses?environment=static``, sharing the endpoint's 10/hour budget.
With ``stopped_account_refuses`` set, PUT/downgrade/upgrade of an account whose sync is stopped
answer the provider's "sync has been stopped" error (off by default;
docs/provider.md#what-is-verified-and-what-is-assumed).
Control routes (no auth, loopback only): ``POST /sandbox/accounts`` ``{"count"|"emails"}``,
``POST /sandbox/accounts/{id}/auth``, ``POST /sandbox/accounts/{id}/break``
``{"kind": "invalid"|"sync_error"}``, ``POST /sandbox/static-ips`` ``{"enabled"}``,
``GET|POST /sandbox/webhooks`` ``{"url","version"}``, ``GET|PUT /sandbox/faults``,
``GET /sandbox/stats``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from .accounts import Account, AccountBook
from .settings import ActionBody, BreakKind, SandboxSettings
from .webhooks import Destination, WebhookSender


class Sandbox(Protocol):
    """What the routes need of the emulated provider: its state and its operations.

    `SandboxProvider` is the one implementation; typing the routes against this rather than the
    class keeps the dependency one way (the provider serves these routes, they never import it).
    """

    settings: SandboxSettings
    book: AccountBook
    sender: WebhookSender

    def api_fault(self) -> str | None: ...
    def next_action_body(self) -> ActionBody: ...
    def refuses(self, call: str, account: Account) -> bool: ...
    def ip_rate_check(self) -> float | None: ...
    def ip_list(self, environment: str) -> tuple[list[str], int]: ...
    def create_accounts(self, count: int = 0, emails: list[str] | None = None) -> list[Account]: ...
    def authenticate(self, account_id: str) -> str: ...
    def break_account(self, account_id: str, kind: BreakKind = "invalid") -> None: ...
    def downgrade(self, account_id: str) -> None: ...
    def upgrade(self, account_id: str) -> None: ...
    def delete(self, account_id: str) -> None: ...
    def enable_static_ips(self, enabled: bool = True) -> None: ...
    async def register_webhook(self, url: str, version: int | None = None) -> Destination: ...
    def stats(self) -> dict[str, Any]: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROVIDER_KEY: web.AppKey[Sandbox] = web.AppKey("sandbox_provider")


def error(
    status: int, message: str, kind: str = "invalid_request_error", **headers: str
) -> web.Response:
    return web.json_response({"message": message, "type": kind}, status=status, headers=headers)


def _provider(request: web.Request) -> Sandbox:
    return request.app[PROVIDER_KEY]


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _ = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user


@web.middleware
async def provider_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, unknown-application and injected API faults for the provider routes."""
    sandbox = _provider(request)
    path = request.path
    if path.startswith("/a/"):
        if _basic_user(request.headers.get("Authorization", "")) != sandbox.settings.client_secret:
            return error(401, "Could not verify access credential.", "api_error")
        if request.match_info.get("client_id") != sandbox.settings.client_id:
            return error(404, "No application found for this client id.")
    elif path.startswith("/v3/"):
        if request.headers.get("Authorization", "") != f"Bearer {sandbox.settings.client_secret}":
            return web.json_response(
                {
                    "request_id": str(uuid.uuid4()),
                    "error": {"type": "unauthorized", "message": "Unauthorized"},
                },
                status=401,
            )
    else:
        return await handler(request)
    fault = sandbox.api_fault()
    if fault == "429":
        return error(
            429,
            "Too many requests",
            "api_error",
            **{"X-RateLimit-Limit": "500", "X-RateLimit-Reset": "1"},
        )
    if fault == "5xx":
        return error(503, "Service temporarily unavailable", "api_error")
    if fault == "timeout":
        await asyncio.sleep(sandbox.settings.faults.api_timeout_seconds)
    return await handler(request)


def _account_or_404(request: web.Request) -> Any:
    acct = _provider(request).book.accounts.get(request.match_info["account_id"])
    if acct is None:
        raise web.HTTPNotFound(
            text='{"message": "Couldn\'t find account", "type": "invalid_request_error"}',
            content_type="application/json",
        )
    return acct


STOPPED_MESSAGE = (
    "This action can't be performed because the account's sync has been stopped. "
    "Please contact support@nylas.com to resume sync."
)


def _refused(request: web.Request, call: str) -> web.Response | None:
    """The stopped-account refusal for ``call``, if the sandbox is set to apply it here."""
    sandbox = _provider(request)
    if sandbox.refuses(call, _account_or_404(request)):
        return error(sandbox.settings.stopped_account_status, STOPPED_MESSAGE)
    return None


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return max(0, int(request.query.get(name, default)))
    except ValueError:
        raise web.HTTPBadRequest(
            text=f'{{"message": "{name} must be an integer", "type": "invalid_request_error"}}',
            content_type="application/json",
        ) from None


async def list_accounts(request: web.Request) -> web.Response:
    sandbox = _provider(request)
    limit = _int_param(request, "limit", 100)
    if sandbox.settings.page_cap is not None:
        limit = min(limit, sandbox.settings.page_cap)
    offset = _int_param(request, "offset", 0)
    accounts = sandbox.book.page(limit, offset)
    return web.json_response([a.as_json() for a in accounts])


async def get_account(request: web.Request) -> web.Response:
    return web.json_response(_account_or_404(request).as_json())


async def update_account(request: web.Request) -> web.Response:
    acct = _account_or_404(request)
    if (refusal := _refused(request, "update")) is not None:
        return refusal
    try:
        body = await request.json()
    except ValueError:
        return error(400, "Body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
        return error(400, "metadata must be an object")
    if "metadata" in body:
        acct.metadata = body["metadata"]
    return web.json_response(acct.as_json())


async def delete_account(request: web.Request) -> web.Response:
    _account_or_404(request)
    _provider(request).delete(request.match_info["account_id"])
    return web.json_response({"success": True})


async def downgrade(request: web.Request) -> web.StreamResponse:
    if (refusal := _refused(request, "downgrade")) is not None:
        return refusal
    _provider(request).downgrade(request.match_info["account_id"])
    return await _action_answer(request)


async def upgrade(request: web.Request) -> web.StreamResponse:
    if (refusal := _refused(request, "upgrade")) is not None:
        return refusal
    _provider(request).upgrade(request.match_info["account_id"])
    return await _action_answer(request)


async def _action_answer(request: web.Request) -> web.StreamResponse:
    """The 2xx answer to a downgrade/upgrade done, in the body variant whose turn it is."""
    sandbox = _provider(request)
    acct = _account_or_404(request)
    match sandbox.next_action_body():
        case "success":
            return web.json_response({"success": True})
        case "success_string":
            return web.json_response({"success": "true"})
        case "extra_fields":
            return web.json_response(
                {"success": True, "request_id": str(uuid.uuid4()), "account_id": acct.id}
            )
        case "account":
            return web.json_response(acct.as_json())
        case "empty":
            return web.Response(status=200)
        case "unreadable":
            # The status and part of the body, then the connection drops.
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.content_length = 64
            await response.prepare(request)
            await response.write(b'{"succ')
            if request.transport is not None:
                request.transport.close()
            return response


async def ip_addresses(request: web.Request) -> web.Response:
    sandbox = _provider(request)
    environment = request.query.get("environment", "dynamic")
    if environment not in ("dynamic", "static"):
        return error(400, "environment must be dynamic or static")
    wait = sandbox.ip_rate_check()
    if wait is not None:
        return error(
            429,
            "Too many requests to ip_addresses",
            "api_error",
            **{
                "X-RateLimit-Limit": str(sandbox.settings.ip_rate_limit),
                "X-RateLimit-Reset": str(max(1, math.ceil(wait))),
            },
        )
    ips, updated_at = sandbox.ip_list(environment)
    return web.json_response({"ip_addresses": ips, "updated_at": updated_at})


async def v3_grants(request: web.Request) -> web.Response:
    limit = min(_int_param(request, "limit", 10), 200)
    offset = _int_param(request, "offset", 0)
    grants = []
    for acct in _provider(request).book.page(limit, offset):
        grants.append(
            {
                "id": acct.id,
                "provider": acct.provider,
                "account_id": acct.id,
                "email": acct.email,
                "grant_status": "valid" if acct.sync_state == "running" else "invalid",
                "created_at": 0,
                "updated_at": int(acct.last_auth_at or 0),
            }
        )
    return web.json_response({"request_id": str(uuid.uuid4()), "data": grants})


# -- sandbox control ---------------------------------------------------------------------------


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def control_create_accounts(request: web.Request) -> web.Response:
    body = await _json(request)
    created = _provider(request).create_accounts(int(body.get("count", 0)), body.get("emails"))
    return web.json_response([a.as_json() for a in created], status=201)


async def control_auth(request: web.Request) -> web.Response:
    acct = _account_or_404(request)
    outcome = _provider(request).authenticate(acct.id)
    return web.json_response({"outcome": outcome, "account": acct.as_json(), "env": acct.env})


async def control_break(request: web.Request) -> web.Response:
    acct = _account_or_404(request)
    kind = (await _json(request)).get("kind", "invalid")
    if kind not in ("invalid", "sync_error"):
        raise web.HTTPBadRequest(text="kind must be invalid or sync_error")
    _provider(request).break_account(acct.id, kind)
    return web.json_response({"account": acct.as_json(), "broken": acct.broken})


async def control_static_ips(request: web.Request) -> web.Response:
    body = await _json(request)
    _provider(request).enable_static_ips(bool(body.get("enabled", True)))
    return web.json_response({"static_ips_enabled": _provider(request).settings.static_ips_enabled})


async def control_register_webhook(request: web.Request) -> web.Response:
    body = await _json(request)
    if not isinstance(body.get("url"), str):
        raise web.HTTPBadRequest(text="url is required")
    dest = await _provider(request).register_webhook(body["url"], body.get("version"))
    return web.json_response(dest.as_json(), status=201)


async def control_list_webhooks(request: web.Request) -> web.Response:
    dests = _provider(request).sender.destinations.values()
    return web.json_response([d.as_json() for d in dests])


async def control_faults(request: web.Request) -> web.Response:
    faults = _provider(request).settings.faults
    if request.method == "PUT":
        try:
            faults.update(await _json(request))
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(faults.as_dict())


async def control_stats(request: web.Request) -> web.Response:
    return web.json_response(_provider(request).stats())


def build_app(sandbox: Sandbox) -> web.Application:
    """The aiohttp application serving ``sandbox``."""
    app = web.Application(middlewares=[provider_guard])
    app[PROVIDER_KEY] = sandbox
    r = app.router
    r.add_get("/a/{client_id}/accounts", list_accounts)
    r.add_get("/a/{client_id}/accounts/{account_id}", get_account)
    r.add_put("/a/{client_id}/accounts/{account_id}", update_account)
    r.add_delete("/a/{client_id}/accounts/{account_id}", delete_account)
    r.add_post("/a/{client_id}/accounts/{account_id}/downgrade", downgrade)
    r.add_post("/a/{client_id}/accounts/{account_id}/upgrade", upgrade)
    r.add_get("/a/{client_id}/ip_addresses", ip_addresses)
    r.add_get("/v3/grants", v3_grants)
    r.add_post("/sandbox/accounts", control_create_accounts)
    r.add_post("/sandbox/accounts/{account_id}/auth", control_auth)
    r.add_post("/sandbox/accounts/{account_id}/break", control_break)
    r.add_post("/sandbox/static-ips", control_static_ips)
    r.add_post("/sandbox/webhooks", control_register_webhook)
    r.add_get("/sandbox/webhooks", control_list_webhooks)
    r.add_get("/sandbox/faults", control_faults)
    r.add_put("/sandbox/faults", control_faults)
    r.add_get("/sandbox/stats", control_stats)
    return app
