"""The listener's one middleware: what every request goes through, around its route.

- an id (`X-Request-Id` in and out) bound for the request's log lines (`errors.begin_request`);
- once the daemon is stopping, or while it is a standby, a write refused before its body is read
  (`Runtime.refusal`); requests running are counted, so the shutdown can wait for them;
- storage trouble as 503 (`Runtime.storage_guard`), and any error as the JSON error shape
  (`errors.error_answer`);
- the answer's duration, by method, route and status (`requestmetrics`).

One middleware rather than one per concern: aiohttp runs each middleware as a coroutine around
the next, and on the webhook's path, where the event loop's time per request is the limit,
three of them cost about 0.08 of the rate (bench/README.md).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from daemon.http.context import Runtime
from daemon.http.errors import begin_request, error_answer, with_request_id
from daemon.http.requestmetrics import RequestLatency

__all__ = ["request_frame"]


def request_frame(runtime: Runtime) -> Middleware:
    """The middleware of `runtime`'s listener (the module's docstring)."""
    latency = RequestLatency(runtime.metrics)
    guard = runtime.storage_guard

    @web.middleware
    async def frame(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = begin_request(request)
        status = 500
        try:
            try:
                refusal = runtime.refusal(request.method)
                if refusal is not None:
                    raise refusal
                runtime.requests_in_flight += 1
                try:
                    with guard:
                        response = await handler(request)
                finally:
                    runtime.requests_in_flight -= 1
            except Exception as exc:
                response = error_answer(request, exc, rid)  # raises a redirect again
            status = response.status
            return with_request_id(response, rid)
        except web.HTTPException as exc:  # a redirect: an answer all the same
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 0  # the client went away: nothing was answered
            raise
        finally:
            if status:
                await latency.observe(request, status, time.perf_counter() - started)

    return frame
