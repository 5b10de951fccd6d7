"""Keepalive pings toward both sides, and the idle timeout."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests.backends import EchoBackend
from tests.gateway_support import (
    closed_with,
    gateway_settings,
    run_gateway,
    wait_until,
)

TIMEOUT = 20.0
# Short enough for a test, long enough that a loaded machine still answers in time.
PINGS = {"ping_interval_s": 0.2, "ping_timeout_s": 1.0}


class DeafClient:
    """A client that completes the handshake, then never answers a ping (or anything)."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.frames: list[Frame] = []

    async def run(self) -> None:
        host, port = self.protocol.uri.host, self.protocol.uri.port
        reader, writer = await asyncio.open_connection(host, port)
        self.protocol.send_request(self.protocol.connect())
        writer.write(b"".join(self.protocol.data_to_send()))
        try:
            while data := await reader.read(65536):
                self.protocol.receive_data(data)
                self.frames += [e for e in self.protocol.events_received() if isinstance(e, Frame)]
                self.protocol.data_to_send()  # the pongs: dropped on the floor
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_client_that_stops_answering_pings_is_closed_1011_and_cleaned_up() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]}, **PINGS)) as gateway:
            client = DeafClient(gateway.ws_url + "/ws/input")
            await asyncio.wait_for(client.run(), TIMEOUT)  # returns when the gateway hangs up
            close = await backend.next_close()
            await gateway.settled()
    opcodes = [frame.opcode for frame in client.frames]
    assert Opcode.PING in opcodes
    assert client.protocol.close_rcvd is not None
    assert client.protocol.close_rcvd.code == 1011
    assert close.code == 1011  # and the backend is told


async def test_a_backend_that_stops_answering_pings_is_closed_and_the_client_gets_1011() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]}, **PINGS)) as gateway:
            async with connect(gateway.ws_url + "/ws/input", ping_interval=None) as ws:
                await ws.send("!freeze")  # the backend stops reading: no pongs
                code, reason = await closed_with(ws)
            backend.thaw_all()
            await backend.next_close()
    assert code == 1011
    assert reason == "backend: keepalive ping timeout"


async def test_a_client_that_answers_pings_stays_connected() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]}, **PINGS)) as gateway:
            async with connect(gateway.ws_url + "/ws/input", ping_interval=None) as ws:
                pings = 0
                original = ws.protocol.recv_frame

                def count_pings(frame: Frame) -> None:
                    nonlocal pings
                    pings += frame.opcode is Opcode.PING
                    original(frame)  # answers it

                ws.protocol.recv_frame = count_pings  # type: ignore[method-assign]
                await ws.send("!info")
                await ws.recv()
                await wait_until(
                    lambda: pings >= 8
                )  # answered, and still open after ping_timeout_s
                await ws.send("still here")
                assert await ws.recv() == "still here"


async def test_an_idle_connection_is_closed_on_both_sides_after_idle_timeout() -> None:
    async with EchoBackend().running() as backend:
        # Long enough that the echo below beats it on a loaded machine.
        settings = gateway_settings({"input": [backend.url]}, idle_timeout_s=1.0)
        async with run_gateway(settings) as gateway:
            async with connect(gateway.ws_url + "/ws/input") as ws:
                await ws.send("hello")
                await ws.recv()
                code, reason = await closed_with(ws)
            close = await backend.next_close()
    assert (code, reason) == (1000, "idle timeout")
    assert (close.code, close.reason) == (1000, "idle timeout")


async def test_idle_timeout_is_off_by_default() -> None:
    settings = gateway_settings({"input": ["ws://127.0.0.1:1"]})
    assert settings.gateway.idle_timeout_s == 0
