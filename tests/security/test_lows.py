"""The Lows of issue 15: credentials kept from the back ends, Retry-After on 429s, a 500
that spoils no one's next request."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect

from aivtuber_common.config import RouteSettings, Settings
from tests.backends import EchoBackend
from tests.edge_support import ADMIN_KEY, ALICE_KEY, backend_info, edge_settings, header_values
from tests.gateway_support import closed_with, run_gateway
from tests.support import run_server


class HttpBackend:
    """Echoes the headers it got; ``/v1/boom`` fails with a 500 (a bug in a back end)."""

    def __init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/v1/echo", self.echo, methods=["GET", "POST"]),
                Route("/v1/boom", self.boom, methods=["POST"]),
            ]
        )

    async def echo(self, request: Request) -> Response:
        await request.body()
        return JSONResponse({"headers": dict(request.headers)})

    async def boom(self, request: Request) -> Response:
        await request.body()
        raise RuntimeError("a bug")


def with_http_route(settings: Settings, url: str) -> Settings:
    routes = dict(settings.gateway.routes)
    routes["api"] = RouteSettings.model_validate(
        {"path": "/v1/{endpoint:path}", "protocol": "http", "backends": [url]}
    )
    gateway = settings.gateway.model_copy(update={"routes": routes})
    return settings.model_copy(update={"gateway": gateway})


async def test_no_client_credential_reaches_a_back_end_on_either_route() -> None:
    async with EchoBackend().running() as ws_backend, run_server(HttpBackend().app) as http_backend:
        settings = edge_settings(ws_backend.url, admin_key=ADMIN_KEY)
        async with run_gateway(with_http_route(settings, http_backend.http_url)) as gateway:
            admin = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Api-Key": ALICE_KEY}
            async with connect(f"{gateway.ws_url}/ws/echo", additional_headers=admin) as ws:
                info = await backend_info(ws)
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                echoed = (await http.get("/v1/echo", headers={"X-Api-Key": ALICE_KEY})).json()
    # Before: the admin key (WebSocket route) and X-Api-Key (HTTP route) were passed on.
    assert not header_values(info, "authorization") and not header_values(info, "x-api-key")
    assert "x-api-key" not in echoed["headers"] and "authorization" not in echoed["headers"]
    assert echoed["headers"]["x-aivtuber-tenant"] == "alice"


async def test_every_429_carries_retry_after() -> None:
    async with EchoBackend().running() as ws_backend, run_server(HttpBackend().app) as http_backend:
        settings = edge_settings(ws_backend.url, limits={"max_connections": 1})
        async with run_gateway(with_http_route(settings, http_backend.http_url)) as gateway:
            key = {"Authorization": f"Bearer {ALICE_KEY}"}
            async with connect(f"{gateway.ws_url}/ws/echo", additional_headers=key) as held:
                await backend_info(held)
                async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                    over = await http.get("/v1/echo", headers=key)
                async with connect(f"{gateway.ws_url}/ws/echo", additional_headers=key) as ws:
                    assert (await closed_with(ws))[0] == 4429
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= 1  # before: no Retry-After


class ClosingBackend:
    """Answers the first request on each connection without "Connection: close", then
    closes the connection when the next request arrives on it, as a back end does after a
    500 that Starlette answered: a pooled connection that dies under the next request."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            if b"chunked" in head.lower():
                await reader.readuntil(b"0\r\n\r\n")  # the last chunk
            else:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read(1)  # the next request on this connection: hang up on it
        finally:
            writer.close()


async def test_a_pooled_connection_that_died_is_replaced_not_a_503() -> None:
    fake = ClosingBackend()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        settings = with_http_route(edge_settings("ws://127.0.0.1:9", tenants=False), url)
        async with run_gateway(settings) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                answers = [
                    (await http.post("/v1/speech", content=b'{"input": "Hi"}')).status_code
                    for _ in range(3)
                ]
    finally:
        server.close()
        await server.wait_closed()
    assert answers == [200, 200, 200]  # before: 200, 503, 200
    assert fake.connections >= 3


def test_the_speech_apis_429s_say_when_the_limit_has_room() -> None:
    from aivtuber_common.refusal import RETRY_AFTER_S
    from aivtuber_input.openai_api import error_for_code

    refusal = error_for_code("rate_limited", "Too many requests.")
    refusal.retry_after_s = 7
    unknown = error_for_code("rate_limited", "Too many unfinished tasks.")  # no time known
    assert refusal.response().headers["retry-after"] == "7"
    assert unknown.response().headers["retry-after"] == str(RETRY_AFTER_S)
