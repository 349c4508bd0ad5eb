"""Error answers of the HTTP listener: one JSON shape, the right status, never a stack trace.

Routes raise `HttpError`s (or aiohttp's own `HTTPException`s); `error_answer` answers them
as `{"error": {"code", "message", "field"}}` and turns anything unexpected into a bare 500, and
`begin_request` gives every request an id (`X-Request-Id` in and out, bound in structlog's
contextvars). The listener calls both from its one middleware (daemon/http/frame.py);
`error_middleware` is the two alone, for an app of other routes.

aiohttp runs each request in a task of its own, with a copy of the connection's context, so what
a request binds for its log lines ends with it and never reaches the next request.
"""

from __future__ import annotations

import hmac
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from daemon.http.encoding import (
    DecodedTooLarge,
    UndecodableBody,
    UnsupportedCoding,
    decode_content,
)
from daemon.validation import validation_field

__all__ = [
    "REQUEST_ID_HEADER",
    "ApiError",
    "HttpError",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Standby",
    "Unauthorized",
    "begin_request",
    "bind_log_context",
    "decode_body",
    "decode_limited",
    "error_answer",
    "error_middleware",
    "error_response",
    "json_answer",
    "malformed_request",
    "new_request_id",
    "read_limited_body",
    "read_raw_body",
    "request_id",
    "require_bearer",
    "with_request_id",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
# aiohttp >= 3.12 wants typed request keys; older versions (pyproject allows 3.9) take strings.
_REQUEST_ID_KEY: Any = (
    web.RequestKey("staticipd_request_id", str) if hasattr(web, "RequestKey") else "request_id"
)
# A caller's id is echoed only if it is short and harmless in a header and a log line.
_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_CHUNK = 64 * 1024

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}
# Headers of aiohttp's exceptions worth keeping on the JSON answer.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location")


class HttpError(Exception):
    """An error the client caused or should retry; answered as JSON with `status`."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code or type(self).code
        self.headers = dict(headers or {})


class ApiError(HttpError):
    """Any status and code chosen by the route: `ApiError(401, "bad_signature", "...")`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, field=field, code=code, headers=headers)
        self.status = status


class Unauthorized(HttpError):
    """401: missing or wrong signature or token."""

    status, code = 401, "unauthorized"


class PayloadTooLarge(HttpError):
    """413: the body is over the configured limit."""

    status, code = 413, "payload_too_large"


class ServiceUnavailable(HttpError):
    """503 with Retry-After: storage unavailable or queue full; the sender retries, nothing lost."""

    status, code = 503, "unavailable"

    def __init__(self, message: str = "temporarily unavailable", *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(0, int(retry_after)))})
        self.retry_after = retry_after


class Standby(ServiceUnavailable):
    """503 from a standby (README.md, "Active/standby on PostgreSQL"): another process writes
    the log; send writes to the instance whose `/readyz` is 200."""

    code = "standby"


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The one JSON error shape every route and the middleware answer with."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return json_answer(body, status=status, headers=headers)


