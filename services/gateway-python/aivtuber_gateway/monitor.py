"""Monitoring over HTTP on the gateway's port: /health, /healthz, /connections, /metrics, /.

Plain Starlette endpoints: they are off the hot path.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .app import GatewayApp

__all__ = ["monitor_routes"]


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
        live = [conn.snapshot() for conn in runtime.registry] if runtime else []
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
