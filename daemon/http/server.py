"""The HTTP listener: the aiohttp application, what its routes share, and the probes.

`/healthz` says the process is alive; `/readyz` says the log is open, the writer healthy and
the projection caught up; `/metrics` is Prometheus text; `/` is a status page with the funnel
(aggregate counts only, no account ids or addresses, so it can be shown on a wall screen).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from daemon import __version__
from daemon.domain import FLAGS
from daemon.http import ingest, openapi, operator
from daemon.http.context import RUNTIME, Runtime
from daemon.http.errors import error_middleware
from daemon.http.requestmetrics import request_metrics_middleware
from daemon.metrics import ACCOUNTS, ACCOUNTS_FLAGGED, CONTENT_TYPE, LOG_POSITION
from daemon.runtime.live import LiveProjection


def flag_counts(live: LiveProjection) -> dict[str, int]:
    """Accounts per flag (invalid, sync_error, running_overdue, ...): what needs a look."""
    counts: dict[str, int] = dict.fromkeys(FLAGS, 0)
    for account in live.projection:
        for flag in account.flags:
            counts[flag] = counts.get(flag, 0) + 1
    return counts


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
        body=rt.metrics.render(),
        headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


@routes.get("/")
async def status_page(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    counts = rt.live.projection.funnel()
    total = sum(counts.values()) or 1
    rows = "".join(
        f"<tr><th>{html.escape(state)}</th><td>{n}</td>"
        f'<td><div class="bar" style="width:{100 * n / total:.1f}%"></div></td></tr>'
        for state, n in counts.items()
    )
    app_state = rt.live.projection.application
    page = _PAGE.format(
        version=__version__,
        enabled="enabled" if app_state.migration_enabled else "not enabled",
        position=rt.live.position,
        rows=rows,
        now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        waves=html.escape(", ".join(f"{w} ({n})" for w, n in app_state.waves().items()) or "none"),
        flags=html.escape(
            ", ".join(f"{f} {n}" for f, n in flag_counts(rt.live).items() if n) or "none"
        ),
    )
    return web.Response(text=page, content_type="text/html")


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>staticipd status</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:46em}}
th{{text-align:left;padding-right:1em;font-weight:500}}td{{padding:.2em .6em}}
.bar{{background:#3a7;height:.8em;min-width:1px}}table{{width:100%}}small{{color:#666}}</style>
</head><body><h1>staticipd</h1>
<p>Migration <b>{enabled}</b> · waves: {waves} · log position {position}</p>
<p>Flagged accounts: {flags}</p>
<table>{rows}</table>
<p><small>staticipd {version} · {now} · refreshes every 5 s ·
<a href="/metrics">metrics</a> · <a href="/readyz">readiness</a></small></p>
</body></html>"""


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        # Outermost first: the latency middleware sees the status error_middleware answered.
        middlewares=[request_metrics_middleware(runtime.metrics), error_middleware],
        client_max_size=runtime.config.http.max_body_bytes,
        # Bodies as sent: the webhook signature covers the bytes before any Content-Encoding
        # is undone, and routes decode within the body limit themselves (errors.read_limited_body).
        handler_args={"auto_decompress": False},
    )
    app[RUNTIME] = runtime
    app.add_routes(routes)
    app.add_routes(ingest.routes)
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
    return app


__all__ = ["build_app"]
