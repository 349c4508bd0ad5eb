"""Hostile input against the real daemon on 127.0.0.1: every refusal is the documented answer.

One daemon (real SQLite log, real secrets) serves the whole module. Each row of the table sends
raw bytes on a fresh connection and checks what README.md promises: the status, the error code
and field, the JSON error shape with an `X-Request-Id`, no request bytes or secrets echoed, the
log's length (nothing appended for a refusal; one `InputQuarantined` for a correctly signed body
that cannot be read) and that `/healthz` still answers afterwards.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from daemon.http.operator import issue_cursor, read_cursor
from tests.daemon.conftest import DaemonSetup, RunningDaemon, new_setup, run_daemon, v2_body

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LIMIT = 64 * 1024  # [http] max_body_bytes of this daemon: oversized rows stay cheap
WH, AE = "/webhooks/nylas", "/v1/auth-events"
ANY = object()  # a row that does not pin the field
AT = "2026-01-02T03:04:05Z"


@dataclass(frozen=True)
class Keys:
    """What a row needs to build its request: the daemon's secrets and a signer."""

    op: str
    auth: str
    webhook_secret: str

    def sign(self, body: bytes, secret: str | None = None) -> str:
        key = (secret or self.webhook_secret).encode()
        return hmac.new(key, body, hashlib.sha256).hexdigest()


