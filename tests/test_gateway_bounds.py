"""Memory bounds at the gateway, whatever a client sends: message and fragment caps per
route, request heads capped in size and time, a refused upgrade really answered."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import Settings, load_settings
from aivtuber_gateway.bounds import FRAGMENT_OVERHEAD
from aivtuber_gateway.routing import RouteTable
from bench.edge_memory import (
    MB,
    MIB,
    EdgeMemoryParams,
    fragment_attack,
    gateway_under_attack,
    header_attack,
    run_edge_memory,
)
from tests.backends import EchoBackend
from tests.gateway_support import WAIT_S, closed_with, gateway_settings, run_gateway

ATTACKERS = 30
# What the issue measured before these bounds: +518 MB (30 x 15 MB fragments), +300 MB
# (30 x 10 MB header blocks). Bounded now by 30 x the 1 MiB input limit (held by uvicorn, and
# at most one more frame being read) plus allocator slack, and by 30 x one socket read.
FRAGMENT_GROWTH_LIMIT_MB = 100
HEADER_GROWTH_LIMIT_MB = 40


async def _raw_request(port: int, head: bytes) -> bytes:
    """Send ``head``; everything the gateway answers until it ends the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        async with asyncio.timeout(WAIT_S):
            return await reader.read()  # to EOF: the gateway must end the connection
    finally:
        writer.close()


