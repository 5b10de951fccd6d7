"""Running the gateway in a test: in-process on an ephemeral port, like the services run it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import GatewaySettings, LoggingSettings, RouteSettings, Settings
from aivtuber_gateway import GatewayApp, create_app
from aivtuber_gateway.app import Runtime
from aivtuber_gateway.clientside import GatewayWebSocketProtocol
from aivtuber_gateway.proxy import ProxyConnection
from aivtuber_gateway.registry import Registry
from aivtuber_gateway.server import uvicorn_overrides
from tests.support import RunningServer, run_server, wait_until

WAIT_S = 15.0
# gateway.fast_path of the gateways gateway_settings() builds: set per test by the
# fast_path_mode fixture (tests/conftest.py), so that the whole suite runs in both modes.
FAST_PATH = "auto"


def gateway_settings(
    routes: dict[str, list[str] | str | dict[str, Any]],
    level: str = "info",
    **gateway: Any,
) -> Settings:
    """Settings for a gateway whose routes are ``name -> backends`` (path /ws/<name>) or
    ``name -> full route dict``."""
    built: dict[str, RouteSettings] = {}
    for name, spec in routes.items():
        if isinstance(spec, dict):
            built[name] = RouteSettings.model_validate(spec)
        else:
            built[name] = RouteSettings(path=f"/ws/{name}", backends=spec)  # type: ignore[arg-type]
    return Settings(
        logging=LoggingSettings(level=level),  # type: ignore[arg-type]
        gateway=GatewaySettings(routes=built, **{"fast_path": FAST_PATH, **gateway}),
    )


class RunningGateway:
    def __init__(self, server: RunningServer, app: GatewayApp) -> None:
        self.server = server
        self.app = app
        self.port = server.port
        self.http_url = server.http_url
        self.ws_url = server.ws_url

    @property
    def runtime(self) -> Runtime:
        """The running gateway, from the lifespan state uvicorn keeps."""
        runtime: Runtime = self.server.server.lifespan.state["runtime"]
        return runtime

    @property
    def registry(self) -> Registry[ProxyConnection]:
        return self.runtime.registry

    def only_connection(self) -> ProxyConnection:
        connections = list(self.registry)
        assert len(connections) == 1, connections
        return connections[0]

    def client_protocol(self) -> Any:
        """uvicorn's protocol object of the one open WebSocket client connection."""
        (protocol,) = [
            conn for conn in self.server.server.server_state.connections if hasattr(conn, "conn")
        ]
        return protocol

    async def settled(self) -> None:
        """Wait until no proxied connection is left and every task uvicorn started for a
        connection (the ASGI task, which owns and awaits the connection's other tasks) has
        ended: uvicorn's own record of them, its ServerState."""
        await wait_until(lambda: len(self.registry) == 0)
        await wait_until(lambda: not self.server.server.server_state.tasks)


@contextlib.asynccontextmanager
async def run_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    app = create_app(settings)
    overrides = uvicorn_overrides(settings.gateway)
    # The mode asked for is the mode tested: "auto" must not quietly fall back to plain.
    fast = issubclass(overrides["ws"], GatewayWebSocketProtocol)
    assert fast is (settings.gateway.fast_path == "auto"), overrides["ws"]
    async with run_server(app, **overrides) as server:
        gateway = RunningGateway(server, app)
        yield gateway
        # Every test ends with nothing leaked: registry empty, proxy tasks gone.
        await gateway.settled()


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the connection closes; the code and reason the client received."""
    async with asyncio.timeout(WAIT_S):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code, ws.close_reason
