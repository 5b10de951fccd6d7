"""The gateway's own framing (its fast path past websockets' parser) reads and writes exactly
what websockets does: every length encoding, frames cut anywhere by TCP, fragments, pings,
and bad UTF-8 handed back to websockets' rules."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.utils import accept_key

from aivtuber_common.config import GatewaySettings
from aivtuber_gateway.clientside import GatewayWebSocketProtocol
from aivtuber_gateway.framing import BINARY, TEXT, encode_frame, scan_frame
from aivtuber_gateway.link import BackendLink
from aivtuber_gateway.server import uvicorn_overrides
from tests.backends import EchoBackend
from tests.gateway_support import gateway_settings, run_gateway

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]
TIMEOUT = 20.0


@pytest.mark.parametrize("size", SIZES)
def test_client_frames_written_here_are_read_by_websockets_byte_identical(size: int) -> None:
    server = ServerProtocol(state=OPEN, max_size=None)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    server.receive_data(b"".join(encode_frame(BINARY, payload)))
    server.receive_data(b"".join(encode_frame(TEXT, "é".encode() * (size // 2))))
    frames = server.events_received()
    assert [(f.opcode, bytes(f.data)) for f in frames] == [  # type: ignore[union-attr]
        (Opcode.BINARY, payload),
        (Opcode.TEXT, "é".encode() * (size // 2)),
    ]
    assert server.parser_exc is None


@pytest.mark.parametrize("size", SIZES)
def test_server_frames_written_here_are_read_by_websockets_byte_identical(size: int) -> None:
    client = ClientProtocol(parse_uri("ws://x/"), state=OPEN, max_size=None)
    payload = b"\x07" * size
    client.receive_data(b"".join(encode_frame(BINARY, payload, mask=False)))
    (frame,) = client.events_received()
    assert isinstance(frame, Frame) and bytes(frame.data) == payload
    assert client.parser_exc is None


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_is_found_complete_only_once_all_its_bytes_are_there(size: int) -> None:
    frame = b"".join(encode_frame(TEXT, b"a" * size, mask=False))
    for cut in range(0, len(frame), max(1, len(frame) // 7)):
        _, _, end = scan_frame(frame[:cut], 0)
        assert end == -1 or end > cut
    assert scan_frame(frame, 0) == (TEXT, len(frame) - size, len(frame))


class FakeTransport:
    """What BackendLink writes, without a socket."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.written += chunk

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _server_stream(key: str) -> tuple[bytes, list[str | bytes]]:
    """A 101 response for ``key`` followed by frames of every kind, and the messages in it."""
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()
    server = ServerProtocol(state=OPEN)
    server.send_text(b"first, right behind the head")
    server.send_ping(b"ping")
    server.send_binary(b"\x01" * 126)
    server.send_text(b"frag", fin=False)
    server.send_continuation("mented ✓".encode(), fin=True)
    server.send_binary(b"\x02" * 70000)
    server.send_text(b"")
    messages: list[str | bytes] = [
        "first, right behind the head",
        b"\x01" * 126,
        "fragmented ✓",
        b"\x02" * 70000,
        "",
    ]
    return head + b"".join(server.data_to_send()), messages


@pytest.mark.parametrize("chunk", [1, 3, 1000, 1 << 20])
async def test_the_backend_link_reads_every_frame_however_tcp_cuts_the_bytes(chunk: int) -> None:
    protocol = ClientProtocol(parse_uri("ws://x/"), max_size=None)
    link = BackendLink(protocol, asyncio.get_running_loop())
    transport = FakeTransport()
    link.connection_made(transport)
    link.start([("x-test", "1")])
    assert b"x-test: 1" in transport.written
    stream, messages = _server_stream(protocol.key)
    for start in range(0, len(stream), chunk):
        link.data_received(stream[start : start + chunk])
    await asyncio.wait_for(link.wait_open(), TIMEOUT)
    assert link.fast
    received = [await asyncio.wait_for(link.recv(), TIMEOUT) for _ in messages]
    assert received == messages
    # The ping was answered: a masked pong with its payload went out.
    reader = ServerProtocol(state=OPEN)
    head_end = transport.written.index(b"\r\n\r\n") + 4
    reader.receive_data(bytes(transport.written[head_end:]))
    pongs = [f for f in reader.events_received() if isinstance(f, Frame)]
    assert [(f.opcode, bytes(f.data)) for f in pongs] == [(Opcode.PONG, b"ping")]


