"""uvicorn's sans-I/O WebSocket protocol with a fast path for data frames (the client hop).

uvicorn's ``websockets-sansio`` implementation reads and writes every frame through
websockets' ``ServerProtocol``: a generator parser, a ``Frame`` object, ``check()``, a
``BytesIO``; about 4 us to read a masked frame and 3 us to write one. This subclass cuts
final, unmasked-by-rule text and binary frames itself (:mod:`.framing`) and hands them to
uvicorn exactly as uvicorn would (:meth:`send_receive_event_to_app`: the same ASGI
message, the same pause of reading, the same 1007 on bad UTF-8); it writes
``websocket.send`` messages as frames straight to the transport. Everything else (the
handshake, pings, pongs, fragments, close frames, protocol errors, the size limit, every
frame when permessage-deflate is negotiated) still goes through uvicorn and websockets.

The ``ServerProtocol``'s parser must only ever see whole frames (or, from the first frame
it is given whole no more, everything): uvicorn feeds it the request head first, then
each frame not taken here is given to it whole.

The app finds it through the ASGI scope extension :data:`.hook.EXTENSION` (a
:class:`.hook.ClientHook`). Used only for the uvicorn and websockets releases it was tested with,
and after an in-memory self-test: see :mod:`.fastpath`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import OPEN

from .framing import BINARY, TEXT, FrameScanner, Mode, apply_mask, encode_frame
from .hook import EXTENSION

__all__ = ["GatewayWebSocketProtocol"]


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` with data frames read and written without websockets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The first bytes are the request head (uvicorn's); then frames are cut here,
        # until everything goes to uvicorn (closing, or an error).
        self._mode = Mode.HANDSHAKE
        self._scanner = FrameScanner(masked=True, max_size=self.conn.max_message_size)
        # Takes a data message straight from data_received when it can (True): the
        # gateway's proxy, which then forwards it without a queue or a task switch.
        self.direct: Callable[[int, bytes], bool] | None = None
        # Frames written with defer=True, sent in one write by flush_pending(): a batch of
        # backend messages read at once leaves in one syscall instead of one each.
        self._pending: list[bytes] | None = None

    def limit_frame_size(self, max_bytes: int) -> None:
        """A data frame declaring more than ``max_bytes`` is not buffered: it goes to
        websockets, which fails it at its header (1009)."""
        self._scanner.max_size = max_bytes

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # None when the handshake was refused
        if scope is not None:
            # The same dict the ASGI task (started above, not run yet) is handed.
            scope.setdefault("extensions", {})[EXTENSION] = self

    def data_received(self, data: bytes) -> None:
        if self._mode is Mode.FAST:
            rest = self._scanner.feed(data, self._frame_in)
            if rest is not None:
                self._mode = Mode.PROTOCOL
                super().data_received(rest)
        else:
            if self._mode is Mode.HANDSHAKE:
                self._mode = Mode.FAST
            super().data_received(data)

    def _frame_in(self, opcode: int, view: memoryview, frame: int, start: int, end: int) -> bool:
        """A frame the scanner cut: a text or binary message to the app (or straight to
        :attr:`direct`), any other frame through uvicorn. False once uvicorn takes all."""
        conn = self.conn
        if (
            opcode < 0
            or conn.state is not OPEN
            or conn.current_size is not None
            or conn.extensions
            or self.close_sent
        ):
            super().data_received(bytes(view[frame:end]))
            # Closing: websockets discards the rest.
            return conn.state is OPEN or not self.handshake_complete
        payload = apply_mask(view[start:end], bytes(view[start - 4 : start]))
        direct = self.direct
        if direct is not None and self.queue.empty() and _valid(opcode, payload):
            if direct(opcode, payload):
                return True
        self.curr_msg_data_type = "text" if opcode == TEXT else "bytes"
        self.frames = [payload]
        self.send_receive_event_to_app()
        return True

    def write_frame(self, opcode: int, payload: bytes, defer: bool = False) -> bool:
        """Write one message if it can go now, as ``send`` would; False if not (not open,
        closing, compressed, or the write buffer is full: ``send`` waits for room)."""
        if self._pending is not None and not defer:
            self.flush_pending()
        if (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is OPEN
            and not self.conn.extensions
        ):
            frames = encode_frame(opcode, payload, mask=False)
            if not defer:
                self.transport.writelines(frames)
            elif self._pending is None:
                self._pending = list(frames)
            else:
                self._pending.extend(frames)
            return True
        return False

    def flush_pending(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not self.transport.is_closing():
                self.transport.writelines(pending)

    async def send(self, message: Any) -> None:
        if self._pending is not None:
            self.flush_pending()  # frames written before this message go before it
        if message["type"] == "websocket.send":
            if self.close_sent:
                # uvicorn closed the client itself (keepalive timeout, a protocol error) and
                # hears of the lost connection only later; its own send would raise a
                # RuntimeError that reads like a bug. The client is gone: say so.
                raise ClientDisconnected()
            data = message.get("bytes")
            if data is not None:
                if self.write_frame(BINARY, data):
                    return
            else:
                text = message.get("text")
                if text is not None and self.write_frame(TEXT, text.encode()):
                    return
        await super().send(message)


def _valid(opcode: int, payload: bytes) -> bool:
    """Binary, or text that is UTF-8 (otherwise uvicorn's path closes with 1007)."""
    if opcode == TEXT:
        try:
            payload.decode()
        except UnicodeDecodeError:
            return False
    return True
