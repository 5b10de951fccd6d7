"""HTTP on the gateway's port: monitoring (/health, /healthz, /connections, /metrics, /)
and the browser tickets (POST /v1/tickets).

Plain Starlette endpoints: they are off the hot path. /connections, /metrics and the
status page need the admin key (or a loopback client when none is set: see
:meth:`.auth.Edge.check_admin`); /health and /healthz stay open for load balancers and
process managers, and /health shows its details (backend URLs, errors, counts) only to
the same admins.
They read the running gateway from the lifespan state (``request.state.runtime``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.refusal import Refusal

from .auth import Edge
from .metrics import GatewayMetrics

if TYPE_CHECKING:
    from .proxy import ProxyConnection
    from .runtime import Runtime

__all__ = ["monitor_routes", "snapshot"]

Endpoint = Callable[[Request], Awaitable[Response]]


def monitor_routes(metrics: GatewayMetrics, edge: Edge) -> list[Route]:
    status_page = (
        resources.files("aivtuber_gateway").joinpath("static/status.html").read_text("utf-8")
    )

    def admin_only(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            refusal = edge.check_admin(request.scope)
            if refusal is not None:
                return refusal.response()
            response = await endpoint(request)
            response.headers["cache-control"] = "no-store"
            return response

        return guarded

    async def health(request: Request) -> JSONResponse:
        runtime = _runtime(request)
        if runtime is None:
            return JSONResponse({"status": "degraded", "gateway": "stopping"}, status_code=503)
        ok, backends = await runtime.health.backends()
        status = 200 if ok else 503
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "gateway": "running"}
        if edge.check_admin(request.scope) is not None:
            # Open to anyone: the verdict and each route's status, nothing about the
            # machines behind it or the traffic.
            body["backends"] = {name: {"status": info["status"]} for name, info in backends.items()}
            return JSONResponse(body, status_code=status)
        body["uptime_s"] = round(time.monotonic() - runtime.started, 1)
        body["backends"] = backends
        body["connections"] = len(runtime.registry)
        return JSONResponse(body, status_code=status)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def connections(request: Request) -> JSONResponse:
        runtime = _runtime(request)
        live = [snapshot(conn) for conn in runtime.registry] if runtime else []
        live.sort(key=lambda conn: conn["connected_at"])
        return JSONResponse({"total_connections": len(live), "connections": live})

    async def index(_: Request) -> HTMLResponse:
        # The page may be opened as /?admin_key=...: never let the key leave in a Referer.
        return HTMLResponse(status_page, headers={"referrer-policy": "no-referrer"})

    async def tickets(request: Request) -> JSONResponse:
        ticket = edge.ticket_for(request.scope)
        if isinstance(ticket, Refusal):
            return ticket.response()
        body = {"ticket": ticket, "expires_in": int(edge.tickets.ttl_s)}
        return JSONResponse(body, status_code=201, headers={"cache-control": "no-store"})

    return [
        Route("/", admin_only(index), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/connections", admin_only(connections), methods=["GET"]),
        Route("/metrics", admin_only(metrics_endpoint(metrics.prometheus)), methods=["GET"]),
        Route("/v1/tickets", tickets, methods=["POST"]),
    ]


def _runtime(request: Request) -> Runtime | None:
    return getattr(request.state, "runtime", None)


def snapshot(conn: ProxyConnection) -> dict[str, Any]:
    """A connection as ``/connections`` lists it."""
    now = time.monotonic()
    return {
        "id": conn.id,
        "route": conn.route.name,
        "path": conn.path,
        "client": conn.client,
        "backend": conn.backend_url,
        "connected_at": _iso(conn.connected_at),
        "duration_s": round(now - conn.opened, 3),
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "last_activity_at": _iso(conn.connected_at + (conn.last_activity - conn.opened)),
        "unanswered_ping_s": conn.unanswered_pings(),
    }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + (
        f".{int(timestamp % 1 * 1000):03d}Z"
    )
