"""WebSocket data frames without websockets' general machinery.

Almost every frame the gateway moves is an unfragmented text or binary message with no
extension. websockets' sans-I/O ``Protocol`` handles those through a generator parser, a
``Frame`` object per frame, ``check()``, an extension loop and a ``BytesIO``: about 4 us to
read one and 3 us to write one, a sizeable part of the gateway's cost per message. Here
they take a fraction of that; every other frame (control frames, fragments, anything with
reserved bits or over the size limit) is left to the ``Protocol`` (see :mod:`.link`).

Both hops cut frames with one :class:`FrameScanner` (the backend hop in :mod:`.link`, the
client hop in :mod:`.clientside`) and move through the same :class:`Mode` states.

Masks: a client must mask its frames with a key from "a strong source of entropy" (RFC
6455 section 5.3). websockets asks the kernel for 4 bytes per frame (``secrets``: one
``getrandom`` syscall each); these keys come from the same source, fetched
:data:`MASK_POOL_BYTES` at a time.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable

try:  # as websockets.frames does: its C extension when built, else pure Python
    from websockets.speedups import apply_mask
except ImportError:  # tests/test_frame_scanner.py simulates it
    from websockets.utils import apply_mask

__all__ = [
    "BINARY",
    "MASK_POOL_BYTES",
    "TEXT",
    "FrameHandler",
    "FrameScanner",
    "Mode",
    "apply_mask",
    "encode_frame",
    "scan_frame",
]

TEXT = 0x1
BINARY = 0x2
# 1024 masks per getrandom call.
MASK_POOL_BYTES = 4096
# Below this, header and payload are joined into one write; above, they are handed to the
# transport separately so a large payload is not copied once more.
_JOIN_BELOW = 16 * 1024


class Mode(enum.Enum):
    """How a hop handles the bytes it receives."""

    HANDSHAKE = "handshake"  # the HTTP head, for websockets' Protocol
    FAST = "fast"  # frames cut by a FrameScanner; the rare ones go to the Protocol
    PROTOCOL = "protocol"  # everything to the Protocol (compression, closing, an error)


# Called with each complete frame a FrameScanner cuts: (opcode as scan_frame returns it,
# a view of the bytes, where the frame starts, where its payload starts, where it ends);
# True to go on, False to stop scanning (the frame was handled; what follows it is handed
# back). Positions rather than a slice per frame: the hot path slices only what it uses.
FrameHandler = Callable[[int, memoryview, int, int, int], bool]

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


class _MaskPool:
    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0

    def take(self) -> bytes:
        pos = self.pos
        if pos >= len(self.pool):
            self.pool = os.urandom(MASK_POOL_BYTES)
            pos = 0
        self.pos = pos + 4
        return self.pool[pos : pos + 4]


_masks = _MaskPool()


def encode_frame(opcode: int, payload: bytes, mask: bool = True) -> tuple[bytes, ...]:
    """A final frame of ``opcode`` as one or two buffers to write: masked from a client
    (the backend hop), unmasked from a server (the client hop)."""
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head = bytes((0x80 | opcode, bit | length))
    elif length < 65536:
        head = _pack_short(0x80 | opcode, bit | 126, length)
    else:
        head = _pack_long(0x80 | opcode, bit | 127, length)
    if mask:
        key = _masks.take()
        head += key
        payload = apply_mask(payload, key)
    if length < _JOIN_BELOW:
        return (head + payload,)
    return (head, payload)


def scan_frame(data: bytes | bytearray, pos: int, masked: bool = False) -> tuple[int, int, int]:
    """Where the frame starting at ``pos`` lies in ``data``.

    Returns ``(opcode, header length, frame end)``; ``opcode`` is that of a final text or
    binary frame with no reserved bit, masked as ``masked`` says frames from this peer must
    be (the fast path; a mask key is the last 4 bytes of the header), or ``-1`` for any
    other frame (for :class:`~websockets.protocol.Protocol` to handle). ``frame end`` may lie
    beyond ``data`` when the frame is not complete yet; it is ``-1`` when not even its
    header is.
    """
    available = len(data) - pos
    if available < 2:
        return -1, 0, -1
    head1 = data[pos]
    length = data[pos + 1]
    has_mask = length & 0x80
    length &= 0x7F
    header = 2
    if length == 126:
        if available < 4:
            return -1, 0, -1
        length = int.from_bytes(data[pos + 2 : pos + 4])
        header = 4
    elif length == 127:
        if available < 10:
            return -1, 0, -1
        length = int.from_bytes(data[pos + 2 : pos + 10])
        header = 10
    if has_mask:
        header += 4
    end = pos + header + length
    # FIN set, no reserved bit, opcode text or binary, masked as it must be (a wrong mask
    # bit is a protocol error, which the Protocol reports).
    if (head1 == 0x81 or head1 == 0x82) and bool(has_mask) is masked:
        return head1 & 0x0F, header, end
    return -1, header, end


class FrameScanner:
    """Cuts a stream of bytes into whole frames; sans-I/O, shared by both hops.

    :meth:`feed` hands each complete frame to a handler and keeps an incomplete one until
    the rest of it arrives. A text or binary frame over ``max_size`` is not buffered: the
    scan stops there, and the bytes from it on are handed back for websockets' Protocol,
    which fails the connection with 1009 as it would have.
    """

    __slots__ = ("masked", "max_size", "_buffer", "_need")

    def __init__(self, masked: bool, max_size: int | None) -> None:
        self.masked = masked  # frames from this peer must be masked (a client's)
        self.max_size = max_size
        self._buffer: bytearray | None = None  # an incomplete frame
        self._need = 0  # bytes _buffer must hold before it is worth scanning again

    def feed(self, data: bytes | bytearray, handler: FrameHandler) -> bytes | None:
        """Scan ``data`` (after what was buffered); the bytes not scanned (the handler
        stopped, or a message over the limit), or None."""
        buffer = self._buffer
        if buffer is not None:
            buffer += data
            if len(buffer) < self._need:
                return None
            data = buffer
            self._buffer = None
        masked = self.masked
        max_size = self.max_size
        view = memoryview(data)
        pos = 0
        size = len(data)
        while pos < size:
            opcode, header, end = scan_frame(data, pos, masked)
            if end < 0 or end > size:  # incomplete
                if max_size is not None and end - pos - header > max_size:
                    break  # over the limit: the Protocol fails it without waiting for it
                self._buffer = bytearray(view[pos:])
                self._need = end - pos  # or -1: rescan on any byte until the header is in
                return None
            if opcode >= 0 and max_size is not None and end - pos - header > max_size:
                break
            start = pos
            pos = end
            if not handler(opcode, view, start, start + header, end):
                break
        return bytes(view[pos:]) if pos < size else None

    def clear(self) -> None:
        """Drop an incomplete frame (the connection failed)."""
        self._buffer = None
