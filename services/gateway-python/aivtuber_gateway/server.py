"""uvicorn tuned for the gateway, and a shutdown that says "going away" to everyone.

uvicorn's own shutdown closes WebSockets with 1012 before the lifespan shutdown runs, so
:class:`GatewayServer` first stops accepting, then closes every proxied connection with
1001 "going away" on both sides, and only then lets uvicorn finish.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

import structlog
import uvicorn

from aivtuber_common.cli import GracefulServer
from aivtuber_common.config import GatewaySettings

from .app import GatewayApp
from .bounds import bounded_http_protocol, bounded_ws_protocol
from .fastpath import client_protocol
from .pending import PendingGate
from .routing import RouteTable

__all__ = ["GatewayServer", "uvicorn_overrides"]


def uvicorn_overrides(gateway: GatewaySettings) -> dict[str, Any]:
    """The uvicorn settings the gateway's client side needs (same limit as the backend hop,
    keepalive pings toward the client, data frames read and written without websockets'
    machinery when the installed uvicorn and websockets allow it: see :mod:`.fastpath`).; fragments
    and refused handshakes bounded: see :mod:`.bounds`)."""
    routes = RouteTable(gateway)
    sizes = [route.max_message_bytes for route in routes if route.protocol == "websocket"]
    # Connections without a verdict yet, capped in total and per address (pending.py).
    gate = PendingGate(gateway.max_pending_connections, gateway.max_pending_per_address)
    overrides: dict[str, Any] = {
        # Per connection, each route's own limit applies once the route is known
        # (bounds.limit_messages); until then, the largest of the WebSocket routes'.
        "ws_max_size": max(sizes, default=gateway.max_message_bytes),
        # Request heads bounded in size and time (uvicorn has neither): see bounds.py.
        "http": bounded_http_protocol(gateway.max_head_bytes, gateway.head_timeout_s, gate),
        "ws_ping_interval": gateway.ping_interval_s or None,
        "ws_ping_timeout": gateway.ping_timeout_s if gateway.ping_interval_s else None,
        # uvicorn negotiates permessage-deflate for the whole server, not per path: it is
        # offered to clients when any route enables compression.
        "ws_per_message_deflate": any(route.compression for route in gateway.routes.values()),
        # The gateway is the edge: the client address is the peer's, and an incoming
        # X-Forwarded-For chain is passed on with the peer appended, not trusted.
        "proxy_headers": False,
        # The fast path's class or uvicorn's own, with the client hop's bounds on top.
        "ws": bounded_ws_protocol(
            client_protocol(gateway.fast_path, structlog.get_logger("aivtuber_gateway")), gate
        ),
    }
    if gateway.tls is not None:  # wss:// and https:// served directly
        overrides["ssl_certfile"] = gateway.tls.certfile
        overrides["ssl_keyfile"] = gateway.tls.keyfile
    return overrides


class GatewayServer(GracefulServer):
    def __init__(self, config: uvicorn.Config) -> None:
        if isinstance(config.app, GatewayApp):
            for key, value in uvicorn_overrides(config.app.gateway).items():
                setattr(config, key, value)
        super().__init__(config)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        if self.config.ssl is None or not isinstance(app, GatewayApp):
            await super().startup(sockets)
            return
        # A TLS handshake bounded like a request head (gateway.head_timeout_s): asyncio and
        # uvloop otherwise hold a connection that never sends a ClientHello for 60 s, and
        # uvicorn has no setting for it. Its create_server is given the bound for the
        # duration of the start-up (the loop's own method is back right after).
        loop = asyncio.get_running_loop()
        create_server = loop.create_server
        bounded = functools.partial(create_server, ssl_handshake_timeout=app.gateway.head_timeout_s)
        loop.create_server = bounded  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # the class's method again

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting first
        if isinstance(self.config.app, GatewayApp):
            await self.config.app.close_all()
        await super().shutdown(sockets)
