"""The one frame scanner both hops share cuts a stream exactly where websockets' own parser
does, however TCP splits it: text, binary, ping, fragmented, close, every length encoding."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from aivtuber_gateway.framing import BINARY, TEXT, FrameScanner, apply_mask

Parsed = tuple[Opcode, bool, bytes]


def _stream(masked: bool, big: int = 300) -> bytes:
    """Frames as a client (masked) or a server sends them: text, binary, ping, a message
    in three fragments, an empty one, a 16-bit length, and a close."""
    sender: Protocol
    if masked:
        sender = ClientProtocol(parse_uri("ws://x/"), state=OPEN)
    else:
        sender = ServerProtocol(state=OPEN)
    sender.send_text("héllo".encode())
    sender.send_binary(b"\x00\x01\x02")
    sender.send_ping(b"ping")
    sender.send_text(b"frag", fin=False)
    sender.send_continuation(b"men", fin=False)
    sender.send_continuation(b"ted", fin=True)
    sender.send_binary(b"")
    sender.send_binary(bytes(range(256)) * (big // 256) + b"x" * (big % 256))
    sender.send_close(1000, "bye")
    return b"".join(sender.data_to_send())


def _websockets_frames(stream: bytes, masked: bool) -> list[Parsed]:
    """What websockets' parser reads in ``stream``."""
    receiver: Protocol
    if masked:
        receiver = ServerProtocol(state=OPEN, max_size=None)
    else:
        receiver = ClientProtocol(parse_uri("ws://x/"), state=OPEN, max_size=None)
    receiver.receive_data(stream)
    assert receiver.parser_exc is None
    return [
        (event.opcode, event.fin, bytes(event.data))
        for event in receiver.events_received()
        if isinstance(event, Frame)
    ]


class Collector:
    """A handler that takes every frame and decodes it the way the hops do."""

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.frames: list[Parsed] = []
        self.fast: list[bool] = []

    def __call__(
        self, opcode: int, view: memoryview, start: int, payload_at: int, end: int
    ) -> bool:
        frame, header = view[start:end], payload_at - start
        payload = frame[header:]
        if frame[1] & 0x80:  # the frame's own mask bit, whatever the scanner expects
            payload = apply_mask(payload, bytes(frame[header - 4 : header]))
        first = frame[0]
        self.frames.append((Opcode(first & 0x0F), bool(first & 0x80), bytes(payload)))
        # The fast path's verdict: a final text or binary frame, masked as it must be.
        self.fast.append(opcode in (TEXT, BINARY))
        assert opcode < 0 or opcode == first & 0x0F
        return True


def _scan(chunks: list[bytes], masked: bool) -> Collector:
    scanner = FrameScanner(masked=masked, max_size=None)
    collector = Collector(masked)
    for chunk in chunks:
        assert scanner.feed(chunk, collector) is None
    return collector


@pytest.mark.parametrize("masked", [True, False], ids=["from-client", "from-backend"])
def test_every_split_of_a_stream_is_cut_as_websockets_parses_it(masked: bool) -> None:
    stream = _stream(masked)
    expected = _websockets_frames(stream, masked)
    assert [opcode for opcode, _, _ in expected] == [
        Opcode.TEXT,
        Opcode.BINARY,
        Opcode.PING,
        Opcode.TEXT,
        Opcode.CONT,
        Opcode.CONT,
        Opcode.BINARY,
        Opcode.BINARY,
        Opcode.CLOSE,
    ]
    fast = [fin and opcode in (Opcode.TEXT, Opcode.BINARY) for opcode, fin, _ in expected]
    for split in range(len(stream) + 1):
        collector = _scan([stream[:split], stream[split:]], masked)
        assert collector.frames == expected, split
        assert collector.fast == fast, split
    # And three ways at once, byte by byte.
    for split in range(1, len(stream) - 1, 7):
        chunks = [stream[:split], stream[split : split + 3], stream[split + 3 :]]
        assert _scan(chunks, masked).frames == expected, split
    assert _scan([stream[i : i + 1] for i in range(len(stream))], masked).frames == expected


@pytest.mark.parametrize("masked", [True, False], ids=["from-client", "from-backend"])
def test_a_64_bit_length_split_anywhere_in_its_header_is_cut_as_websockets_does(
    masked: bool,
) -> None:
    stream = _stream(masked, big=70000)
    expected = _websockets_frames(stream, masked)
    start = stream.index(b"\x82\xff" if masked else b"\x82\x7f")  # the 70000-byte frame
    for split in [*range(start, start + 16), len(stream) - 20, len(stream) - 1]:
        assert _scan([stream[:split], stream[split:]], masked).frames == expected, split


def test_a_wrongly_masked_frame_is_left_to_websockets() -> None:
    # A client's frames must be masked; a server's must not. Either way the fast path
    # leaves the frame to websockets, which fails the connection.
    unmasked = _stream(masked=False)
    assert not any(_scan([unmasked], masked=True).fast)
    masked = _stream(masked=True)
    assert not any(_scan([masked], masked=False).fast)


def test_a_message_over_the_limit_is_handed_back_not_buffered() -> None:
    sender = ServerProtocol(state=OPEN)
    sender.send_text(b"ok")
    sender.send_binary(b"x" * 2000)
    stream = b"".join(sender.data_to_send())
    scanner = FrameScanner(masked=False, max_size=1000)
    collector = Collector(masked=False)
    # Only the header of the big frame has arrived: no need to wait for the rest.
    rest = scanner.feed(stream[:10], collector)
    assert collector.frames == [(Opcode.TEXT, True, b"ok")]
    assert rest == stream[4:10]


def test_a_handler_that_stops_gets_the_rest_back() -> None:
    stream = _stream(masked=False)
    expected = _websockets_frames(stream, masked=False)
    scanner = FrameScanner(masked=False, max_size=None)
    seen: list[int] = []

    def stop_at_ping(opcode: int, view: memoryview, start: int, payload: int, end: int) -> bool:
        seen.append(view[start] & 0x0F)
        return view[start] & 0x0F != Opcode.PING

    rest = scanner.feed(stream, stop_at_ping)
    assert seen == [Opcode.TEXT, Opcode.BINARY, Opcode.PING]
    assert rest is not None
    assert _websockets_frames(rest, masked=False) == expected[3:]


def test_without_websockets_c_extension_masking_falls_back_to_pure_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As websockets.frames does: a build of websockets without its C extension (no
    # compiler, PyPy) must not take the gateway down.
    from websockets.utils import apply_mask as pure_apply_mask

    monkeypatch.setitem(sys.modules, "websockets.speedups", None)  # import fails
    spec = importlib.util.find_spec("aivtuber_gateway.framing")
    assert spec is not None and spec.loader is not None
    framing = importlib.util.module_from_spec(spec)  # a fresh copy, not the one in use
    spec.loader.exec_module(framing)
    assert framing.apply_mask is pure_apply_mask
    head, *rest = framing.encode_frame(TEXT, b"masked by Python")
    receiver = ServerProtocol(state=OPEN)
    receiver.receive_data(head + b"".join(rest))
    (frame,) = receiver.events_received()
    assert isinstance(frame, Frame) and frame.data == b"masked by Python"
