"""Memory bounds at the edge, whatever a client sends.

What a client could make the gateway hold, and what bounds it:

- a message: the route's ``max_message_bytes`` on both hops (websockets' ``max_size``,
  set per connection once the route is known: :func:`limit_messages`);
- an unfinished fragmented message: websockets counts its payload against ``max_size``
  (``Protocol.current_size``), but not the fragments themselves: a stream of empty
  continuation frames costs a list slot each on the client hop (uvicorn's
  ``WebSocketsSansIOProtocol.frames``) and on the backend hop (:mod:`.link`) and never
  reaches the limit. :class:`_FragmentCap` charges every fragment its payload plus
  :data:`FRAGMENT_OVERHEAD` and fails the connection with 1009 over ``max_size``;
- the HTTP request head: :class:`BoundedHttpToolsProtocol` answers 431 once it passes
  ``gateway.max_head_bytes`` and 408 when it is not complete within
  ``gateway.head_timeout_s``; uvicorn has neither (httptools keeps a header of any size);
- an upgrade whose head websockets refuses (a header line over 8 KiB, over 128 headers):
  websockets queues its 431 but uvicorn never writes it nor closes the socket;
  :class:`BoundedWebSocketProtocol` does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard]
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

__all__ = [
    "CLIENT_KEEPALIVE",
    "FRAGMENT_OVERHEAD",
    "BoundedClientProtocol",
    "BoundedServerProtocol",
    "BoundedWebSocketProtocol",
    "FragmentsTooBig",
    "bounded_http_protocol",
    "bounded_ws_protocol",
    "limit_messages",
    "linger_close",
]

# After an error answer, how long the rest of what the client sends is read and dropped
# before the socket is closed: closing with unread data sends a TCP reset, which can
# destroy the answer before the client reads it ("lingering close", as Apache and nginx).
LINGER_S = 2.0
# The close reason when the client left a keepalive ping unanswered.
CLIENT_KEEPALIVE = "client: keepalive ping timeout"
# What one held fragment costs beyond its payload: a bytes object (33 bytes in CPython)
# and its slot in a list, rounded up.
FRAGMENT_OVERHEAD = 64

log = structlog.get_logger("aivtuber_gateway")


class FragmentsTooBig(PayloadTooBig):
    """An unfinished fragmented message holds more than the limit (closes with 1009)."""

    def __init__(self, limit: int) -> None:
        self.message = f"fragmented message over {limit} bytes"
        Exception.__init__(self, self.message)
        self.size = None
        self.max_size = limit
        self.current_size = None

    def set_current_size(self, current_size: int | None) -> None:
        pass  # the message says all; websockets' arithmetic would make it wrong


class _FragmentCap(Protocol):
    """Counts what the fragments of the message being received hold, overhead included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held_bytes = 0

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self.held_bytes = 0
            if not frame.fin:
                self._charge(len(frame.data))
        elif opcode is Opcode.CONT:
            if frame.fin:
                self.held_bytes = 0
            else:
                self._charge(len(frame.data))
        super().recv_frame(frame)  # raised inside parse(): websockets fails it with 1009

    def _charge(self, size: int) -> None:
        self.held_bytes += size + FRAGMENT_OVERHEAD
        limit = self.max_message_size
        if limit is not None and self.held_bytes > limit:
            self.held_bytes = 0
            raise FragmentsTooBig(limit)


class BoundedClientProtocol(_FragmentCap, ClientProtocol):
    """The backend hop's protocol (see :func:`.upstream.open_link`)."""


class BoundedServerProtocol(_FragmentCap, ServerProtocol):
    """The client hop's protocol, inside :class:`BoundedWebSocketProtocol`."""


def bounded_ws_protocol(base: type[Any] | str) -> type[Any]:
    """The client hop's protocol class: ``base`` (the fast path's class, or uvicorn's own
    for the plain path: see :func:`.fastpath.client_protocol`) with the bounds on top."""
    if isinstance(base, str):
        base = WebSocketsSansIOProtocol
    return type(f"Bounded{base.__name__}", (BoundedWebSocketProtocol, base), {})


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """The client hop: fragments capped, a refused handshake answered and closed. Used
    through :func:`bounded_ws_protocol`, in front of the fast path's class or alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conn = self.conn
        # uvicorn builds a plain ServerProtocol; the same one, with the fragment cap.
        self.conn = BoundedServerProtocol(
            extensions=conn.available_extensions,
            max_size=conn.max_message_size,
            logger=conn.logger,
        )
        self._lingering = False  # refused: what still arrives is dropped

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc:
            self._refuse_head()

    def keepalive_timeout(self) -> None:
        # uvicorn closes a client that left a ping unanswered and reports it to the app as
        # a lost connection (1005), which reads as if the client had vanished; say first
        # that the client stopped answering (the log, /metrics and the backend see it).
        if not self.close_sent and not self.transport.is_closing():
            self.queue.put_nowait(
                {"type": "websocket.disconnect", "code": 1011, "reason": CLIENT_KEEPALIVE}
            )
        super().keepalive_timeout()

    def unanswered_ping_s(self) -> float | None:
        """How long the client has left the gateway's ping unanswered (None: none is)."""
        if self.pending_ping_payload is None:
            return None
        return self.loop.time() - self.ping_sent_at

    def _refuse_head(self) -> None:
        # websockets refused the request head (it logged "connection rejected (431 ...)")
        # and queued its answer, which uvicorn would never write: write it, then close.
        self.close_sent = self.handshake_complete = True  # no 500 from uvicorn after it
        self._lingering = True
        for chunk in self.conn.data_to_send():
            if chunk:
                self.transport.write(chunk)
        linger_close(self.transport, self.loop)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        log.info("handshake_refused", client=client, error=str(self.conn.handshake_exc))


def linger_close(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Close after the answer written: end our side now, the socket after :data:`LINGER_S`
    (the protocol drops what still arrives)."""
    if transport.is_closing():
        return
    if transport.can_write_eof():
        transport.write_eof()
        loop.call_later(LINGER_S, transport.close)
    else:  # TLS cannot half-close
        transport.close()


def limit_messages(send: Any, max_bytes: int) -> None:
    """Apply a route's message limit to the client connection behind ``send`` (uvicorn's
    limit is the largest of all routes until the route is known)."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, BoundedWebSocketProtocol):
        protocol.conn.max_message_size = max_bytes


def bounded_http_protocol(max_head_bytes: int, head_timeout_s: float) -> type[Any]:
    """uvicorn's httptools protocol with these head bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Request heads capped in size and time (uvicorn's own has no such bound)."""

    max_head_bytes = 16 * 1024
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._parsed_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already; dropped until the socket closes
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Counted after parsing, so that a head and a body arriving together are
            # not refused for the body's size; httptools holds one read at most.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, "Request Header Fields Too Large", "head_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes = 0
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head = True
            self._head_bytes = 0
            self._start_head_timer()

    # A head that arrives whole in one read is measured as httptools parses it.
    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self._parsed_bytes > self.max_head_bytes:
            self._head_bytes = self._parsed_bytes
            self._refuse(431, "Request Header Fields Too Large", "head_too_large")
            return
        super().on_headers_complete()

    # Refused: the rest of this request (body, upgrade) is not served.
    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if not self._refused:
            super().handle_websocket_upgrade()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "Request Timeout", "head_timeout")

    def _refuse(self, status: int, phrase: str, event: str) -> None:
        self._refused = True
        self._in_head = False
        self._stop_head_timer()
        body = f"{phrase}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        linger_close(self.transport, self.loop)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        log.info(event, client=client, status=status, head_bytes=self._head_bytes)
