"""Monitoring over HTTP on the gateway's port: /health, /healthz, /connections, /metrics, /.

Plain Starlette endpoints: they are off the hot path.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .app import GatewayApp
    from .proxy import ProxyConnection

__all__ = ["monitor_routes", "snapshot"]


def monitor_routes(gateway: GatewayApp) -> list[Route]:
    status_page = (
        resources.files("aivtuber_gateway").joinpath("static/status.html").read_text("utf-8")
    )

    async def health(_: Request) -> JSONResponse:
        runtime = gateway.runtime
        if runtime is None:
            return JSONResponse({"status": "degraded", "gateway": "stopping"}, status_code=503)
        ok, backends = await runtime.health.backends()
        body = {
            "status": "ok" if ok else "degraded",
            "gateway": "running",
            "uptime_s": round(time.monotonic() - runtime.started, 1),
            "backends": backends,
            "connections": len(runtime.registry),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def connections(_: Request) -> JSONResponse:
        runtime = gateway.runtime
        live = [snapshot(conn) for conn in runtime.registry] if runtime else []
        live.sort(key=lambda conn: conn["connected_at"])
        return JSONResponse({"total_connections": len(live), "connections": live})

    async def metrics(_: Request) -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    async def index(_: Request) -> HTMLResponse:
        return HTMLResponse(status_page, headers={"cache-control": "no-store"})

    return [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/connections", connections, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


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
