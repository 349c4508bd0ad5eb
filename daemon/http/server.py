"""The HTTP listener: the aiohttp application, what its routes share, and the probes.

`/healthz` says the process is alive; `/readyz` says the log is open, the writer healthy and
the projection caught up; `/metrics` is Prometheus text; `/` is the status page (statuspage.py:
aggregate counts only, no account ids or addresses, so it can be shown on a wall screen).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon import __version__
from daemon.http import ingest, operator, statuspage
from daemon.http.context import RUNTIME, Runtime
from daemon.http.errors import error_middleware
from daemon.metrics import ACCOUNTS, ACCOUNTS_FLAGGED, LOG_POSITION
from daemon.runtime.live import LiveProjection


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
    }
    ready = all(checks.values())
    body: dict[str, Any] = {"ready": ready, "checks": checks, "position": rt.live.position}
    if rt.store.last_error is not None:
        body["last_storage_error"] = str(rt.store.last_error)
    return web.json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.Response(
        text=rt.metrics.render(), content_type="text/plain", charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )  # fmt: skip


@routes.get("/")
async def status_page(request: web.Request) -> web.Response:
    view = await statuspage.gather(request.app[RUNTIME])
    return web.Response(text=statuspage.render(view), content_type="text/html")


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=runtime.config.http.max_body_bytes,
        # Bodies as sent: the webhook signature covers the bytes before any Content-Encoding
        # is undone, and routes decode within the body limit themselves (errors.read_limited_body).
        handler_args={"auto_decompress": False},
    )
    app[RUNTIME] = runtime
    app.add_routes(routes)
    app.add_routes(ingest.routes)
    app.add_routes(operator.routes)
    runtime.metrics.read(
        ACCOUNTS,
        lambda: [({"state": s}, n) for s, n in runtime.live.projection.funnel().items()],
    )
    runtime.metrics.read(
        ACCOUNTS_FLAGGED,
        lambda: [({"flag": f}, n) for f, n in flag_counts(runtime.live).items()],
    )
    runtime.metrics.read(LOG_POSITION, lambda: [({}, runtime.live.position)])
    return app


__all__ = ["build_app"]
