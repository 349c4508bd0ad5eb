"""Request latency by route and status: the outermost middleware of the listener.

The route label is the matched resource's path template (`/v1/accounts/{account_id}`), never
the URL asked for, and `unmatched` for a path no route serves; methods outside the usual few are
`other`. So a scanner trying a million URLs adds no series (bounded cardinality).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from daemon.http.errors import Handler
from daemon.metrics import HTTP_REQUEST_DURATION, Metrics

__all__ = ["request_metrics_middleware"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"


async def route_of(request: web.Request) -> str:
    """The canonical path of the route that served `request` (`unmatched` if none did).

    A path some route serves, asked with another method (405), is named by that route.
    """
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    if isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed):
        for candidate in request.app.router.resources():
            _, allowed = await candidate.resolve(request)
            if allowed:
                return candidate.canonical
    return _UNMATCHED


def request_metrics_middleware(metrics: Metrics) -> Middleware:
    """Observe every answer's duration into `staticipd_http_request_duration_seconds`."""
    observe = metrics.observe

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects and the like, raised past error_middleware
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 0  # the client went away: nothing was answered
            raise
        finally:
            if status:
                method = request.method if request.method in _METHODS else "other"
                observe(
                    HTTP_REQUEST_DURATION,
                    time.perf_counter() - started,
                    method=method,
                    route=await route_of(request),
                    status=str(status),
                )

    return middleware
