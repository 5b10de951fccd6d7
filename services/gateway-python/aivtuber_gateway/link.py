"""The backend hop: websockets' sans-I/O ``ClientProtocol`` on a plain ``asyncio.Protocol``.

The websockets asyncio client cost, per message, a send lock and context manager, an
assembler queue with its futures and a generator parser. Here data frames are cut as bytes
arrive (:mod:`.framing`) and the messages wait in a deque (or go straight to the client:
:attr:`BackendLink.direct`); frames to the backend are written straight to the transport.
The ``ClientProtocol`` does the rest: handshake, pings, fragments, closing handshake,
protocol errors, the size limit, and every frame of a route with compression.

Backpressure: reading stops while :data:`MAX_QUEUE` messages wait for the client (resumes
at :data:`QUEUE_LOW`); senders wait (``drain()``) while :data:`WRITE_LIMIT` bytes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.typing import Subprotocol

from .framing import TEXT, FrameScanner, Mode, encode_frame

__all__ = ["CLOSE_TIMEOUT_S", "MAX_QUEUE", "BackendGone", "BackendLink"]

# Messages buffered from the backend before it stops being read, and the level at which
# reading resumes (websockets' own max_queue default and its low-water mark).
MAX_QUEUE = 8
QUEUE_LOW = 2
# Bytes buffered toward the backend before senders wait (websockets' write_limit).
WRITE_LIMIT = 32 * 1024
# Longest wait for the backend to finish the closing handshake before dropping it.
CLOSE_TIMEOUT_S = 2.0
_MAX_HEAD = 64 * 1024  # a longer response head goes to the Protocol, which rejects it

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class BackendGone(Exception):
    """The backend connection is closing or closed: nothing more can be sent."""


class BackendLink(asyncio.Protocol):
    """One WebSocket connection to a backend, from TCP connect to TCP close."""

    __slots__ = (
        "protocol",
        "transport",
        "ping_payload",
        "ping_at",
        "direct",
        "direct_done",
        "_loop",
        "_mode",
        "_scanner",
        "_head_buffer",
        "_fragments",
        "_fragment_text",
        "_messages",
        "_waiter",
        "_read_paused",
        "write_paused",
        "_drain_waiter",
        "_opened",
        "_lost",
        "_lost_waiter",
        "_close_timer",
    )

    def __init__(self, protocol: ClientProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        # The payload of the keepalive ping in flight, None once answered, and when the
        # last one was sent (loop time; the connection's start before the first).
        self.ping_payload: bytes | None = None
        self.ping_at = loop.time()
        # Takes a message straight from data_received when it can (True), else it queues;
        # direct_done() follows each read, so that the taker can write a batch at once.
        self.direct: Callable[[str | bytes], bool] | None = None
        self.direct_done: Callable[[], None] | None = None
        self._loop = loop
        # The HTTP response head, then frames cut here (no extension), or everything
        # through the Protocol (compression, closing, after an error).
        self._mode = Mode.HANDSHAKE
        self._scanner = FrameScanner(masked=False, max_size=protocol.max_message_size)
        self._head_buffer: bytearray | None = None  # an incomplete response head
        self._fragments: list[bytes] | None = None
        self._fragment_text = False
        self._messages: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None  # recv() waiting for a message
        self._read_paused = False
        # More than WRITE_LIMIT bytes wait for the backend: senders should drain().
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def subprotocol(self) -> Subprotocol | None:
        return self.protocol.subprotocol

    def send(self, opcode: int, payload: bytes) -> None:
        """Queue one text (``payload`` UTF-8) or binary message for the backend; then
        ``await drain()`` when :attr:`write_paused`. Raises :class:`BackendGone`."""
        protocol = self.protocol
        if protocol.state is not OPEN or self._lost:
            raise BackendGone
        transport = self.transport
        assert transport is not None
        if self._mode is Mode.FAST:  # no extension: frame it here
            transport.writelines(encode_frame(opcode, payload))
        else:
            if opcode == TEXT:
                protocol.send_text(payload)
            else:
                protocol.send_binary(payload)
            self._flush()

    @property
    def fast(self) -> bool:  # frames are cut here (no extension negotiated)
        return self._mode is Mode.FAST

    async def drain(self) -> None:
        """Wait until the backend has taken enough of what was written (or is gone)."""
        while self.write_paused and not self._lost:
            waiter = self._drain_waiter = self._loop.create_future()
            await waiter

    async def recv(self) -> str | bytes:
        """The backend's next message; ``ConnectionClosed`` once it is closed and every
        message before the close has been taken."""
        messages = self._messages
        while not messages:
            if self._lost:
                raise self.protocol.close_exc
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        if self._read_paused and len(messages) <= QUEUE_LOW:
            self._read_paused = False
            if self.transport is not None and not self._lost:
                self.transport.resume_reading()
        return message

    def ping(self) -> None:
        """Send a keepalive ping; :attr:`ping_payload` is cleared when its pong arrives."""
        if self.protocol.state is not OPEN or self._lost:
            return
        payload = os.urandom(4)
        self.protocol.send_ping(payload)
        self._flush()
        self.ping_payload = payload
        self.ping_at = self._loop.time()

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (if nobody has) and wait until the TCP connection
        is closed, for :data:`CLOSE_TIMEOUT_S` at most."""
        if not self._lost:
            if self.protocol.state is OPEN:
                # Frames keep being cut here until the backend's close frame arrives.
                self.protocol.send_close(code, reason)
                self._flush()
            if self._read_paused and self.transport is not None:
                self._read_paused = False  # read on, until the backend's close arrives
                self.transport.resume_reading()
            if self._close_timer is None:
                self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)
        if not self._lost:
            if self._lost_waiter is None:
                self._lost_waiter = self._loop.create_future()
            await asyncio.shield(self._lost_waiter)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def start(self, headers: Sequence[tuple[str, str]]) -> None:
        """Send the handshake request with these extra headers."""
        request = self.protocol.connect()
        request.headers.update(headers)
        self.protocol.send_request(request)
        self._flush()

    async def wait_open(self) -> None:
        """Until the handshake succeeds; raises what made it fail."""
        await self._opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: no isinstance check.
        transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_LIMIT, WRITE_LIMIT // 4)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode is Mode.FAST:
            rest = self._scanner.feed(data, self._frame_in)
            if rest is not None:
                self._mode = Mode.PROTOCOL
                self._feed(rest)
        elif mode is Mode.PROTOCOL:
            self._feed(data)
        else:
            self._head(data)
        if self.direct_done is not None:
            self.direct_done()

    def eof_received(self) -> bool | None:
        self._feed(b"", eof=True)
        return None  # the transport closes itself: WebSocket has its own closing handshake

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.protocol.receive_eof()  # idempotent; the Protocol is CLOSED after it
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self._opened.done():
            self._fail_open(self.protocol.handshake_exc or ConnectionError("connection lost"))
        for waiter in (self._waiter, self._drain_waiter, self._lost_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.write_paused = False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _head(self, data: bytes) -> None:
        """Before the handshake completes: hand the Protocol exactly the response head, so
        that frames right behind it can be cut here."""
        buffer = self._head_buffer
        if buffer is None:
            buffer = self._head_buffer = bytearray()
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and len(buffer) < _MAX_HEAD:
            return
        end = end + 4 if end >= 0 else len(buffer)
        self._head_buffer = None
        self._mode = Mode.PROTOCOL
        self._feed(bytes(buffer[:end]))
        if (
            self._opened.done()
            and self._opened.exception() is None
            and not self.protocol.extensions
        ):
            self._mode = Mode.FAST
        rest = buffer[end:]
        if rest:
            self.data_received(bytes(rest))

    def _frame_in(self, opcode: int, view: memoryview, frame: int, start: int, end: int) -> bool:
        """A frame the scanner cut: text and binary messages straight to the queue, any
        other frame through the Protocol. False once frames are no longer cut here."""
        if opcode < 0 or self.protocol.current_size is not None:
            self._feed(bytes(view[frame:end]))  # a control frame or a fragment: rare
            return self._mode is Mode.FAST
        if opcode == TEXT:
            try:
                message: str | bytes = str(view[start:end], "utf-8")
            except UnicodeDecodeError as exc:
                self._invalid_text(exc)
                return False
        else:
            message = bytes(view[start:end])
        self._deliver(message)
        return True

    def _feed(self, data: bytes | bytearray, eof: bool = False) -> None:
        protocol = self.protocol
        if eof:
            protocol.receive_eof()
        else:
            protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response):
                self._response()
        if protocol.state is not OPEN:
            self._mode = Mode.PROTOCOL
            if self._close_timer is None and protocol.close_expected() and not self._lost:
                self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragment_text = opcode is Opcode.TEXT
            self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
        elif opcode is Opcode.PONG:
            if self.ping_payload is not None and bytes(frame.data) == self.ping_payload:
                self.ping_payload = None
            return
        if not frame.fin or opcode not in _DATA or self._fragments is None:
            return  # pings are answered by the Protocol; a close waits for the TCP close
        data = b"".join(self._fragments)
        self._fragments = None
        if self._fragment_text:
            try:
                self._deliver(data.decode())
            except UnicodeDecodeError as exc:
                self._invalid_text(exc)
        else:
            self._deliver(data)

    def _response(self) -> None:
        if not self._opened.done():
            error = self.protocol.handshake_exc
            if error is None:
                self._opened.set_result(None)
            else:
                self._fail_open(error)

    def _fail_open(self, error: BaseException) -> None:
        self._opened.set_exception(error)
        # Marked retrieved (wait_open() still raises it): after a connect timeout nobody
        # awaits it, and an unretrieved exception is logged when collected.
        self._opened.exception()

    def _deliver(self, message: str | bytes) -> None:
        if self._close_timer is not None:
            # Closing: nobody takes messages any more, and reading must go on (not pause
            # at MAX_QUEUE) until the backend's close frame arrives; drop what it sent
            # before it saw ours.
            return
        messages = self._messages
        if not messages and self.direct is not None and self.direct(message):
            return
        messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(messages) >= MAX_QUEUE and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _invalid_text(self, exc: UnicodeDecodeError) -> None:
        # As websockets: a text message that is not UTF-8 closes with 1007.
        self._scanner.clear()
        if self.protocol.state is OPEN:
            self.protocol.fail(1007, f"{exc.reason} at position {exc.start}")
        self._feed(b"")

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or self._lost:
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):  # uvloop raises either
                    transport.write_eof()
            else:
                transport.close()  # TLS cannot half-close
