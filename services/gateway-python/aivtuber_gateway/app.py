"""The gateway's ASGI app: WebSocket routes proxied on the raw ASGI interface, everything
else (monitoring, lifespan) handled by a Starlette app.

``create_app(settings)`` builds it; the Starlette lifespan owns the registry of live
connections and the httpx client of the health probes, and hands them to every request
and WebSocket as lifespan state (``scope["state"]["runtime"]``, a :class:`Runtime`). On
shutdown every proxied connection is closed with 1001 "going away" on both sides (see
:mod:`.server`, which does it before uvicorn closes sockets its own way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.routing import Match

from aivtuber_common.closecodes import AppCloseCode, CloseCode
from aivtuber_common.config import Settings
from aivtuber_common.identity import Identity
from aivtuber_common.redact import short_path
from aivtuber_common.refusal import Refusal

from .auth import Edge
from .bounds import limit_messages, refuse_cheaply, settle
from .clientaddr import ClientAddresses
from .headers import forwarded_request
from .health import HealthChecker
from .http_routes import HttpForwarder
from .keepalive import BackendKeepalive
from .lifecycle import short_reason
from .metrics import GatewayMetrics
from .monitor import monitor_routes
from .pages import page_routes
from .proxy import ProxyConnection, ProxyOptions, Receive, Send
from .registry import Registry
from .routing import Route, RouteTable
from .runtime import GatewayState, Runtime
from .upstream import BackendRejected, BackendUnavailable, open_backend

__all__ = ["GatewayApp", "GatewayState", "Runtime", "create_app"]

GOING_AWAY = "going away"


class GatewayApp:
    """Raw ASGI entry point: ``websocket`` scopes are proxied, the rest goes to Starlette."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway = settings.gateway
        # One logger per app, not per module: tests capture each app's logs on their own.
        self.log: structlog.typing.FilteringBoundLogger = structlog.get_logger("aivtuber_gateway")
        self.routes = RouteTable(settings.gateway)
        # Credentials, tickets, Origin, admin access, the connection quota: every route
        # (WebSocket or HTTP) is resolved through self.edge.resolve(scope) first.
        self.edge = Edge(settings)
        self.clients = ClientAddresses(settings.gateway.trusted_proxies)
        self.metrics = GatewayMetrics(self.routes, self.edge.open_by_tenant)
        # The running runtime, for the server's shutdown (it has no request to read the
        # lifespan state from); None before startup and after shutdown.
        self._runtime: Runtime | None = None
        self.http = Starlette(
            routes=[
                *monitor_routes(self.metrics, self.edge),
                *page_routes(self.edge, self.metrics, self.routes),
            ],
            lifespan=self._lifespan,
        )
        # Routes with protocol "http" (the OpenAI-compatible API): forwarded, streamed,
        # through the same edge (credentials, tenants, the connection quota).
        self.forwarder = HttpForwarder(settings, self.log, self.metrics, self.edge)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        # The client's address, once for everything after: the peer's, or what a proxy in
        # gateway.trusted_proxies says.
        self.clients.apply(scope)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http" and (route := self._http_route(scope)) is not None:
            await self.forwarder.handle(route, scope, receive, send)
        else:
            await self.http(scope, receive, send)

    def _http_route(self, scope: dict[str, Any]) -> Route | None:
        """The http route for this request; the gateway's own endpoints come first."""
        route = self.routes.match(scope["path"], protocol="http")
        if route is None:
            return None
        own = any(r.matches(scope)[0] is not Match.NONE for r in self.http.routes)
        return None if own else route

    async def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = GOING_AWAY) -> None:
        """Stop proxying new connections; close every open one on both sides."""
        runtime = self._runtime
        if runtime is None:
            return
        runtime.closing = True
        timeout = self.gateway.shutdown_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await runtime.registry.close_all(code, reason)
        except TimeoutError:
            self.log.warning(
                "connections_still_open", count=len(runtime.registry), timeout_s=timeout
            )

    @asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[GatewayState]:
        gateway = self.gateway
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            registry: Registry[ProxyConnection] = Registry(
                [route.name for route in self.routes], self.log
            )
            options = ProxyOptions(
                registry=registry,
                connect_timeout_s=gateway.connect_timeout_s,
                idle_timeout_s=gateway.idle_timeout_s,
                debug=self.settings.logging.level == "debug",
                log=self.log,
                observe_first_audio=self.metrics.first_audio_observer,
                observe_audio_gap=self.metrics.audio_gap_observer,
            )
            health = HealthChecker(
                self.routes, client, gateway.health_timeout_s, gateway.health_cache_s
            )
            runtime = self._runtime = Runtime(registry, options, health)
            await self.forwarder.open()
            self.metrics.bind(registry)
            keepalive = None
            if gateway.ping_interval_s:
                keepalive = BackendKeepalive(
                    registry, gateway.ping_interval_s, gateway.ping_timeout_s
                )
                keepalive.start()
            try:
                yield {"runtime": runtime}
            finally:
                await self.close_all()
                await self.forwarder.aclose()
                if keepalive is not None:
                    await keepalive.stop()
                self._runtime = None
                self.metrics.bind(None)

    async def _websocket(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client left before the handshake finished
        runtime: Runtime | None = scope.get("state", {}).get("runtime")
        if runtime is None or runtime.closing:
            await _refuse(send, CloseCode.GOING_AWAY, GOING_AWAY)
            return
        route = self.routes.match(scope["path"])
        identity = self.edge.resolve(scope)  # strips the credential from the scope
        if isinstance(identity, Refusal):
            name = route.name if route else "unmatched"
            await self._refuse_edge(send, scope, runtime, name, identity)
            return
        if route is None:
            runtime.registry.rejected["unmatched", AppCloseCode.NOT_FOUND] += 1
            self.log.info("no_route", path=short_path(scope["path"]), client=_client(scope))
            refuse_cheaply(send)
            await _refuse(send, AppCloseCode.NOT_FOUND, "no route for this path")
            return
        # limits.max_connections: counted per tenant (per IP if anonymous), all routes.
        if (over := self.edge.open_connection(identity)) is not None:
            await self._refuse_edge(send, scope, runtime, route.name, over)
            return
        settle(send)  # no longer a pending connection (bounds.py, pending.py)
        try:
            await self._proxy(scope, receive, send, runtime, route, identity)
        finally:
            self.edge.close_connection(identity)

    async def _refuse_edge(
        self,
        send: Send,
        scope: dict[str, Any],
        runtime: Runtime,
        route: str,
        refusal: Refusal,
    ) -> None:
        runtime.registry.rejected[route, refusal.close_code] += 1
        self.log.info(
            "connection_refused",
            route=route,
            client=_client(scope),
            code=refusal.close_code,
            reason=refusal.reason,
        )
        # Bounded from here: a few KiB more read, the socket closed within a second.
        refuse_cheaply(send)
        await _refuse(send, refusal.close_code, refusal.reason)

    async def _proxy(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        runtime: Runtime,
        route: Route,
        identity: Identity,
    ) -> None:
        limit_messages(send, route.max_message_bytes)
        request = forwarded_request(scope)
        request.headers.extend(self.edge.backend_headers(identity))
        # uvicorn keeps the scope for the connection's lifetime; the headers have been
        # read (and may hold cookies): drop them rather than keep a copy per connection.
        scope["headers"] = ()
        started = time.perf_counter()
        try:
            link, backend = await open_backend(route, scope, request, runtime.options)
        except BackendUnavailable as exc:
            # Browsers cannot read an HTTP error on a failed upgrade: accept, then close
            # with a code and reason they can show.
            runtime.registry.rejected[route.name, CloseCode.TRY_AGAIN_LATER] += 1
            self.log.warning(
                "backend_unavailable",
                route=route.name,
                path=short_path(scope["path"]),
                client=_client(scope),
                backends=[url for url, _ in exc.failures],
                errors=[f"{url}: {error}" for url, error in exc.failures],
                request_id=request.request_id,
            )
            await _refuse(send, CloseCode.TRY_AGAIN_LATER, route.unavailable_reason)
            return
        except BackendRejected as exc:
            # A 4xx is the backend's verdict on this request (bad task id, no auth): pass
            # it on as 4000 + status, like 4404 for an unknown path.
            code = 4000 + exc.status
            runtime.registry.rejected[route.name, code] += 1
            self.log.info(
                "backend_rejected",
                route=route.name,
                path=short_path(scope["path"]),
                client=_client(scope),
                backend=exc.backend.url + short_path(scope["path"]),
                status=exc.status,
                request_id=request.request_id,
            )
            await _refuse(send, code, f"{route.name} backend refused: HTTP {exc.status}")
            return
        self.metrics.connect_seconds.labels(route.name).observe(time.perf_counter() - started)
        if runtime.closing:  # shutdown began while the backend was connecting
            await link.close(CloseCode.GOING_AWAY, GOING_AWAY)
            await _refuse(send, CloseCode.GOING_AWAY, GOING_AWAY)
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": link.subprotocol})
        except OSError:
            await link.close(CloseCode.GOING_AWAY, "client left")
            return
        except asyncio.CancelledError:  # uvicorn gave up on this task: do not leak the socket
            link.abort()
            raise
        conn = ProxyConnection(
            route, backend, link, scope, request.request_id, send, runtime.options
        )
        del request  # a copy of the client's headers: not kept for the connection's life
        await conn.run(receive)


async def _refuse(send: Send, code: int, reason: str) -> None:
    """Accept the handshake, then close at once with ``code``: what browsers can see."""
    try:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": short_reason(reason)})
    except OSError:
        pass  # the client already left


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def create_app(settings: Settings) -> GatewayApp:
    """The gateway's ASGI app for these settings."""
    return GatewayApp(settings)