def _upgrade(extra: bytes = b"") -> bytes:
    return (
        b"GET /ws/input HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


async def test_an_upgrade_with_an_over_long_header_line_receives_431_and_is_closed() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            # Under the 16 KiB head limit, over websockets' 8 KiB line limit.
            answer = await _raw_request(gateway.port, _upgrade(b"X-Long: " + b"a" * 9000 + b"\r\n"))
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_request_head_over_16_kib_receives_431_and_is_closed() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
            answer = await _raw_request(gateway.port, _upgrade(headers))
            plain = await _raw_request(
                gateway.port, b"GET /healthz HTTP/1.1\r\nHost: g\r\n" + headers + b"\r\n"
            )
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert plain.startswith(b"HTTP/1.1 431 ")


async def test_a_request_head_not_finished_in_time_receives_408_and_is_closed() -> None:
    async with EchoBackend().running() as backend:
        # Long enough that the complete head below beats it on a loaded machine.
        settings = gateway_settings({"input": [backend.url]}, head_timeout_s=1.0)
        async with run_gateway(settings) as gateway:
            answer = await _raw_request(gateway.port, b"GET /ws/input HTTP/1.1\r\nHost: g\r\n")
            # A complete head in time is served as before.
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("still served")
                assert await ws.recv() == "still served"
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_message_over_the_routes_own_limit_closes_with_1009() -> None:
    async with EchoBackend().running() as backend:
        route = {"path": "/ws/input", "backends": [backend.url], "max_message_bytes": 4096}
        # The gateway-wide limit is far larger: the route's own applies.
        settings = gateway_settings({"input": route}, max_message_bytes=MIB)
        async with run_gateway(settings) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send(b"x" * 4096)
                assert len(await ws.recv()) == 4096
                await ws.send(b"x" * 4097)
                code, _ = await closed_with(ws)
            await backend.next_close()
    assert code == 1009


# "Endless": ten times the empty fragments the 64 KiB cap allows (FRAGMENT_OVERHEAD each).
# Not 100 000: sending those alone took over 15 s on a loaded machine, past the close wait.
ENDLESS = 10 * 64 * 1024 // FRAGMENT_OVERHEAD


async def test_endless_empty_fragments_close_the_client_with_1009() -> None:
    async def empty_fragments(count: int):  # type: ignore[no-untyped-def]
        yield b"x"
        for _ in range(count):
            yield b""

    async with EchoBackend().running() as backend:
        route = {"path": "/ws/input", "backends": [backend.url], "max_message_bytes": 64 * 1024}
        async with run_gateway(gateway_settings({"input": route})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                # Empty fragments never reach a payload limit; each one still costs memory.
                sending = asyncio.create_task(ws.send(empty_fragments(ENDLESS)))
                code, reason = await closed_with(ws)
                sending.cancel()
                # Cancelled, or it ended on the closed connection: either way it is over.
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sending
            await backend.next_close()
    assert code == 1009
    assert reason == f"fragmented message over {64 * 1024} bytes"


async def test_the_gateway_process_rss_stays_bounded_under_fragment_and_header_attacks(
    tmp_path: Path,
) -> None:
    with gateway_under_attack(tmp_path) as (gateway, port):
        url = f"ws://127.0.0.1:{port}/ws/input"
        # Warm the paths first: first-use allocations are not what is measured.
        async with fragment_attack(url, 2, 64 * 1024):
            pass
        async with header_attack("127.0.0.1", port, 2, 64 * 1024):
            pass
        before = gateway.rss_bytes()
        async with fragment_attack(url, ATTACKERS, 15 * MB) as fragments:
            held = gateway.rss_bytes()
        fragment_growth = (held - before) / MB
        before = gateway.rss_bytes()
        async with header_attack("127.0.0.1", port, ATTACKERS, 10 * MB) as heads:
            held = gateway.rss_bytes()
        header_growth = (held - before) / MB
    print(f"gateway RSS growth: fragments {fragment_growth:.1f} MB, heads {header_growth:.1f} MB")
    assert fragments.closed_by_gateway == ATTACKERS
    assert set(fragments.answers) <= {"1009", "reset"}
    assert heads.closed_by_gateway == ATTACKERS
    assert all(answer.startswith("HTTP/1.1 431 ") for answer in heads.answers)
    assert fragment_growth < FRAGMENT_GROWTH_LIMIT_MB
    assert header_growth < HEADER_GROWTH_LIMIT_MB


def test_each_default_route_is_limited_to_what_its_backend_accepts(tmp_path: Path) -> None:
    settings = Settings()
    routes = {route.name: route for route in RouteTable(settings.gateway)}
    assert routes["input"].max_message_bytes == settings.input_handler.max_message_bytes == MIB
    assert routes["output"].max_message_bytes == MIB
    # A route without its own key takes the gateway-wide limit.
    custom = gateway_settings({"echo": ["ws://127.0.0.1:1"]}, max_message_bytes=2 * MIB)
    assert next(iter(RouteTable(custom.gateway))).max_message_bytes == 2 * MIB
    # Pointing a default route elsewhere keeps its limit.
    (tmp_path / "config.json").write_text("{}")
    moved = load_settings(tmp_path / "config.json", environ={"INPUT_HANDLER_URL": "ws://h:1"})
    assert moved.gateway.routes["input"].max_message_bytes == MIB


def test_the_edge_memory_benchmark_part_reports_rss_under_both_attacks(tmp_path: Path) -> None:
    result = run_edge_memory(tmp_path, EdgeMemoryParams.smoke())
    assert {"baseline_mb", "fragments_mb", "headers_mb"} <= set(result)
    assert result["fragments"]["closed_by_gateway"] == result["fragments"]["conns"]
    assert result["headers"]["closed_by_gateway"] == result["headers"]["conns"]


async def test_endless_empty_fragments_from_a_backend_close_both_sides_with_1009() -> None:
    async def fragments():  # type: ignore[no-untyped-def]
        yield b"x"
        for _ in range(ENDLESS):
            yield b""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(fragments())
        await ws.wait_closed()
        closes.put_nowait(ws.close_code)

    closes: asyncio.Queue[int | None] = asyncio.Queue()
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        route = {"path": "/ws/input", "backends": [f"ws://127.0.0.1:{port}"]}
        route["max_message_bytes"] = 64 * 1024  # type: ignore[assignment]
        async with run_gateway(gateway_settings({"input": route})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("go")
                code, reason = await closed_with(ws)
        backend_code = await asyncio.wait_for(closes.get(), WAIT_S)
    assert code == 1009
    assert reason == f"backend: fragmented message over {64 * 1024} bytes"
    assert backend_code == 1009