def json_answer(
    doc: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`doc` as a JSON response, encoded by msgspec (several times faster than json.dumps)."""
    return web.Response(
        body=_encode(doc), status=status, headers=headers, content_type="application/json"
    )


_encode = msgspec.json.Encoder().encode


def decode_body(raw: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """A JSON body decoded into its type, or 400 naming the field (`$`: not JSON at all)."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        field, reason = validation_field(exc)
        if reason.startswith("Expected `str` matching regex"):
            reason = "must not contain control characters"  # the one pattern ids have (context)
        raise ApiError(400, "invalid_body", reason, field=field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}", field="$") from None
    except RecursionError:
        # msgspec recurses once per level, even through the unknown fields it skips: arrays or
        # objects nested thousands deep end here, not in a 500.
        raise ApiError(400, "invalid_json", "body is nested too deeply", field="$") from None


def request_id(request: web.Request) -> str:
    """The id `begin_request` gave this request."""
    return str(request.get(_REQUEST_ID_KEY, ""))


def bind_log_context(**values: Any) -> None:
    """Put these ids (account id, delivery id, ...) on every later log line of this request,
    the middleware's `http.error` line included (the request's own context: module docstring)."""
    structlog.contextvars.bind_contextvars(**values)


def _incoming_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if given and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """A fresh request id: a per-process random prefix and a counter.

    Unique across restarts, and no syscall per request (uuid4 reads the OS random source).
    """
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


def malformed_request(rid: str, message: str = "malformed HTTP request") -> web.Response:
    """400 `malformed_request` (field `request`): the HTTP message itself cannot be read.

    `message` is ours, never the parser's text: that quotes the request's bytes (a bearer token
    in an over-long header line, for one), which must not travel back or into a log line.
    """
    response = error_response(400, "malformed_request", message, field="request")
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def _from_aiohttp(exc: web.HTTPException) -> web.Response:
    headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
    code = _CODES.get(exc.status, "error")
    # aiohttp's texts ("405: Method Not Allowed") are generic and safe to show; a 400 of its own
    # is about the HTTP message, so it names `request` like the parser's refusals.
    field = "request" if exc.status == 400 else None
    return error_response(exc.status, code, exc.reason, field=field, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def begin_request(request: web.Request) -> str:
    """Give `request` its id (the client's `X-Request-Id` if it is a safe one) and bind it for
    the request's log lines; the id."""
    rid = _incoming_id(request)
    request[_REQUEST_ID_KEY] = rid
    structlog.contextvars.bind_contextvars(request_id=rid)
    return rid


def error_answer(request: web.Request, exc: Exception, rid: str) -> web.StreamResponse:
    """The JSON answer to what a route raised. Raises `exc` again when it is an answer rather
    than an error (a redirect), with the request id on it."""
    if isinstance(exc, HttpError):
        log.info("http.error", status=exc.status, code=exc.code, field=exc.field, path=request.path)
        return error_response(
            exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers
        )
    if isinstance(exc, web.RequestPayloadError):
        # The body's framing broke after the handler started reading it (a bad chunk, a body
        # shorter than its Content-Length): the request is malformed, not our fault.
        log.info("http.error", status=400, code="malformed_request", path=request.path)
        response = malformed_request(rid, "malformed HTTP request body")
        response.force_close()  # the rest of the connection's bytes cannot be trusted
        return response
    if isinstance(exc, ConnectionResetError):
        # The client went away while we read its body: nobody to answer, nothing broken.
        log.info("http.client_gone", path=request.path)
        response = malformed_request(rid, "connection lost while reading the body")
        response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            exc.headers[REQUEST_ID_HEADER] = rid
            raise exc  # redirects and the like are answers, not errors
        log.info("http.error", status=exc.status, path=request.path)
        return _from_aiohttp(exc)
    # Details go to the log under the request id, never to the client.
    log.error(
        "http.unhandled", path=request.path, method=request.method, request_id=rid, exc_info=exc
    )
    return error_response(
        500, "internal_error", f"internal error; quote request id {rid} to the operator"
    )


def with_request_id(response: web.StreamResponse, rid: str) -> web.StreamResponse:
    """`response`, saying the request id (unless its head is already sent)."""
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, bind it for logging, and answer every error as JSON."""
    rid = begin_request(request)
    try:
        response = await handler(request)
    except Exception as exc:
        response = error_answer(request, exc, rid)
    return with_request_id(response, rid)


async def read_raw_body(request: web.Request, limit: int) -> bytes:
    """The body's bytes as sent (any `Content-Encoding` still applied), 413 when over `limit`.

    Refuses by Content-Length before reading a byte, and counts while reading so a chunked
    or lying sender cannot push more than `limit` (+ one chunk) into memory.
    """
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
        # The HTTP parser never yields more than Content-Length: aiohttp's own whole-body read
        # (cheaper per request than reading the stream to its end).
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_limited(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`raw` with its `Content-Encoding` undone: 413 past `limit` decoded bytes, 415 for a
    coding we do not undo, 400 `undecodable_body` for data that is not valid in its coding.

    The decoder stops as soon as the decoded size passes `limit`, so a small compressed
    bomb costs at most `limit` bytes of work (daemon/http/encoding.py).
    """
    try:
        return decode_content(raw, content_encoding, limit)
    except DecodedTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except UnsupportedCoding as exc:
        raise ApiError(415, "unsupported_encoding", str(exc), field="Content-Encoding") from None
    except UndecodableBody as exc:
        raise ApiError(400, "undecodable_body", str(exc), field="Content-Encoding") from None


async def read_limited_body(request: web.Request, limit: int) -> bytes:
    """The body, its gzip/deflate `Content-Encoding` undone; 413 over `limit` bytes (sent or
    decoded), 415 for another coding, 400 for data that does not decode."""
    raw = await read_raw_body(request, limit)
    if not request.headers.get("Content-Encoding"):
        return raw
    return decode_limited(raw, request.headers.get("Content-Encoding"), limit)


def require_bearer(request: web.Request, tokens: Sequence[str]) -> None:
    """Raise 401 unless `Authorization: Bearer <t>` matches one of `tokens` (constant time).

    No configured token means nobody gets in: an unconfigured API is closed, not open.
    """
    headers = request.headers.getall("Authorization", [])
    challenge = {"WWW-Authenticate": 'Bearer realm="staticipd"'}
    if len(headers) > 1:
        # Which one would count is a guess a proxy and this daemon could make differently.
        raise Unauthorized("more than one Authorization header", headers=challenge)
    scheme, _, presented = (headers[0] if headers else "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("missing bearer token", headers=challenge)
    given = presented.strip().encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        if token:
            matched |= hmac.compare_digest(given, token.encode("utf-8"))
    if not matched:
        raise Unauthorized("wrong bearer token", headers=challenge)
