"""JSON error answers, request ids, body limits and bearer tokens of the listener (daemon.http)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from daemon.http.errors import (
    ApiError,
    ServiceUnavailable,
    error_middleware,
    read_limited_body,
    request_id,
    require_bearer,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

LIMIT = 1000
TOKEN = "operator-token-abc"
SECRET_IN_EXCEPTION = "db-password-in-traceback"


async def echo(request: web.Request) -> web.Response:
    body = await read_limited_body(request, LIMIT)
    return web.Response(body=body)


async def bad(request: web.Request) -> web.Response:
    raise ApiError(400, "bad_request", "expected an integer", field="$.deltas[0].date")


async def signature(request: web.Request) -> web.Response:
    raise ApiError(401, "bad_signature", "missing or wrong X-Nylas-Signature")


async def busy(request: web.Request) -> web.Response:
    raise ServiceUnavailable("queue full", retry_after=7)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError(f"connection string {SECRET_IN_EXCEPTION}")


async def private(request: web.Request) -> web.Response:
    require_bearer(request, [TOKEN, "old-operator-token"])
    return web.json_response({"ok": True})


async def context(request: web.Request) -> web.Response:
    bound = structlog.contextvars.get_contextvars()
    return web.json_response({"bound": bound.get("request_id"), "rid": request_id(request)})


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/echo", echo)
    app.router.add_get("/bad", bad)
    app.router.add_get("/signature", signature)
    app.router.add_get("/busy", busy)
    app.router.add_get("/boom", boom)
    app.router.add_get("/private", private)
    app.router.add_get("/context", context)
    app.router.add_get("/redirect", redirect)
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        aiohttp.ClientSession() as session,
    ):
        yield str(srv.make_url("")).rstrip("/"), session


async def call(server: Any, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    base, session = server
    async with session.request(method, base + path, allow_redirects=False, **kw) as r:
        text = await r.text()
        try:
            body = await r.json(content_type=None)
        except ValueError:
            body = text
        return r.status, body, r.headers


def assert_error_shape(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code


async def test_bad_request_names_the_field(server) -> None:
    """A 400 says which field is wrong and why, in the JSON error shape."""
    status, body, _ = await call(server, "GET", "/bad")
    assert status == 400
    assert_error_shape(body, "bad_request")
    assert body["error"]["field"] == "$.deltas[0].date"
    assert body["error"]["message"] == "expected an integer"


async def test_route_chosen_status_and_code(server) -> None:
    """A route can answer any status with its own error code, in the same JSON shape."""
    status, body, _ = await call(server, "GET", "/signature")
    assert status == 401
    assert_error_shape(body, "bad_signature")
    assert body["error"]["field"] is None


async def test_unknown_route_and_wrong_method_are_json(server) -> None:
    """404 for an unknown path and 405 (with Allow) for a wrong method are JSON too."""
    status, body, _ = await call(server, "GET", "/nowhere")
    assert status == 404
    assert_error_shape(body, "not_found")
    status, body, headers = await call(server, "DELETE", "/bad")
    assert status == 405
    assert_error_shape(body, "method_not_allowed")
    assert "GET" in headers["Allow"]


async def test_unavailable_says_when_to_retry(server) -> None:
    """A 503 carries Retry-After so the sender retries instead of dropping the delivery."""
    status, body, headers = await call(server, "GET", "/busy")
    assert status == 503
    assert headers["Retry-After"] == "7"
    assert_error_shape(body, "unavailable")


async def test_unexpected_exception_is_a_bare_500_logged_with_the_request_id(server) -> None:
    """A crash in a route answers 500 with no trace or detail, and is logged under the id."""
    with capture_logs() as logs:
        status, body, headers = await call(server, "GET", "/boom")
    assert status == 500
    assert_error_shape(body, "internal_error")
    text = str(body)
    assert SECRET_IN_EXCEPTION not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    rid = headers["X-Request-Id"]
    assert rid in body["error"]["message"]
    [entry] = [e for e in logs if e["event"] == "http.unhandled"]
    assert entry["request_id"] == rid
    assert entry["log_level"] == "error"


async def test_body_within_limit_is_read(server) -> None:
    """A body up to the limit reaches the route intact."""
    status, body, _ = await call(server, "POST", "/echo", data=b"x" * LIMIT)
    assert status == 200
    assert body == "x" * LIMIT


async def test_body_over_content_length_limit_is_413(server) -> None:
    """A declared Content-Length over the limit is refused with 413 before reading the body."""
    status, body, _ = await call(server, "POST", "/echo", data=b"x" * (LIMIT + 1))
    assert status == 413
    assert_error_shape(body, "payload_too_large")


async def test_chunked_body_over_limit_is_413(server) -> None:
    """A chunked body with no Content-Length is counted while read and refused past the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 300

    status, body, _ = await call(server, "POST", "/echo", data=chunks())
    assert status == 413
    assert_error_shape(body, "payload_too_large")


async def test_request_id_is_generated_and_returned(server) -> None:
    """Every answer carries an X-Request-Id, and the same id is bound for the route's logs."""
    status, body, headers = await call(server, "GET", "/context")
    assert status == 200
    assert headers["X-Request-Id"] == body["bound"] == body["rid"]
    assert len(headers["X-Request-Id"]) >= 16


async def test_caller_request_id_is_kept_when_safe(server) -> None:
    """A caller's own X-Request-Id is echoed; an unsafe one is replaced."""
    _, body, headers = await call(server, "GET", "/context", headers={"X-Request-Id": "abc-123"})
    assert headers["X-Request-Id"] == body["bound"] == "abc-123"
    evil = "x" * 500
    _, _, headers = await call(server, "GET", "/bad", headers={"X-Request-Id": evil})
    assert headers["X-Request-Id"] != evil


async def test_request_id_does_not_leak_between_requests(server) -> None:
    """Two requests on one connection get different ids, not the first one's."""
    _, first, _ = await call(server, "GET", "/context")
    _, second, _ = await call(server, "GET", "/context")
    assert first["bound"] != second["bound"]


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer ", 401),
        ("Bearer wrong", 401),
        ("Bearer ünïcode", 401),
        (f"Bearer {TOKEN}", 200),
        ("bearer old-operator-token", 200),
    ],
    ids=["none", "basic", "empty", "wrong", "non-ascii", "right", "rotated-old"],
)
async def test_bearer_token(server, header: str | None, status: int) -> None:
    """Only a configured bearer token (current or rotated-out) opens the API; others get 401."""
    headers = {"Authorization": header} if header else {}
    got, body, answer = await call(server, "GET", "/private", headers=headers)
    assert got == status
    if status == 401:
        assert_error_shape(body, "unauthorized")
        assert answer["WWW-Authenticate"].startswith("Bearer")


async def test_no_configured_token_locks_everyone_out(anyio_backend: str) -> None:
    """With no token configured, even an empty bearer value does not get in."""

    async def closed(request: web.Request) -> web.Response:
        require_bearer(request, ["", *[]])
        return web.Response(text="open")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", closed)
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        aiohttp.ClientSession() as s,
        s.get(srv.make_url("/"), headers={"Authorization": "Bearer x"}) as r,
    ):
        assert r.status == 401


async def test_redirects_pass_through(server) -> None:
    """A deliberate redirect is not turned into an error."""
    status, _, headers = await call(server, "GET", "/redirect")
    assert status == 302
    assert headers["Location"] == "/elsewhere"
