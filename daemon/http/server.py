"""The HTTP listener: the aiohttp application, what its routes share, and the probes.

`/healthz` says the process is alive; `/readyz` says the log is open, the writer healthy (an
unhealthy log is probed until it is usable again, daemon/service.py), the projection caught up
and this instance the leader (a standby of a PostgreSQL log takes no writes); `/metrics` is
Prometheus text; `/` is the status page (statuspage.py: aggregate counts only, no account ids or
addresses, so it can be shown on a wall screen).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import _ErrInfo  # what the parser queues for a refused request
from aiohttp.web_request import BaseRequest

from daemon import __version__
from daemon.http import ingest, openapi, operator, statuspage
from daemon.http.context import RUNTIME, Runtime, close_while_stopping
from daemon.http.errors import (
    REQUEST_ID_HEADER,
    error_response,
    malformed_request,
    new_request_id,
)
from daemon.http.frame import request_frame
from daemon.metrics import ACCOUNTS, ACCOUNTS_FLAGGED, CONTENT_TYPE, LEADER, LOG_POSITION
from daemon.runtime.live import LiveProjection

log = structlog.get_logger(__name__)


def flag_counts(live: LiveProjection) -> dict[str, int]:
    """Accounts per flag (invalid, sync_error, running_overdue, ...): what needs a look."""
    return live.projection.flag_counts()


routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "version": __version__})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    checks = {
        "log_open": rt.store.healthy,
        "projection_caught_up": rt.live.caught_up.is_set() and rt.live.failed is None,
        "accepting": not rt.stopping,
        # Only the leader takes writes (README.md, "Active/standby on PostgreSQL").
        "leader": rt.role == "leader",
    }
    ready = all(checks.values())
    body: dict[str, Any] = {
        "ready": ready,
        "checks": checks,
        "position": rt.live.position,
        "role": rt.role,
    }
    if rt.store.last_error is not None:
        body["last_storage_error"] = str(rt.store.last_error)
    return web.json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.Response(
        body=rt.metrics.render(),
        headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


@routes.get("/")
async def status_page(request: web.Request) -> web.Response:
    view = await statuspage.gather(request.app[RUNTIME])
    return web.Response(text=statuspage.render(view), content_type="text/html")


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[request_frame(runtime)],
        client_max_size=runtime.config.http.max_body_bytes,
        # Bodies as sent: the webhook signature covers the bytes before any Content-Encoding
        # is undone, and routes decode within the body limit themselves (errors.read_limited_body).
        handler_args={
            "auto_decompress": False,
            "keepalive_timeout": runtime.config.http.keepalive_timeout_seconds,
            "header_timeout": runtime.config.http.header_timeout_seconds,
        },
    )
    app[RUNTIME] = runtime
    app.on_response_prepare.append(close_while_stopping)
    app.add_routes(routes)
    app.add_routes(ingest.routes)
    ingest.count_from_zero(runtime.metrics)
    app.add_routes(operator.routes)
    app.add_routes(openapi.routes)
    runtime.metrics.read(
        ACCOUNTS,
        lambda: [({"state": s}, n) for s, n in runtime.live.projection.funnel().items()],
    )
    runtime.metrics.read(
        ACCOUNTS_FLAGGED,
        lambda: [({"flag": f}, n) for f, n in flag_counts(runtime.live).items()],
    )
    runtime.metrics.read(LOG_POSITION, lambda: [({}, runtime.live.position)])
    runtime.metrics.read(LEADER, lambda: [({}, int(runtime.role == "leader"))])
    return app


# What the answer to a request aiohttp's parser refused says, by the parser's exception class.
# The parser's own texts quote the request's bytes, so only a short known sentence is shown.
_PARSER_SAYS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header line is too long"),
    (http_exceptions.BadStatusLine, "malformed request line"),  # BadHttpMethod too
    (http_exceptions.InvalidURLError, "malformed request line"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.PayloadEncodingError, "malformed body framing"),
)
# The first line of other parser texts ("Duplicate Content-Length", "Too many headers
# received", ...) is shown when it is plain words; anything quoting bytes is not.
_PLAIN_SENTENCE = re.compile(r"[A-Za-z][A-Za-z0-9 ,.'`()_-]{0,99}")


def _parser_message(exc: BaseException | None) -> str:
    for kind, text in _PARSER_SAYS:
        if isinstance(exc, kind):
            return text
    if isinstance(exc, http_exceptions.HttpProcessingError):
        first = exc.message.strip().split("\n", 1)[0].rstrip(":").strip()
        if _PLAIN_SENTENCE.fullmatch(first) and "b'" not in first and 'b"' not in first:
            return f"malformed HTTP request: {first}"
    return "malformed HTTP request"


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what never reaches a route in the JSON shape.

    aiohttp answers a request its parser refuses (an over-long header, a bad request line,
    conflicting lengths, a bad chunk, too many headers) through `handle_error`, outside the
    application and its middlewares, with a text page quoting the request's bytes. Here such a
    request gets `error_response`'s shape and an `X-Request-Id`, and the log line names only the
    exception class.
    """

    __slots__ = ("_header_timeout", "_header_timer")

    def __init__(self, manager: web.Server, *, header_timeout: float | None = None, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the header timeout: from a request's first byte (or the connection's start) until its
    # head is parsed; aiohttp has none, and its keep-alive timer only runs between requests.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None and self._header_timeout is not None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._current_request is None and not self._messages and self.transport is not None:
            log.info("http.header_timeout", seconds=self._header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        """As aiohttp, and when the parser refuses the body of the request being handled (a bad
        chunk after the headers), the route's read fails with `RequestPayloadError` at once.

        aiohttp 3.14 drops that request's body stream without ending it and queues an error
        answer behind the request: the route would wait for the rest of the body until the
        client gives up. (`_messages` and `_current_request` are aiohttp's own; the hostile
        input tests pin this behaviour.)

        Bytes that arrive while no request is being handled and finish no request's head
        start the header timeout; a finished head stops it.
        """
        queued = len(self._messages)
        super().data_received(data)
        current = self._current_request
        if len(self._messages) > queued:
            self._disarm()
        elif current is None:
            self._arm()
        if current is None or len(self._messages) <= queued:
            return
        if isinstance(self._messages[-1][0], _ErrInfo):
            current.content.set_exception(web.RequestPayloadError("malformed body framing"))
            current.content.feed_eof()  # no lingering read of a body that will never end

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        rid = new_request_id()
        if status >= 500:
            log.error(
                "http.unhandled", status=status, kind=type(exc).__name__, request_id=rid,
                exc_info=exc,
            )  # fmt: skip
        else:
            # The same line as any refusal by the parser (daemon/logs.py): the error's class
            # and a fixed reason, never the request's bytes; rate-limited like every http.* line.
            log.info(
                "http.refused", status=status, error=type(exc).__name__,
                reason=_parser_message(exc), request_id=rid,
            )  # fmt: skip
        # Part of an answer already went out: nothing more can be said on this connection.
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        if status == 400:
            response = malformed_request(rid, _parser_message(exc))
        elif status == 504:
            response = error_response(504, "timeout", "the request took too long")
        else:
            response = error_response(
                status, "internal_error", f"internal error; quote request id {rid} to the operator"
            )
        response.headers[REQUEST_ID_HEADER] = rid
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server, making a `JsonErrorRequestHandler` per connection."""

    def __call__(self) -> web.RequestHandler:
        # web.Server.__call__ is `RequestHandler(self, loop=self._loop, **self._kwargs)` with no
        # hook for the class; the same call with ours.
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose server answers HTTP-level errors as JSON (JsonErrorRequestHandler)."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's startup hooks run here, as usual
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


__all__ = ["AppRunner", "JsonErrorRequestHandler", "build_app"]
