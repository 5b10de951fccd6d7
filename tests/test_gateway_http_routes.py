"""The gateway's plain HTTP routes (``protocol: "http"``): requests forwarded with streamed
bodies to a real back end on an ephemeral port, refusals in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aivtuber_gateway import create_app
from tests.gateway_support import WAIT_S, gateway_settings, run_gateway
from tests.support import free_port, run_server


class Backend:
    """Echoes what reached it; streams on cue and notes when a stream is closed early."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/echo", self.echo, methods=["GET", "POST"]),
                Route("/v1/stream", self.stream, methods=["POST"]),
            ]
        )

    async def echo(self, request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "body_bytes": size,
            },
            headers={"x-backend": "yes", "connection": "keep-alive"},
        )

    async def stream(self, _: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"first piece;"
                await self.release.wait()
                yield b"second piece"
            finally:
                self.stream_closed.set()

        return StreamingResponse(body(), media_type="audio/pcm")


@contextlib.asynccontextmanager
async def gateway_to(backend_url: str, **gateway: object) -> AsyncIterator[str]:
    route = {"path": "/v1/{endpoint:path}", "protocol": "http", "backends": [backend_url]}
    settings = gateway_settings({"api": route}, **gateway)  # type: ignore[arg-type]
    async with run_gateway(settings) as running:
        yield running.http_url


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    fake = Backend()
    async with run_server(fake.app) as server:
        yield fake, server.http_url


async def test_request_and_headers_reach_the_backend_with_identity_added_and_spoofs_dropped(
    backend: tuple[Backend, str],
) -> None:
    _, url = backend
    async with gateway_to(url) as gateway, httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post(
            "/v1/echo?voice=a%20b",
            content=b"x" * 5000,
            headers={
                "x-aivtuber-tenant": "spoofed",
                "x-aivtuber-gateway-token": "guess",
                "authorization": "Bearer something",
                "user-agent": "test-agent",
            },
        )
    seen = response.json()
    assert response.status_code == 200 and response.headers["x-backend"] == "yes"
    assert "keep-alive" not in response.headers.get("connection", "")
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/v1/echo", "voice=a%20b")
    assert seen["body_bytes"] == 5000
    headers = seen["headers"]
    assert headers["user-agent"] == "test-agent"
    assert headers["x-aivtuber-client"] == "127.0.0.1"
    assert "x-aivtuber-tenant" not in headers and "x-aivtuber-gateway-token" not in headers
    assert "authorization" not in headers  # consumed by the gateway
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-request-id"]


async def test_the_answer_streams_through_and_a_client_that_leaves_closes_the_backend(
    backend: tuple[Backend, str],
) -> None:
    fake, url = backend
    async with gateway_to(url) as gateway, httpx.AsyncClient(base_url=gateway) as http:
        async with http.stream("POST", "/v1/stream") as response:
            chunks = response.aiter_raw()
            async with asyncio.timeout(WAIT_S):
                first = await anext(chunks)  # while the back end still holds the rest
        # the client closed the response early: the gateway ends the back-end request
        async with asyncio.timeout(WAIT_S):
            await fake.stream_closed.wait()
        fake.release.set()
        async with http.stream("POST", "/v1/stream") as whole:
            body = await whole.aread()
        metrics = (await http.get("/metrics")).text
    assert first == b"first piece;" and response.headers["content-type"] == "audio/pcm"
    assert body == b"first piece;second piece"
    assert 'aivtuber_gateway_http_requests_total{route="api",status="200"} 2.0' in metrics


async def test_a_backend_that_is_down_is_503_in_openais_error_shape() -> None:
    async with gateway_to(f"http://127.0.0.1:{free_port()}") as gateway:
        async with httpx.AsyncClient(base_url=gateway) as http:
            response = await http.post("/v1/audio/speech", json={"input": "hi"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable" and error["type"] == "server_error"
    assert error["message"] and error["param"] is None


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/echo", b"x" * 4096, 413, "body_too_large"),
        ("/v1/%2e%2e/metrics", b"", 400, "invalid_path"),  # decoded: /v1/../metrics
    ],
)
async def test_refusals_before_the_backend_is_asked(
    backend: tuple[Backend, str], path: str, body: bytes, status: int, code: str
) -> None:
    _, url = backend
    async with gateway_to(url, max_message_bytes=1024) as gateway:
        async with httpx.AsyncClient(base_url=gateway) as http:
            request = http.build_request("POST", gateway + "/v1/echo", content=body)
            request.url = request.url.copy_with(raw_path=path.encode())
            response = await http.send(request)
            still = await http.get("/v1/echo")
    assert response.status_code == status
    assert json.loads(response.content)["error"]["code"] == code
    assert still.status_code == 200


async def test_the_gateways_own_endpoints_win_over_a_catch_all_http_route(
    backend: tuple[Backend, str],
) -> None:
    _, url = backend
    route = {"path": "/{anything:path}", "protocol": "http", "backends": [url]}
    async with run_gateway(gateway_settings({"api": route})) as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url) as http:
            health = await http.get("/healthz")
            echoed = await http.get("/v1/echo")
    assert health.json() == {"status": "ok"}
    assert echoed.json()["path"] == "/v1/echo"


async def test_a_client_that_stops_reading_is_cut_off_and_the_backend_request_closed(
    backend: tuple[Backend, str],
) -> None:
    """The gateway app driven on its ASGI interface: the client's ``send`` never completes
    after the first piece, as with a peer whose socket buffer is full and never drained."""
    fake, url = backend
    route = {"path": "/v1/{endpoint:path}", "protocol": "http", "backends": [url]}
    settings = gateway_settings({"api": route}, ping_timeout_s=0.2)  # type: ignore[arg-type]
    app = create_app(settings)
    sent: list[dict[str, object]] = []
    stuck = asyncio.Event()  # never set

    async def receive() -> dict[str, object]:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await stuck.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await stuck.wait()

    async with run_server(app):  # its lifespan opens the forwarder's client
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(WAIT_S):
                await app(asgi_scope("/v1/stream"), receive, send)
                await fake.stream_closed.wait()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert any(entry["event"] == "client_stalled" for entry in logs)


async def test_a_client_that_leaves_while_sending_its_body_aborts_the_backend_request(
    backend: tuple[Backend, str],
) -> None:
    _, url = backend
    route = {"path": "/v1/{endpoint:path}", "protocol": "http", "backends": [url]}
    app = create_app(gateway_settings({"api": route}))  # type: ignore[dict-item]
    messages = iter(
        [
            {"type": "http.request", "body": b"x" * 100, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async with run_server(app):
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(WAIT_S):
                await app(asgi_scope("/v1/echo"), receive, send)
    assert sent == []  # nobody to answer, and the back end never saw a whole request
    [request] = [entry for entry in logs if entry["event"] == "http_request"]
    assert request["status"] == 0 and request["bytes_in"] == 100


def asgi_scope(path: str) -> dict[str, object]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
    }
