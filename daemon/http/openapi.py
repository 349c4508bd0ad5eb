"""`GET /openapi.json`: the OpenAPI 3.1 description of every route of the listener.

Built here as a Python dict, so enumerations (states, flags, policies, allowlist formats) come
from the code that checks them and cannot drift. tests/daemon/test_openapi.py checks that every
route of the application is described (and nothing else), and fuzzes the running daemon with
schemathesis against this document: no 500, and every answer's status and body as described.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any, get_args

from aiohttp import web

from daemon import __version__
from daemon.domain import FLAGS, STATES
from daemon.domain.vocabulary import Policy
from daemon.http.operator import MAX_IDEMPOTENCY_KEY
from daemon.provider.allowlist import FORMATS

__all__ = ["document", "routes"]

routes = web.RouteTableDef()

JSON = "application/json"
Doc = dict[str, Any]

_MAX_ID = 512  # as daemon/http/operator.py and ingest.py check


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Doc, description: str) -> Doc:
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        "content": {JSON: {"schema": schema}},
    }


def _text(description: str, media: str = "text/plain") -> Doc:
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        "content": {media: {"schema": {"type": "string"}}},
    }


def _error(description: str) -> Doc:
    return _json(_ref("Error"), description)


_UNAUTHORIZED = _error("Missing or wrong bearer token (`WWW-Authenticate: Bearer`).")
_TOO_LARGE = _error("The body (as sent, or decoded) is over `[http] max_body_bytes`.")
_ENCODING = _error("A `Content-Encoding` other than gzip/deflate, or data that does not decode.")
_UNAVAILABLE = _error(
    "The event log is busy or unavailable, the daemon is stopping, or this instance is a standby"
    " (`standby`: writes go to the leader): retry after `Retry-After`."
)
_READ_UNAVAILABLE = _error(
    "The log, or the snapshot an account is read from, cannot be read now (`unavailable`):"
    " retry after `Retry-After`."
)
_BAD_BODY = _error("Not JSON (`invalid_json`) or a field of the wrong type (`invalid_body`).")
_UNKNOWN_ACCOUNT = _error("No such account in the log (`unknown_account`).")


def _body_errors() -> Doc:
    """What every route that reads a JSON body may also answer."""
    return {
        "400": _BAD_BODY,
        "401": _UNAUTHORIZED,
        "413": _TOO_LARGE,
        "415": _ENCODING,
        "503": _UNAVAILABLE,
    }


_ACCOUNT_ID = {
    "name": "account_id",
    "in": "path",
    "required": True,
    "description": "The account's id, as the provider names it.",
    "schema": {"type": "string", "minLength": 1, "maxLength": _MAX_ID},
    "example": "acc-example",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key twice is one command (the second answer says `duplicate`).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": "^[!-~]+$",
    },
}

_TIME = {"type": ["string", "null"], "format": "date-time"}
_ROLE = {
    "enum": ["leader", "standby"],
    "description": "`leader` takes writes; `standby` follows a PostgreSQL log another leads.",
}

_SCHEMAS: Doc = {
    "Error": {
        "type": "object",
        "description": "Every error answer; never a stack trace.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "description": "Machine-readable, stable."},
                    "message": {"type": "string"},
                    "field": {
                        "type": ["string", "null"],
                        "description": "The body's field (`$.event_id`), query parameter or "
                        "header at fault, when there is one.",
                    },
                },
            }
        },
    },
    "Account": {
        "type": "object",
        "description": "An account's migration as the log tells it (an account the log does not "
        "know reads `state: unknown`).",
        "required": ["account_id", "state"],
        "properties": {
            "account_id": {"type": "string"},
            "state": {"enum": [*STATES, "unknown"]},
            "version": {"type": "integer", "minimum": 0},
            "cycle": {"type": "integer", "minimum": 0},
            "policy": {"enum": [*get_args(Policy), None]},
            "wave": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "flags": {"type": "array", "items": {"enum": list(FLAGS)}},
            "first_auth_at": _TIME,
            "stopped_at": _TIME,
            "second_step_due_at": _TIME,
            "second_step_at": _TIME,
            "static_at": _TIME,
            "stalled_at": _TIME,
            "last_auth_at": _TIME,
            "last_stop_at": _TIME,
            "last_running_at": _TIME,
            "updated_at": _TIME,
            "next_due": _TIME,
            "pending_timers": {"type": "object", "additionalProperties": {"type": "string"}},
            "pending_effects": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Counts": {
        "type": "object",
        "description": "Accounts per migration state (every state present).",
        "required": list(STATES),
        "properties": {s: {"type": "integer", "minimum": 0} for s in STATES},
        "additionalProperties": False,
    },
    "TimelineEntry": {
        "type": "object",
        "required": [
            "position",
            "recorded_at",
            "occurred_at",
            "event_id",
            "source",
            "type",
            "state_before",
            "state_after",
            "reason",
            "data",
        ],
        "properties": {
            "position": {"type": "integer", "minimum": 1},
            "recorded_at": {"type": "string", "format": "date-time"},
            "occurred_at": _TIME,
            "event_id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "state_before": {"type": "string"},
            "state_after": {"type": "string"},
            "reason": {"type": "string"},
            "data": {"type": "object"},
        },
    },
    "AuthEvent": {
        "type": "object",
        "required": ["account_id", "occurred_at"],
        "properties": {
            "account_id": {"type": "string", "minLength": 1, "maxLength": _MAX_ID},
            "occurred_at": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 with an offset.",
            },
            "event_id": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": _MAX_ID,
                "description": "Makes the call idempotent; reused for another account: 409.",
            },
            "email": {"type": ["string", "null"]},
            "provider": {"type": ["string", "null"]},
        },
    },
    "Enable": {
        "type": "object",
        "properties": {
            "actor": {"type": "string", "default": "operator"},
            "reason": {"type": "string", "default": ""},
        },
    },
    "Enroll": {
        "type": "object",
        "required": ["account_ids", "wave"],
        "properties": {
            "account_ids": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100_000,
                "items": {"type": "string", "minLength": 1, "maxLength": _MAX_ID},
            },
            "wave": {"type": "string", "minLength": 1, "maxLength": _MAX_ID},
            "policy": {"enum": [*get_args(Policy), None]},
            "actor": {"type": "string", "default": "operator"},
            "reason": {"type": "string", "default": ""},
        },
    },
    "AccountCommand": {
        "type": "object",
        "required": ["reason"],
        "properties": {
            "reason": {"type": "string", "minLength": 1, "description": "For the audit."},
            "actor": {"type": "string", "default": "operator"},
        },
    },
    "WebhookAnswer": {
        "type": "object",
        "required": ["recorded", "duplicates", "skipped", "quarantined"],
        "additionalProperties": False,
        "properties": {
            k: {"type": "integer", "minimum": 0}
            for k in ("recorded", "duplicates", "skipped", "quarantined")
        },
    },
}

_OPERATOR: list[Doc] = [{"operatorToken": []}]
_AUTH_EVENTS: list[Doc] = [{"authEventsToken": []}]
_TAG_PROBES, _TAG_INPUTS, _TAG_OPERATOR = "probes", "inputs", "operator"


def _paths() -> Doc:
    json_body = {"required": False, "content": {JSON: {"schema": _ref("Enable")}}}
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": [_TAG_PROBES],
                "summary": "The process is alive.",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "version"],
                            "properties": {
                                "status": {"const": "alive"},
                                "version": {"type": "string"},
                            },
                        },
                        "Alive.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": [_TAG_PROBES],
                "summary": "Log open, writer healthy, projection caught up, accepting, leader.",
                "security": [],
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "503": _json(
                        _ref("Readiness"),
                        "Not ready: `checks` names what is not (`leader` false: a standby).",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": [_TAG_PROBES],
                "summary": "Prometheus text format (README lists the metrics).",
                "security": [],
                "responses": {"200": _text("The metrics.")},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": [_TAG_PROBES],
                "summary": "This document.",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
        "/": {
            "get": {
                "operationId": "statusPage",
                "tags": [_TAG_PROBES],
                "summary": "Status page: the funnel and flagged accounts (aggregate counts only).",
                "security": [],
                "responses": {"200": _text("An HTML page.", "text/html")},
            }
        },
        "/webhooks/nylas": {
            "get": {
                "operationId": "webhookChallenge",
                "tags": [_TAG_INPUTS],
                "summary": "The provider's endpoint check: the challenge echoed as text/plain.",
                "security": [],
                "parameters": [
                    {
                        "name": "challenge",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _text("The challenge, as given."),
                    "400": _error("No `challenge` (`missing_challenge`)."),
                },
            },
            "post": {
                "operationId": "receiveWebhook",
                "tags": [_TAG_INPUTS],
                "summary": "Provider webhooks, v2 (`deltas`) and v3 (`specversion`) bodies.",
                "description": "The signature (hex HMAC-SHA256 of the body as sent, with a "
                "webhook secret) is checked before anything is parsed: a missing or wrong one is "
                "401, whatever the body. 200 once every usable delta is committed.",
                "security": [{"nylasSignature": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "description": 'v2: `{"deltas": [...]}`; v3: a CloudEvents-'
                                "like notification with `specversion`, `type`, `id`, `data`.",
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("WebhookAnswer"), "Committed (deltas counted)."),
                    "400": _error(
                        "Signed but unreadable: nothing usable (`malformed_body`, field named) "
                        "or a Content-Encoding that does not decode (`undecodable_body`)."
                    ),
                    "401": _error("Missing or wrong `X-Nylas-Signature` (`bad_signature`)."),
                    "413": _TOO_LARGE,
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/v1/auth-events": {
            "post": {
                "operationId": "reportAuthEvent",
                "tags": [_TAG_INPUTS],
                "summary": "The application reports that an end user authenticated.",
                "security": _AUTH_EVENTS,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("AuthEvent")}}},
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["duplicate", "account"],
                            "properties": {
                                "duplicate": {"type": "boolean"},
                                "account": _ref("Account"),
                            },
                        },
                        "Committed (or a retry of a recorded `event_id`).",
                    ),
                    **_body_errors(),
                    "409": _error("`event_id` already used for another account."),
                },
            }
        },
        "/v1/summary": {
            "get": {
                "operationId": "summary",
                "tags": [_TAG_OPERATOR],
                "summary": "Funnel per state, waves, log position.",
                "security": _OPERATOR,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["migration_enabled", "enabled_at", "funnel", "waves"],
                            "properties": {
                                "migration_enabled": {"type": "boolean"},
                                "enabled_at": _TIME,
                                "funnel": _ref("Counts"),
                                "waves": {
                                    "type": "object",
                                    "description": "Per wave: its accounts (per state).",
                                    "additionalProperties": {
                                        "anyOf": [
                                            {"type": "integer", "minimum": 0},
                                            {"type": "object"},
                                        ]
                                    },
                                },
                                "position": {"type": "integer", "minimum": 0},
                                "role": _ROLE,
                            },
                        },
                        "The summary.",
                    ),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/accounts": {
            "get": {
                "operationId": "listAccounts",
                "tags": [_TAG_OPERATOR],
                "summary": "Accounts, paged by account id.",
                "security": _OPERATOR,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
                    {"name": "wave", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "A `next_cursor` from an earlier page.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["accounts", "next_cursor"],
                            "properties": {
                                "accounts": {"type": "array", "items": _ref("Account")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "One page.",
                    ),
                    "400": _error(
                        "`limit` not 1..1000, an unknown `state`, or a `cursor` never handed "
                        "out (`invalid_query`, field named)."
                    ),
                    "401": _UNAUTHORIZED,
                    "503": _READ_UNAVAILABLE,
                },
            }
        },
        "/v1/accounts/{account_id}": {
            "get": {
                "operationId": "getAccount",
                "tags": [_TAG_OPERATOR],
                "summary": "One account: state, step times, flags, next due time.",
                "security": _OPERATOR,
                "parameters": [_ACCOUNT_ID],
                "responses": {
                    "200": _json(_ref("Account"), "The account."),
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_ACCOUNT,
                    "503": _READ_UNAVAILABLE,
                },
            }
        },
        "/v1/accounts/{account_id}/timeline": {
            "get": {
                "operationId": "getTimeline",
                "tags": [_TAG_OPERATOR],
                "summary": "Every event of the account, with the state around it and the reason.",
                "security": _OPERATOR,
                "parameters": [_ACCOUNT_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["account_id", "timeline"],
                            "properties": {
                                "account_id": {"type": "string"},
                                "timeline": {"type": "array", "items": _ref("TimelineEntry")},
                            },
                        },
                        "The timeline, oldest first.",
                    ),
                    "401": _UNAUTHORIZED,
                    "404": _UNKNOWN_ACCOUNT,
                    "503": _READ_UNAVAILABLE,
                },
            }
        },
        "/v1/migration/enable": {
            "post": {
                "operationId": "enableMigration",
                "tags": [_TAG_OPERATOR],
                "summary": "Enable the migration for the application.",
                "security": _OPERATOR,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": json_body,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["duplicate", "migration_enabled"],
                            "properties": {
                                "duplicate": {"type": "boolean"},
                                "migration_enabled": {"type": "boolean"},
                            },
                        },
                        "Recorded.",
                    ),
                    **_body_errors(),
                },
            }
        },
        "/v1/enrollments": {
            "post": {
                "operationId": "enroll",
                "tags": [_TAG_OPERATOR],
                "summary": "Enrol accounts in a wave (how accounts enter the migration).",
                "security": _OPERATOR,
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Enroll")}}},
                "responses": {
                    "201": _json(_ref("Enrolled"), "Recorded."),
                    "200": _json(_ref("Enrolled"), "A repeated `Idempotency-Key`: nothing new."),
                    **_body_errors(),
                },
            }
        },
        "/v1/accounts/{account_id}/{command}": {
            "post": {
                "operationId": "accountCommand",
                "tags": [_TAG_OPERATOR],
                "summary": "Reset, exclude or mark resolved one account.",
                "security": _OPERATOR,
                "parameters": [
                    _ACCOUNT_ID,
                    {
                        "name": "command",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["reset", "exclude", "resolve"]},
                    },
                    _IDEMPOTENCY_KEY,
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("AccountCommand")}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["duplicate", "account"],
                            "properties": {
                                "duplicate": {"type": "boolean"},
                                "account": _ref("Account"),
                            },
                        },
                        "Recorded.",
                    ),
                    **_body_errors(),
                    "404": _UNKNOWN_ACCOUNT,
                },
            }
        },
        "/v1/ip-addresses": {
            "get": {
                "operationId": "ipAddresses",
                "tags": [_TAG_OPERATOR],
                "summary": "The provider's IP lists as an allowlist.",
                "security": _OPERATOR,
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"enum": list(FORMATS), "default": "json"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "JSON for `format=json`, text for the others.",
                        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                        "content": {
                            JSON: {"schema": {"type": "object"}},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _error("An unknown `format` (`invalid_query`)."),
                    "401": _UNAUTHORIZED,
                },
            }
        },
    }


@cache
def _document() -> Doc:
    schemas = {
        **_SCHEMAS,
        "Readiness": {
            "type": "object",
            "required": ["ready", "checks", "position"],
            "properties": {
                "ready": {"type": "boolean"},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "position": {"type": "integer", "minimum": 0},
                "role": _ROLE,
                "last_storage_error": {"type": "string"},
            },
        },
        "Enrolled": {
            "type": "object",
            "required": ["duplicate", "wave", "enrolled"],
            "properties": {
                "duplicate": {"type": "boolean"},
                "wave": {"type": "string"},
                "enrolled": {"type": "integer", "minimum": 0},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "staticipd",
            "version": __version__,
            "description": "Moves an application's email accounts into the provider's static IP "
            "environment, keeping an append-only, hash-chained event log. Errors are "
            '`{"error": {"code", "message", "field"}}`; every answer has an `X-Request-Id`.',
        },
        "tags": [
            {"name": _TAG_PROBES, "description": "Probes, metrics and the status page (no auth)."},
            {"name": _TAG_INPUTS, "description": "Provider webhooks and application auth events."},
            {"name": _TAG_OPERATOR, "description": "The operator API (bearer `operator_token`)."},
        ],
        "security": _OPERATOR,
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A value of the `operator_token` secret.",
                },
                "authEventsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A value of the `auth_events_token` secret.",
                },
                "nylasSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Nylas-Signature",
                    "description": "Hex HMAC-SHA256 of the raw body with a `webhook_secret` "
                    "value (docs/provider.md#webhook-signatures).",
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The request's id (the caller's `X-Request-Id` if harmless).",
                    "schema": {"type": "string"},
                }
            },
            "schemas": schemas,
        },
    }


def document() -> Doc:
    """The OpenAPI document, a fresh copy (the caller may change it)."""
    return copy.deepcopy(_document())


@cache
def _encoded() -> bytes:
    return json.dumps(_document(), indent=1).encode()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """The document, no auth: what a client generator (or a fuzzer) reads."""
    return web.Response(body=_encoded(), content_type=JSON)
