"""The gateway forwards messages exactly, both ways at once, with bounded buffering, and
passes close codes on. Real sockets: uvicorn on an ephemeral port, a websockets backend."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from websockets.asyncio.client import ClientConnection, connect

from aivtuber_common.config import MIB
from tests.backends import EchoBackend, burst_message
from tests.gateway_support import (
    closed_with,
    gateway_settings,
    run_gateway,
    wait_until,
)

TIMEOUT = 20.0


async def test_text_stays_text_binary_stays_binary_and_order_is_kept() -> None:
    messages: list[str | bytes] = []
    for index in range(200):
        messages.append(f"message {index} ✓ ünïcödé 🎤")
        messages.append(struct.pack("!I", index) + bytes(range(256)))
    messages += ["", b"", "日本語のテキスト", b"\x00" * 10, "{}"]
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input", compression=None) as ws:
                sender = asyncio.create_task(_send_all(ws, messages))
                received = [await ws.recv() for _ in messages]
                await sender
    assert received == messages
    assert [type(m) for m in received] == [type(m) for m in messages]


async def _send_all(ws: ClientConnection, messages: list[str | bytes]) -> None:
    for message in messages:
        await ws.send(message)


async def test_a_message_of_the_default_maximum_size_arrives_byte_identical() -> None:
    # Default limit: 16 MiB, on both hops.
    big = bytes(range(256)) * (16 * MIB // 256)
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input", max_size=None) as ws:
                await ws.send(big)
                echoed = await ws.recv()
                await ws.send("é" * (64 * 1024))  # big non-ASCII text too
                text = await ws.recv()
    assert echoed == big
    assert text == "é" * (64 * 1024)


async def test_a_client_message_over_the_limit_closes_the_client_with_1009() -> None:
    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, max_message_bytes=64 * 1024)
        async with run_gateway(settings) as gateway:
            async with connect(gateway.ws_url + "/ws/input", max_size=None) as ws:
                await ws.send(b"x" * (64 * 1024))  # exactly the limit passes
                assert len(await ws.recv()) == 64 * 1024
                await ws.send(b"x" * (64 * 1024 + 1))
                code, _ = await closed_with(ws)
            backend_close = await backend.next_close()
    assert code == 1009
    assert backend_close.code == 1009  # the backend learns why the connection ended


async def test_a_backend_message_over_the_limit_closes_both_sides_with_1009() -> None:
    async with EchoBackend().running() as backend:
        settings = gateway_settings({"input": [backend.url]}, max_message_bytes=64 * 1024)
        async with run_gateway(settings) as gateway:
            async with connect(gateway.ws_url + "/ws/input", max_size=None) as ws:
                await ws.send(f"!burst 1 {64 * 1024 + 1}")
                code, reason = await closed_with(ws)
            backend_close = await backend.next_close()
    assert code == 1009
    assert reason is not None and reason.startswith("backend")
    assert backend_close.code == 1009


async def test_permessage_deflate_is_off_on_both_hops_by_default() -> None:
    async with EchoBackend(compression="deflate").running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            # The client offers deflate (websockets' default); the gateway declines.
            async with connect(gateway.ws_url + "/ws/input", compression="deflate") as ws:
                client_extensions = [ext.name for ext in ws.protocol.extensions]
                await ws.send("!info")
                info = await _json(ws)
    assert client_extensions == []
    assert info["extensions"] == []


async def test_compression_can_be_turned_on_per_route() -> None:
    async with EchoBackend(compression="deflate").running() as backend:
        routes = {
            "input": {"path": "/ws/input", "backends": [backend.url], "compression": True},
            "plain": {"path": "/ws/plain", "backends": [backend.url]},
        }
        async with run_gateway(gateway_settings(routes)) as gateway:
            async with connect(gateway.ws_url + "/ws/input", compression="deflate") as ws:
                client_extensions = [ext.name for ext in ws.protocol.extensions]
                await ws.send("!info")
                info = await _json(ws)
                await ws.send("compressible " * 1000)
                assert await ws.recv() == "compressible " * 1000
            async with connect(gateway.ws_url + "/ws/plain") as ws:
                await ws.send("!info")
                plain = await _json(ws)
    assert info["extensions"] == ["permessage-deflate"]
    assert client_extensions == ["permessage-deflate"]
    assert plain["extensions"] == []  # the backend hop stays per route


async def test_both_directions_flow_at_the_same_time() -> None:
    count, size = 300, 4096
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("!sink")
                await ws.send(f"!burst {count} {size}")
                # While the backend streams to us, we stream to it.
                uploads = asyncio.create_task(
                    _send_all(ws, [burst_message(i, size) for i in range(count)])
                )
                received = [await ws.recv() for _ in range(count)]
                await uploads
                await wait_until(lambda: backend.received_bytes == count * size)
    assert received == [burst_message(i, size) for i in range(count)]


def _small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


# Bounded buffering: what the gateway has read from one side but the other side has not
# received is at most the kernel's send buffer toward the slow side (at most 4 MiB here,
# net.ipv4.tcp_wmem) plus a few queued messages. Without backpressure it would be
# everything the fast side sent (48 MiB).
IN_FLIGHT_BOUND = 12 * MIB
TOTAL_MESSAGES = 48


async def test_a_slow_backend_slows_the_client_instead_of_filling_memory() -> None:
    async with EchoBackend(rcvbuf=64 * 1024).running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            sock = _small_buffer_socket(gateway.port)
            async with connect(gateway.ws_url + "/ws/input", sock=sock, max_size=None) as ws:
                await ws.send("!sink")
                await ws.send("!freeze")  # the backend stops reading
                conn = gateway.only_connection()
                message = b"m" * MIB
                sender = asyncio.create_task(_send_all(ws, [message] * TOTAL_MESSAGES))
                await wait_until(lambda: conn.bytes_in >= 2 * MIB)
                # Backpressure engaged: the backend's write buffer is full, and the gateway
                # stopped reading the client until it drains. A gateway without it would
                # keep reading (and never pause the client's socket).
                client = gateway.client_protocol()
                await wait_until(lambda: conn._link.write_paused and client.read_paused)
                assert not sender.done(), "the client could send everything: nothing pushed back"
                assert conn.bytes_in - backend.received_bytes <= IN_FLIGHT_BOUND
                backend.thaw_all()
                await asyncio.wait_for(sender, TIMEOUT)
                await wait_until(lambda: backend.received_bytes == TOTAL_MESSAGES * MIB)


async def test_a_slow_client_slows_the_backend_instead_of_filling_memory() -> None:
    size = MIB
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            sock = _small_buffer_socket(gateway.port)
            async with connect(
                gateway.ws_url + "/ws/input", sock=sock, max_size=None, max_queue=1
            ) as ws:
                await ws.send(f"!burst {TOTAL_MESSAGES} {size}")
                conn = gateway.only_connection()
                await wait_until(lambda: conn.bytes_out >= 2 * MIB)
                # Backpressure engaged: the client's socket is not writable, and the link
                # stopped reading the backend (MAX_QUEUE messages wait for the client).
                client = gateway.client_protocol()
                await wait_until(lambda: conn._link._read_paused and not client.writable.is_set())
                assert backend.burst_sent < TOTAL_MESSAGES
                # Not yet read by the client: one queued message and the kernel buffers.
                assert conn.bytes_out <= IN_FLIGHT_BOUND
                received = [await ws.recv() for _ in range(TOTAL_MESSAGES)]
    assert received == [burst_message(i, size) for i in range(TOTAL_MESSAGES)]


async def test_the_backends_close_code_and_reason_reach_the_client() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("!close 4000 bye")
                assert await closed_with(ws) == (4000, "bye")
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("!close 1000")
                assert await closed_with(ws) == (1000, "")


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4001, "user left"), (1001, "tab")])
async def test_the_clients_close_code_and_reason_reach_the_backend(code: int, reason: str) -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("ping")
                await ws.recv()
                await ws.close(code, reason)
            close = await backend.next_close()
    assert (close.code, close.reason) == (code, reason)


async def test_a_client_that_vanishes_is_reported_to_the_backend_as_1011() -> None:
    # 1006 (no close frame, connection lost) cannot be sent: it becomes 1011.
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            ws = await connect(gateway.ws_url + "/ws/input")
            await ws.send("hello")
            await ws.recv()
            ws.transport.abort()
            close = await backend.next_close()
            await ws.wait_closed()
    assert close.code == 1011
    assert close.reason == "client connection lost"


async def test_a_close_frame_without_a_code_reaches_the_backend_as_1000() -> None:
    # 1005 (no status code) cannot be sent: it becomes 1000.
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("hello")
                await ws.recv()
                ws.protocol.send_close()  # no code at all
                ws.send_data()
                await ws.wait_closed()
            close = await backend.next_close()
    assert close.code == 1000


async def test_a_backend_that_vanishes_is_reported_to_the_client_as_1011() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("!abort")
                code, reason = await closed_with(ws)
            await backend.next_close()
    assert code == 1011
    assert reason == "backend connection lost"


async def test_every_connection_is_removed_from_the_registry_however_it_ends() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            endings = ["!close 4000 bye", "!abort", "client-close", "client-abort"]
            for ending in endings:
                ws = await connect(gateway.ws_url + "/ws/input")
                await ws.send("hi")
                await ws.recv()
                assert len(gateway.registry) == 1
                if ending == "client-close":
                    await ws.close()
                elif ending == "client-abort":
                    ws.transport.abort()
                else:
                    await ws.send(ending)
                await closed_with(ws)
                await gateway.settled()  # registry empty, no proxy task left
                await backend.next_close()
            assert backend.live == {}
            totals = gateway.registry.totals["input"]
            assert totals.opened == len(endings)
            assert totals.messages_in == 2 * len(endings) - 2  # the two client endings
            assert totals.messages_out == len(endings)


async def _json(ws: ClientConnection) -> dict:  # type: ignore[type-arg]
    return json.loads(await ws.recv())  # type: ignore[no-any-return]