def request(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    chunked: bool = False,
    length: int | None = None,
) -> bytes:
    """A raw HTTP/1.1 request closing its connection, with Content-Length (or chunked)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: staticipd.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        step = 4096
        body = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
            for i in range(0, len(body), step)
        )
        body += b"0\r\n\r\n"
    elif body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Row:
    """One hostile request and its documented answer."""

    name: str
    build: Callable[[Keys], bytes | list[bytes]]  # several parts are sent with a pause between
    status: int
    code: str | None = None
    field: object = ANY
    appends: int = 0  # events the log gains: 1 only for a quarantined signed body
    secrets_in_request: bool = False  # the request carries a real secret that must not come back


def auth(k: Keys) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {k.auth}"), ("Content-Type", "application/json")]


def op(k: Keys) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {k.op}"), ("Content-Type", "application/json")]


def signed(body: bytes, *extra: tuple[str, str]) -> Callable[[Keys], bytes]:
    return lambda k: request("POST", WH, [("X-Nylas-Signature", k.sign(body)), *extra], body)


def auth_event(body: bytes, *extra: tuple[str, str]) -> Callable[[Keys], bytes]:
    return lambda k: request("POST", AE, [*auth(k), *extra], body)


def event_with(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"account_id": "acc-hostile", "occurred_at": AT}
    for key, value in fields.items():
        if value is _MISSING:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def operator_post(path: str, body: bytes, *extra: tuple[str, str]) -> Callable[[Keys], bytes]:
    return lambda k: request("POST", path, [*op(k), *extra], body)


def operator_get(path: str, *extra: tuple[str, str]) -> Callable[[Keys], bytes]:
    return lambda k: request("GET", path, [*op(k), *extra])


def raw(data: bytes | Callable[[Keys], bytes]) -> Callable[[Keys], bytes]:
    return data if callable(data) else (lambda k: data)


_MISSING = object()
DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
V2 = v2_body("acc-hostile", "account.running", date=1_700_000_000)
HUGE_INT = b"1" + b"0" * 400
TEN_KB = "x" * 10_000
BAD_UTF8 = b'{"account_id": "\xff\xfe", "occurred_at": "' + AT.encode() + b'"}'


def v2_with_date(date: bytes) -> bytes:
    """A v2 body whose single account delta has `date` written as these raw JSON bytes."""
    return V2.replace(b'"date": 1700000000', b'"date": ' + date)


def other_secret_signature(body: bytes) -> Callable[[Keys], bytes]:
    return lambda k: request(
        "POST", WH, [("X-Nylas-Signature", k.sign(body, "not-the-secret"))], body
    )


def cursor_under_another_key(account_id: str) -> str:
    """A cursor of the right form made with a key this daemon never had."""
    raw_id = account_id.encode()
    mac = hmac.new(b"k" * 32, raw_id, hashlib.sha256).digest()[:16]
    enc = base64.urlsafe_b64encode
    return f"{enc(raw_id).rstrip(b'=').decode()}.{enc(mac).rstrip(b'=').decode()}"


def tampered_cursor() -> str:
    """A cursor this process issued with one character of its MAC changed."""
    good = issue_cursor("acc-hostile-0")
    return good[:-1] + ("A" if good[-1] != "A" else "B")


def over_long_header(k: Keys) -> bytes:
    planted = f"Bearer {k.op}" + "P" * 9000
    return request("GET", "/v1/summary", [("Authorization", planted)])


ROWS: list[Row] = [
    # --- webhook signatures -------------------------------------------------------------------
    Row("webhook unsigned", raw(request("POST", WH, [], V2)), 401, "bad_signature"),
    Row("webhook signed with another secret", other_secret_signature(V2), 401, "bad_signature"),
    Row(
        "webhook signature prefix",
        lambda k: request("POST", WH, [("X-Nylas-Signature", k.sign(V2)[:32])], V2),
        401,
        "bad_signature",
    ),
    Row(
        "webhook signature header twice (right and wrong)",
        lambda k: request(
            "POST", WH, [("X-Nylas-Signature", k.sign(V2)), ("X-Nylas-Signature", "0" * 64)], V2
        ),
        401,
        "bad_signature",
    ),
    Row(
        "webhook signature header twice (same value)",
        lambda k: request(
            "POST", WH, [("X-Nylas-Signature", k.sign(V2)), ("X-Nylas-Signature", k.sign(V2))], V2
        ),
        401,
        "bad_signature",
    ),
    Row(
        "webhook signature in the query string",
        lambda k: request("POST", f"{WH}?X-Nylas-Signature={k.sign(V2)}", [], V2),
        401,
        "bad_signature",
    ),
    Row(
        "webhook unsigned, gzip declared, plain body",
        raw(request("POST", WH, [("Content-Encoding", "gzip")], V2)),
        401,
        "bad_signature",
    ),
    Row(
        "webhook unsigned, br declared",
        raw(request("POST", WH, [("Content-Encoding", "br")], V2)),
        401,
        "bad_signature",
    ),
    Row(
        "webhook unsigned, unknown coding, chunked",
        raw(request("POST", WH, [("Content-Encoding", "x-garbage")], V2, chunked=True)),
        401,
        "bad_signature",
    ),
    Row("webhook unsigned, not UTF-8", raw(request("POST", WH, [], b"\xff\xfe\x00")), 401),
    Row("webhook unsigned, deep nesting", raw(request("POST", WH, [], DEEP_ARRAY)), 401),
    # --- webhook bodies, correctly signed: 400 naming the field, kept once ----------------------
    Row(
        "webhook signed, gzip declared, plain body",
        signed(V2 + b" ", ("Content-Encoding", "gzip")),
        400,
        "undecodable_body",
        "Content-Encoding",
        appends=1,
    ),
    Row(
        "webhook signed, unknown coding",
        signed(V2 + b"  ", ("Content-Encoding", "zstd")),
        400,
        "undecodable_body",
        "Content-Encoding",
        appends=1,
    ),
    Row(
        "webhook signed, truncated gzip",
        signed(gzip.compress(V2)[:20], ("Content-Encoding", "gzip")),
        400,
        "undecodable_body",
        "Content-Encoding",
        appends=1,
    ),
    Row("webhook signed, empty", signed(b""), 400, "malformed_body", "$", appends=1),
    Row("webhook signed, not UTF-8", signed(b"\xff\xfe{}"), 400, "malformed_body", "$", 1),
    Row("webhook signed, not JSON", signed(b"deltas=1"), 400, "malformed_body", "$", 1),
    Row("webhook signed, 5000 [", signed(DEEP_ARRAY), 400, "malformed_body", "$", 1),
    Row('webhook signed, 5000 {"a":', signed(DEEP_OBJECT), 400, "malformed_body", "$", 1),
    Row(
        "webhook signed, deltas nested 5000 deep",
        signed(b'{"deltas":' + DEEP_ARRAY + b"}"),
        400,
        "malformed_body",
        "$",
        1,
    ),
    Row(
        "webhook signed, attributes nested 100 deep",
        signed(V2.replace(b'"attributes": null', b'"attributes": ' + b"[" * 100 + b"]" * 100)),
        400,
        "malformed_body",
        "$",
        1,
    ),
    Row("webhook signed, NaN", signed(b'{"deltas": NaN}'), 400, "malformed_body", "$", 1),
    Row(
        "webhook signed, date 1e400",
        signed(v2_with_date(b"1e400")),
        400,
        "malformed_body",
        "$",
        1,
    ),
    Row(
        "webhook signed, date 10**400",
        signed(v2_with_date(HUGE_INT)),
        400,
        "malformed_body",
        "$.deltas[0].date",
        1,
    ),
    Row(
        "webhook signed, date Infinity",
        signed(v2_with_date(b"Infinity")),
        400,
        "malformed_body",
        "$",
        1,
    ),
    Row(
        "webhook signed, deltas not an array",
        signed(b'{"deltas": {}}'),
        400,
        "malformed_body",
        "$.deltas",
        1,
    ),
    Row("webhook signed, an array", signed(b"[]"), 400, "malformed_body", "$", appends=1),
    Row(
        "webhook over the limit, declared",
        raw(request("POST", WH, [], length=LIMIT + 1)),
        413,
        "payload_too_large",
    ),
    Row(
        "webhook over the limit, chunked",
        raw(request("POST", WH, [], b" " * (LIMIT + 10), chunked=True)),
        413,
        "payload_too_large",
    ),
    Row(
        "webhook challenge missing", raw(request("GET", WH)), 400, "missing_challenge", "challenge"
    ),
    Row("webhook PUT", raw(request("PUT", WH, [], V2)), 405, "method_not_allowed"),
    # --- auth events: the token --------------------------------------------------------------
    Row(
        "auth event without a token",
        raw(request("POST", AE, [], event_with())),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with the operator token",
        lambda k: request("POST", AE, [("Authorization", f"Bearer {k.op}")], event_with()),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with a prefix of the token",
        lambda k: request("POST", AE, [("Authorization", f"Bearer {k.auth[:-1]}")], event_with()),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with the token under Basic",
        lambda k: request("POST", AE, [("Authorization", f"Basic {k.auth}")], event_with()),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with the token in the query string",
        lambda k: request("POST", f"{AE}?access_token={k.auth}&token={k.auth}", [], event_with()),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with Authorization twice",
        lambda k: request(
            "POST", AE, [*auth(k), ("Authorization", f"Bearer {k.auth}")], event_with()
        ),
        401,
        "unauthorized",
    ),
    Row(
        "auth event with a bare Bearer",
        raw(request("POST", AE, [("Authorization", "Bearer ")], event_with())),
        401,
    ),
    Row(
        "auth event, wrong token and an undecodable gzip body",
        raw(
            request(
                "POST", AE, [("Authorization", "Bearer nope"), ("Content-Encoding", "gzip")], b"x"
            )
        ),
        401,
        "unauthorized",
    ),
    # --- auth events: the body ---------------------------------------------------------------
    Row(
        "auth event, gzip declared, plain body",
        auth_event(event_with(), ("Content-Encoding", "gzip")),
        400,
        "undecodable_body",
        "Content-Encoding",
    ),
    Row(
        "auth event, br",
        auth_event(event_with(), ("Content-Encoding", "br")),
        415,
        "unsupported_encoding",
        "Content-Encoding",
    ),
    Row("auth event, empty body", auth_event(b""), 400, "invalid_json", "$"),
    Row("auth event, not JSON", auth_event(b"account_id=a"), 400, "invalid_json", "$"),
    Row("auth event, not UTF-8", auth_event(BAD_UTF8), 400, None, "$"),
    Row("auth event, 5000 [", auth_event(DEEP_ARRAY), 400, None, "$"),
    Row('auth event, 5000 {"a":', auth_event(DEEP_OBJECT), 400, "invalid_json", "$"),
    Row("auth event, NaN", auth_event(b'{"account_id": NaN}'), 400, "invalid_json", "$"),
    Row("auth event, Infinity", auth_event(b'{"account_id": Infinity}'), 400, "invalid_json", "$"),
    Row("auth event, a JSON array", auth_event(b"[]"), 400, "invalid_body", "$"),
    Row("auth event, a JSON string", auth_event(b'"x"'), 400, "invalid_body", "$"),
    Row(
        "auth event, form content type",
        lambda k: request(
            "POST",
            AE,
            [
                ("Authorization", f"Bearer {k.auth}"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"account_id=a&occurred_at=now",
        ),
        400,
        "invalid_json",
        "$",
    ),
    Row(
        "auth event, account_id 1e400",
        auth_event(b'{"account_id": 1e400, "occurred_at": "' + AT.encode() + b'"}'),
        400,
        "invalid_body",
        "$.account_id",
    ),
    Row(
        "auth event, account_id 10**400",
        auth_event(b'{"account_id": ' + HUGE_INT + b', "occurred_at": "' + AT.encode() + b'"}'),
        400,
        "invalid_body",
        "$.account_id",
    ),
    *[
        Row(f"auth event, {name}", auth_event(event_with(**fields)), 400, "invalid_body", where)
        for name, fields, where in [
            ("account_id a number", {"account_id": 7}, "$.account_id"),
            ("account_id null", {"account_id": None}, "$.account_id"),
            ("account_id empty", {"account_id": ""}, "$.account_id"),
            ("account_id 10 KB", {"account_id": TEN_KB}, "$.account_id"),
            ("account_id with NUL", {"account_id": "a\u0000b"}, "$.account_id"),
            ("account_id with a newline", {"account_id": "acc\n"}, "$.account_id"),
            ("account_id an object", {"account_id": {"id": "a"}}, "$.account_id"),
            ("account_id missing", {"account_id": _MISSING}, "$.account_id"),
            ("occurred_at a number", {"occurred_at": 1_700_000_000}, "$.occurred_at"),
            ("occurred_at without offset", {"occurred_at": "2026-01-02T03:04:05"}, "$.occurred_at"),
            ("occurred_at garbage", {"occurred_at": "yesterday"}, "$.occurred_at"),
            ("occurred_at missing", {"occurred_at": _MISSING}, "$.occurred_at"),
            ("event_id a number", {"event_id": 5}, "$.event_id"),
            ("event_id empty", {"event_id": ""}, "$.event_id"),
            ("event_id 10 KB", {"event_id": TEN_KB}, "$.event_id"),
            ("event_id with a tab", {"event_id": "e\t1"}, "$.event_id"),
            ("email a number", {"email": 5}, "$.email"),
            ("provider a list", {"provider": ["google"]}, "$.provider"),
        ]
    ],
    Row(
        "auth event over the limit, declared",
        lambda k: request("POST", AE, auth(k), length=LIMIT + 1),
        413,
        "payload_too_large",
    ),
    Row(
        "auth event over the limit, chunked",
        lambda k: request("POST", AE, auth(k), b" " * (LIMIT + 10), chunked=True),
        413,
        "payload_too_large",
    ),
    Row("auth event GET", lambda k: request("GET", AE, auth(k)), 405, "method_not_allowed"),
    # --- operator API: the token -------------------------------------------------------------
    Row("summary without a token", raw(request("GET", "/v1/summary")), 401, "unauthorized"),
    Row(
        "summary with the auth-events token",
        lambda k: request("GET", "/v1/summary", [("Authorization", f"Bearer {k.auth}")]),
        401,
        "unauthorized",
    ),
    Row(
        "summary with the token in the query string",
        lambda k: request("GET", f"/v1/summary?access_token={k.op}"),
        401,
        "unauthorized",
    ),
    Row(
        "summary with a lower-case prefix of the token",
        lambda k: request("GET", "/v1/summary", [("Authorization", f"bearer {k.op[:8]}")]),
        401,
        "unauthorized",
    ),
    Row(
        "summary DELETE",
        lambda k: request("DELETE", "/v1/summary", op(k)),
        405,
        "method_not_allowed",
    ),
    Row("summary POST", lambda k: request("POST", "/v1/summary", op(k), b"{}"), 405),
    Row(
        "enrollment, wrong token and an undecodable gzip body",
        raw(
            request(
                "POST",
                "/v1/enrollments",
                [("Authorization", "Bearer x"), ("Content-Encoding", "gzip")],
                b"{}",
            )
        ),
        401,
        "unauthorized",
    ),
    # --- operator API: the bodies ------------------------------------------------------------
    Row(
        "enrollment, gzip declared, plain body",
        operator_post(
            "/v1/enrollments", b'{"account_ids":["a"],"wave":"w"}', ("Content-Encoding", "gzip")
        ),
        400,
        "undecodable_body",
        "Content-Encoding",
    ),
    Row(
        "enrollment, br",
        operator_post("/v1/enrollments", b"{}", ("Content-Encoding", "br")),
        415,
        "unsupported_encoding",
        "Content-Encoding",
    ),
    Row(
        "enable, not JSON", operator_post("/v1/migration/enable", b"yes"), 400, "invalid_json", "$"
    ),
    Row("enable, 5000 [", operator_post("/v1/migration/enable", DEEP_ARRAY), 400, None, "$"),
    Row('enable, 5000 {"a":', operator_post("/v1/migration/enable", DEEP_OBJECT), 400, None, "$"),
    Row(
        "enable, actor a number",
        operator_post("/v1/migration/enable", b'{"actor": 5}'),
        400,
        "invalid_body",
        "$.actor",
    ),
    Row(
        "enable, reason a list",
        operator_post("/v1/migration/enable", b'{"reason": []}'),
        400,
        "invalid_body",
        "$.reason",
    ),
    # Not JSON at all, as on every route (only enable's body, all defaults, may be left out).
    Row("enrollment, empty body", operator_post("/v1/enrollments", b""), 400, "invalid_json", "$"),
    *[
        Row(
            f"enrollment, {name}",
            operator_post("/v1/enrollments", json.dumps(body).encode()),
            400,
            "invalid_body",
            where,
        )
        for name, body, where in [
            ("account_ids a string", {"account_ids": "a", "wave": "w"}, "$.account_ids"),
            ("account_ids empty", {"account_ids": [], "wave": "w"}, "$.account_ids"),
            ("account_ids holding a number", {"account_ids": [1], "wave": "w"}, "$.account_ids[0]"),
            (
                "account id with a control",
                {"account_ids": ["a\u0001"], "wave": "w"},
                "$.account_ids[0]",
            ),
            ("account id 10 KB", {"account_ids": ["ok", TEN_KB], "wave": "w"}, "$.account_ids[1]"),
            ("wave missing", {"account_ids": ["a"]}, "$.wave"),
            ("wave a number", {"account_ids": ["a"], "wave": 5}, "$.wave"),
            ("wave with a newline", {"account_ids": ["a"], "wave": "w\n"}, "$.wave"),
            ("policy unknown", {"account_ids": ["a"], "wave": "w", "policy": "bogus"}, "$.policy"),
            ("actor a list", {"account_ids": ["a"], "wave": "w", "actor": []}, "$.actor"),
        ]
    ],
    Row(
        "enrollment, account_ids nested 5000 deep",
        operator_post("/v1/enrollments", b'{"account_ids":' + DEEP_ARRAY + b"}"),
        400,
        "invalid_body",
        "$.account_ids[0]",
    ),
    Row(
        "enrollment, account id 1e400",
        operator_post("/v1/enrollments", b'{"account_ids":[1e400],"wave":"w"}'),
        400,
        "invalid_body",
        "$.account_ids[0]",
    ),
    Row(
        "reset, reason missing",
        operator_post("/v1/accounts/acc-hostile-0/reset", b"{}"),
        400,
        "invalid_body",
        "$.reason",
    ),
    Row(
        "exclude, reason empty",
        operator_post("/v1/accounts/acc-hostile-0/exclude", b'{"reason": ""}'),
        400,
        "invalid_body",
        "$.reason",
    ),
    Row(
        "resolve, reason a number",
        operator_post("/v1/accounts/acc-hostile-0/resolve", b'{"reason": 5}'),
        400,
        "invalid_body",
        "$.reason",
    ),
    Row(
        "reset of an unknown account",
        operator_post("/v1/accounts/nobody/reset", b'{"reason": "r"}'),
        404,
        "unknown_account",
    ),
    Row(
        "enrollment over the limit, chunked",
        lambda k: request("POST", "/v1/enrollments", op(k), b" " * (LIMIT + 10), chunked=True),
        413,
        "payload_too_large",
    ),
    # --- operator API: listings, cursors and limits ------------------------------------------
    *[
        Row(
            f"accounts {shown or query}",
            operator_get(f"/v1/accounts?{query}"),
            400,
            "invalid_query",
            where,
        )
        for query, where, shown in [
            ("limit=-1", "limit", None),
            ("limit=0", "limit", None),
            ("limit=1001", "limit", None),
            ("limit=99999999999999999999999", "limit", None),
            ("limit=" + "9" * 5000, "limit", None),
            ("limit=ten", "limit", None),
            ("limit=1e3", "limit", None),
            ("limit=NaN", "limit", None),
            ("limit=", "limit", None),
            ("state=bogus", "state", None),
            ("cursor=acc-hostile-0", "cursor", None),
            ("cursor=abc.def", "cursor", None),
            ("cursor=.", "cursor", None),
            ("cursor=%ff%fe", "cursor", None),
            ("cursor=" + "Q" * 2000, "cursor", None),
            ("cursor=" + cursor_under_another_key("acc-hostile-0"), "cursor", None),
            # The MAC is this process's own, so not in the name: test ids must be the same in
            # every process that collects them (pytest-xdist's workers).
            ("cursor=" + tampered_cursor(), "cursor", "cursor=<ours, one MAC character changed>"),
        ]
    ],
    Row("account id with NUL", operator_get("/v1/accounts/a%00b"), 404, "unknown_account"),
    Row(
        "timeline of a 5000-character id",
        operator_get("/v1/accounts/" + "z" * 5000 + "/timeline"),
        404,
        "unknown_account",
    ),
    Row(
        "ip addresses in an unknown format",
        operator_get("/v1/ip-addresses?format=xml"),
        400,
        "invalid_query",
        "format",
    ),
    # --- the HTTP parser itself: JSON shape, request id, nothing echoed ----------------------
    Row(
        "over-long header line holding the token",
        over_long_header,
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "over-long request line holding the token",
        lambda k: f"GET /v1/summary?t={k.op}{'R' * 9000} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "request line with a space in the path holding the token",
        lambda k: f"GET /v1/sum mary {k.op} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "method with a control byte",
        raw(b"G\x01T / HTTP/1.1\r\nHost: h\r\n\r\n"),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "TLS on the plain port",
        raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "Content-Length and Transfer-Encoding",
        lambda k: (
            f"POST {AE} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {k.auth}\r\n"
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ).encode(),
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "two different Content-Lengths",
        raw(
            f"POST {WH} HTTP/1.1\r\nHost: h\r\n"
            "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x".encode()
        ),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "bad chunk size in the first packet",
        lambda k: (
            f"POST {AE} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {k.auth}\r\n"
            "Transfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n"
        ).encode(),
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "bad chunk size after the route started reading",
        lambda k: [
            f"POST {AE} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {k.auth}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode(),
            b'5\r\n{"a":\r\nZZ\r\nxx\r\n0\r\n\r\n',
        ],
        400,
        "malformed_request",
        "request",
        secrets_in_request=True,
    ),
    Row(
        "bad chunk size on the webhook route",
        raw(
            f"POST {WH} HTTP/1.1\r\nHost: h\r\n"
            "Transfer-Encoding: chunked\r\n\r\nQ\r\nx\r\n0\r\n\r\n".encode()
        ),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "too many headers",
        raw(
            b"GET /healthz HTTP/1.1\r\nHost: h\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
            + b"\r\n"
        ),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "header name with a space",
        raw(b"GET /healthz HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n"),
        400,
        "malformed_request",
        "request",
    ),
    Row(
        "unknown Transfer-Encoding",
        raw(f"POST {WH} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n{{}}".encode()),
        400,
        "malformed_request",
        "request",
    ),
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


async def exchange(port: int, parts: bytes | list[bytes]) -> Answer:
    """Send the parts (pausing between them) on a new connection; read one answer."""
    chunks = [parts] if isinstance(parts, bytes) else parts
    received = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            for i, chunk in enumerate(chunks):
                if i:
                    await anyio.sleep(0.2)  # the route is reading the body by now
                try:
                    await stream.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break  # answered and closed before the rest: read what came
            while True:
                head, sep, rest = received.partition(b"\r\n\r\n")
                if sep:
                    length = _content_length(head)
                    if length is not None and len(rest) >= length:
                        break
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body, received)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def log_length(setup: DaemonSetup) -> tuple[int, str | None]:
    """How many events the log holds, and the type of the last one."""
    with sqlite3.connect(f"file:{setup.database}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        last = conn.execute("SELECT type FROM events ORDER BY position DESC LIMIT 1").fetchone()
    conn.close()
    return count, last[0] if last else None


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningDaemon]:
    """One daemon for the module, with one enrolled account and a small body limit."""
    setup = new_setup(Path(tmp_path_factory.mktemp("hostile")) / "daemon")
    setup.env["STATICIPD_HTTP__MAX_BODY_BYTES"] = str(LIMIT)
    async with run_daemon(setup) as running:
        status, _ = await running.operator("POST", "/v1/migration/enable", {"reason": "test"})
        assert status == 200
        status, _ = await running.operator(
            "POST", "/v1/enrollments", {"account_ids": ["acc-hostile-0"], "wave": "w"}
        )
        assert status == 201
        yield running


def keys_of(setup: DaemonSetup) -> Keys:
    return Keys(
        op=setup.secret("operator_token"),
        auth=setup.secret("auth_events_token"),
        webhook_secret=setup.secret("webhook_secret"),
    )


def test_the_table_is_large_and_its_names_unique() -> None:
    """The table covers every route and the HTTP layer with at least 60 distinct rows."""
    assert len(ROWS) >= 60
    assert len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_hostile_request_gets_its_documented_answer(hostile: RunningDaemon, row: Row) -> None:
    """A hostile request is refused with the documented status, code and field, as JSON with a
    request id, echoing nothing it sent; the log gains nothing (one quarantined event for a
    correctly signed body that cannot be read) and the daemon still answers /healthz."""
    setup = hostile.setup
    keys = keys_of(setup)
    before, _ = log_length(setup)
    answer = await exchange(hostile.daemon.bound_port or 0, row.build(keys))
    assert answer.status == row.status, answer.raw[:600]
    assert answer.headers.get("x-request-id"), answer.raw[:600]
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.raw[:600]
    error = json.loads(answer.body)["error"]
    assert set(error) == {"code", "message", "field"}
    if row.code is not None:
        assert error["code"] == row.code, error
    if row.field is not ANY:
        assert error["field"] == row.field, error
    if row.status == 400:
        assert error["field"], error
        assert "regex" not in error["message"], error
    if row.status == 405:
        assert answer.headers.get("allow"), answer.raw[:600]
    for secret in setup.all_secret_values():
        assert secret.encode() not in answer.raw
    assert b"Traceback" not in answer.raw
    assert b"P" * 64 not in answer.raw  # the padding planted around a token
    assert b"R" * 64 not in answer.raw
    after, last_type = log_length(setup)
    assert after - before == row.appends
    if row.appends:
        assert last_type == "InputQuarantined"
    async with hostile.http.get("/healthz") as resp:
        assert resp.status == 200


@given(st.text(min_size=1, max_size=512))
def test_a_cursor_it_issued_reads_back_as_its_account(account_id: str) -> None:
    """Whatever the account id, the cursor handed out for it pages from exactly that id."""
    assert read_cursor(issue_cursor(account_id)) == account_id


@given(st.text(max_size=200), st.text(min_size=1, max_size=40))
def test_a_cursor_it_did_not_issue_is_never_read(account_id: str, forged: str) -> None:
    """Made-up text, or an issued cursor with anything changed, never reads as an account."""
    assert read_cursor(forged) is None or forged == issue_cursor(read_cursor(forged) or "")
    issued = issue_cursor(account_id)
    assume(forged != issued)
    assert read_cursor(issued + forged) is None
    assert read_cursor(forged + issued) is None


async def test_a_request_is_answered_while_200_clients_stall(hostile: RunningDaemon) -> None:
    """With 200 connections each stuck half-way through a request, a normal request is still
    answered (within 5 s), and so are the stalled ones' neighbours once they are closed."""
    port = hostile.daemon.bound_port or 0
    partial = f'POST {AE} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{{"acc'.encode()
    stalled = []
    try:
        for i in range(200):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            stalled.append(stream)
            await stream.send(partial if i % 2 else b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Sl")
        with anyio.fail_after(5):  # a liveness bound, not a speed claim
            status, _ = await hostile.operator("GET", "/v1/summary")
            async with hostile.http.get("/healthz") as resp:
                assert (status, resp.status) == (200, 200)
    finally:
        for stream in stalled:
            await stream.aclose()
    async with hostile.http.get("/healthz") as resp:
        assert resp.status == 200
