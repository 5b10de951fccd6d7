"""WebSocket data frames without websockets' general machinery.

Almost every frame the gateway moves is an unfragmented text or binary message with no
extension. websockets' sans-I/O ``Protocol`` handles those through a generator parser, a
``Frame`` object per frame, ``check()``, an extension loop and a ``BytesIO``: about 4 us to
read one and 3 us to write one, a sizeable part of the gateway's cost per message. Here
they take a fraction of that; every other frame (control frames, fragments, anything with
reserved bits or over the size limit) is left to the ``Protocol`` (see :mod:`.link`).

The client hop uses the same framing (see :mod:`.clientside`).

Masks: a client must mask its frames with a key from "a strong source of entropy" (RFC
6455 section 5.3). websockets asks the kernel for 4 bytes per frame (``secrets``: one
``getrandom`` syscall each); these keys come from the same source, fetched
:data:`MASK_POOL_BYTES` at a time.
"""

from __future__ import annotations

import os
import struct

try:  # as websockets.frames does: its C extension when built, else pure Python
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = ["BINARY", "MASK_POOL_BYTES", "TEXT", "apply_mask", "encode_frame", "scan_frame"]

TEXT = 0x1
BINARY = 0x2
# 1024 masks per getrandom call.
MASK_POOL_BYTES = 4096
# Below this, header and payload are joined into one write; above, they are handed to the
# transport separately so a large payload is not copied once more.
_JOIN_BELOW = 16 * 1024

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
