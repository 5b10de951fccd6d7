"""Finding 3: refused connections cost nothing.

After a 4401/4403/4429 the gateway reads at most a small budget and closes the TCP
connection within about a second (it used to read on for 10 s, up to the server-wide
16 MiB); connections without a verdict are capped globally and per address; the
server-wide message ceiling is the largest WebSocket route's limit; a frame that declares
more than its route allows is refused at its header, on the fast path too.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.config import GatewaySettings, Settings
from aivtuber_gateway.pending import REFUSED_READ_BUDGET
from aivtuber_gateway.server import uvicorn_overrides
from tests.backends import EchoBackend
from tests.edge_support import ALICE_KEY, edge_settings
from tests.gateway_support import WAIT_S, closed_with, run_gateway, wait_until

MIB = 1024 * 1024
BOTH_PATHS = pytest.mark.parametrize(
    "fast_path_mode", ["auto", "off"], ids=["fast", "plain"], indirect=True
)


def _upgrade(path: str = "/ws/echo", extra: bytes = b"") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"Sec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )


def _frame_head(length: int, opcode: int = 0x2) -> bytes:
    """A masked client frame's header declaring ``length`` payload bytes."""
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length) + b"\x00\x00\x00\x00"


async def _read_until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the gateway ends the connection (a reset, since the client's data
    was left unread, ends it too)."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


async def _flood_until_closed(writer: asyncio.StreamWriter, limit: int) -> int:
    """Send zeros until the gateway cuts the connection (or ``limit`` bytes); the count."""
    sent = 0
    chunk = bytes(64 * 1024)
    try:
        while sent < limit:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass
    return sent


@BOTH_PATHS
async def test_a_refused_client_is_cut_off_within_a_second_whatever_it_sends() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(_upgrade())  # no credential: 4401
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101")
                # A 16 MiB message, as the re-audit sent: the gateway must not take it in.
                writer.write(_frame_head(16 * MIB))
                async with asyncio.timeout(WAIT_S):
                    sent, rest = await asyncio.gather(
                        _flood_until_closed(writer, 16 * MIB), _read_until_eof(reader)
                    )
            finally:
                writer.close()
    # The close frame 4401 came first; then the connection ended long before 16 MiB.
    assert rest[0] == 0x88
    assert struct.unpack("!H", rest[2:4])[0] == AppCloseCode.UNAUTHORIZED
    assert sent < 16 * MIB


@BOTH_PATHS
async def test_a_refused_client_that_sends_nothing_is_closed_without_waiting_for_it() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(_upgrade())
                await reader.readuntil(b"\r\n\r\n")
                # The client never answers the close frame; uvicorn waits 10 s for it. The
                # gateway closes its socket within REFUSED_CLOSE_S (1 s): 5 s is plenty.
                async with asyncio.timeout(5):
                    rest = await _read_until_eof(reader)
            finally:
                writer.close()
    assert rest[0] == 0x88


@BOTH_PATHS
async def test_a_refused_client_is_cut_off_once_it_sends_more_than_the_budget() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(_upgrade())
                await reader.readuntil(b"\r\n\r\n")
                # Small frames, each under any limit: only the budget stops them.
                frame = bytes([0x82, 0x80 | 100]) + b"\x00\x00\x00\x00" + bytes(100)
                with capture_logs() as logs:
                    writer.write(frame * (4 * REFUSED_READ_BUDGET // len(frame)))
                    async with asyncio.timeout(5):
                        await _read_until_eof(reader)
            finally:
                writer.close()
    # Cut off for the budget, not at the 1 s timer.
    assert [e for e in logs if e["event"] == "refused_client_cut_off"]


@BOTH_PATHS
async def test_connections_without_a_verdict_are_capped_per_address() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url)
        gateway_settings = settings.gateway.model_copy(update={"max_pending_per_address": 3})
        settings = settings.model_copy(update={"gateway": gateway_settings})
        async with run_gateway(settings) as gateway:
            idle = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(3)]
            try:
                # A fourth one from the same address is closed at once, unread.
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                async with asyncio.timeout(WAIT_S):
                    assert await reader.read() == b""
                writer.close()
                # A keyed client waits like anyone while the address is full...
                for _, idle_writer in idle:
                    idle_writer.close()
                await wait_until(lambda: _pending(gateway) == 0)
                # ...and gets through once the pending ones are gone.
                async with connect(
                    f"{gateway.ws_url}/ws/echo", additional_headers={"X-Api-Key": ALICE_KEY}
                ) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
            finally:
                for _, idle_writer in idle:
                    idle_writer.close()


@BOTH_PATHS
async def test_refused_connections_leave_the_pending_count_once_closed() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            for _ in range(5):
                async with connect(f"{gateway.ws_url}/ws/echo") as ws:
                    assert (await closed_with(ws))[0] == AppCloseCode.UNAUTHORIZED
            await wait_until(lambda: _pending(gateway) == 0)


def test_the_server_wide_message_ceiling_is_the_largest_websocket_routes_limit() -> None:
    # Default routes: input and output 1 MiB; the HTTP route does not count.
    assert uvicorn_overrides(GatewaySettings())["ws_max_size"] == MIB
    # The shipped config.json lists its routes without max_message_bytes.
    shipped = Settings.model_validate(
        {
            "gateway": {
                "routes": {
                    "input": {"path": "/ws/input", "backends": ["ws://127.0.0.1:8001"]},
                    "output": {"path": "/ws/output/{task_id}", "backends": ["ws://h:8002"]},
                }
            }
        }
    )
    assert uvicorn_overrides(shipped.gateway)["ws_max_size"] == MIB


@BOTH_PATHS
async def test_a_frame_declaring_more_than_its_route_allows_is_refused_at_its_header() -> None:
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url, tenants=False)
        routes = dict(settings.gateway.routes)
        routes["echo"] = routes["echo"].model_copy(update={"max_message_bytes": MIB})
        # Another route allows 8 MiB, so the server-wide ceiling is 8 MiB.
        routes["output"] = routes["output"].model_copy(update={"max_message_bytes": 8 * MIB})
        settings = settings.model_copy(
            update={"gateway": settings.gateway.model_copy(update={"routes": routes})}
        )
        async with run_gateway(settings) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(_upgrade())
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_frame_head(4 * MIB))  # header only: the payload never comes
                async with asyncio.timeout(WAIT_S):
                    first = await reader.readexactly(4)
            finally:
                writer.close()
    assert first[0] == 0x88  # a close frame, sent without waiting for the 4 MiB
    assert struct.unpack("!H", first[2:4])[0] == 1009


def _pending(gateway: object) -> int:
    """Connections the running gateway's pending gate counts."""
    overrides = gateway.server.server.config  # type: ignore[attr-defined]
    gate = overrides.ws_protocol_class.gate
    return int(gate.total)