async def test_a_backend_text_message_that_is_not_utf8_closes_it_with_1007() -> None:
    protocol = ClientProtocol(parse_uri("ws://x/"))
    link = BackendLink(protocol, asyncio.get_running_loop())
    transport = FakeTransport()
    link.connection_made(transport)
    link.start([])
    stream, _ = _server_stream(protocol.key)
    head_end = stream.index(b"\r\n\r\n") + 4
    link.data_received(stream[:head_end] + b"\x81\x02\xff\xfe")
    await asyncio.wait_for(link.wait_open(), TIMEOUT)
    assert protocol.close_sent is not None and protocol.close_sent.code == 1007
    reader = ServerProtocol(state=OPEN)
    reader.receive_data(bytes(transport.written[transport.written.index(b"\r\n\r\n") + 4 :]))
    (close,) = reader.events_received()
    assert isinstance(close, Frame) and Close.parse(close.data).code == 1007


async def test_fragmented_client_messages_arrive_whole_and_in_order() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input", compression=None) as ws:
                await ws.send(["frag", "mented ", "✓"])
                await ws.send("whole")
                await ws.send([b"\x00\x01", b"\x02"])
                await ws.ping(b"keep")
                received = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)]
    assert received == ["fragmented ✓", "whole", b"\x00\x01\x02"]


async def test_a_client_message_cut_into_single_bytes_by_tcp_arrives_whole() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(gateway_settings({"input": [backend.url]})) as gateway:
            async with connect(gateway.ws_url + "/ws/input", compression=None) as ws:
                frame = b"".join(encode_frame(TEXT, "one byte at a time ✓".encode()))
                frame += b"".join(encode_frame(BINARY, struct.pack("!I", 7) * 40))
                for index in range(len(frame)):
                    ws.transport.write(frame[index : index + 1])
                    await asyncio.sleep(0)  # let each byte leave in its own write (TCP_NODELAY)
                first = await asyncio.wait_for(ws.recv(), TIMEOUT)
                second = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (first, second) == ("one byte at a time ✓", struct.pack("!I", 7) * 40)


async def test_the_backend_link_reads_on_after_closing_until_the_backends_close_arrives() -> None:
    # Nobody takes messages once the gateway closes the backend: if reading paused again
    # at MAX_QUEUE, the backend's close frame would never be read and the link would sit
    # until CLOSE_TIMEOUT_S aborted it.
    protocol = ClientProtocol(parse_uri("ws://x/"))
    link = BackendLink(protocol, asyncio.get_running_loop())
    transport = FakeTransport()
    link.connection_made(transport)
    link.start([])
    stream, _ = _server_stream(protocol.key)
    head_end = stream.index(b"\r\n\r\n") + 4
    link.data_received(stream[:head_end])
    await asyncio.wait_for(link.wait_open(), TIMEOUT)
    server = ServerProtocol(state=OPEN)
    for _ in range(20):
        server.send_binary(b"audio")
    link.data_received(b"".join(server.data_to_send()))
    assert not transport.reading  # backpressure while open
    closing = asyncio.ensure_future(link.close(1000, "client left"))
    await asyncio.sleep(0)
    assert transport.reading
    queued = len(link._messages)
    for _ in range(20):  # sent by the backend before it saw the gateway's close
        server.send_binary(b"audio")
    link.data_received(b"".join(server.data_to_send()))
    assert transport.reading
    assert len(link._messages) == queued  # nobody takes them: memory does not grow
    server.send_close(1000, "client left")
    link.data_received(b"".join(server.data_to_send()))
    assert protocol.close_rcvd is not None and protocol.close_rcvd.code == 1000
    link.connection_lost(None)
    await asyncio.wait_for(closing, TIMEOUT)


async def test_sending_to_a_client_uvicorn_already_closed_reports_a_disconnect_not_a_bug() -> None:
    # uvicorn closes the client on its own after a keepalive timeout or a protocol error;
    # a backend message arriving before it reports the lost connection must end the pump
    # quietly (ClientDisconnected is an OSError), not as a RuntimeError logged as a bug.
    config = uvicorn.Config(
        app=lambda scope, receive, send: None, **uvicorn_overrides(GatewaySettings())
    )
    config.load()
    protocol = GatewayWebSocketProtocol(config, ServerState(), {})
    protocol.close_sent = True
    with pytest.raises(ClientDisconnected):
        await protocol.send({"type": "websocket.send", "text": "late"})
    with pytest.raises(ClientDisconnected):
        await protocol.send({"type": "websocket.send", "bytes": b"late"})
