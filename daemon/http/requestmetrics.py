"""Request latency by method, route and status (`staticipd_http_request_duration_seconds`),
observed by the listener's middleware (daemon/http/frame.py) for every answer.

The route label is the matched resource's path template (`/v1/accounts/{account_id}`), never
the URL asked for, and `unmatched` for a path no route serves; methods outside the usual few are
`other`. So a scanner trying a million URLs adds no series (bounded cardinality).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from daemon.metrics import HTTP_REQUEST_DURATION, Metrics

__all__ = ["RequestLatency", "route_of"]

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


class RequestLatency:
    """Observes answers' durations, keeping each (method, route, status) series it has used."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._series: dict[tuple[str, str, int], Callable[[float], None]] = {}

    async def observe(self, request: web.Request, status: int, seconds: float) -> None:
        method = request.method if request.method in _METHODS else "other"
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else await route_of(request)
        key = (method, route, status)
        observe = self._series.get(key)
        if observe is None:
            observe = self._metrics.observer(
                HTTP_REQUEST_DURATION, method=method, route=route, status=str(status)
            )
            self._series[key] = observe
        observe(seconds)
