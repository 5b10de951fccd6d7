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
  :class:`BoundedWebSocketProtocol` does;
- a connection refused by the edge (4401, 4403, 4429, 4404): :func:`refuse_cheaply` lowers
  its message limit so that any data frame fails at its header, reads at most
  :data:`.pending.REFUSED_READ_BUDGET` more bytes and closes the socket within
  :data:`.pending.REFUSED_CLOSE_S` (uvicorn would read on for 10 s, up to the limit);
- many connections without a verdict yet: capped by the server's :class:`.pending.PendingGate`.
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

from .pending import REFUSED_CLOSE_S, REFUSED_READ_BUDGET, GateTicket, PendingGate

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
    "refuse_cheaply",
    "settle",
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
# A refused connection's message limit: a close frame's payload (125) fits, data does not.
REFUSED_MAX_MESSAGE = 125

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


def bounded_ws_protocol(base: type[Any] | str, gate: PendingGate | None = None) -> type[Any]:
    """The client hop's protocol class: ``base`` (the fast path's class, or uvicorn's own
    for the plain path: see :func:`.fastpath.client_protocol`) with the bounds on top;
    ``gate`` caps the connections still waiting for a verdict."""
    if isinstance(base, str):
        base = WebSocketsSansIOProtocol
    return type(f"Bounded{base.__name__}", (BoundedWebSocketProtocol, base), {"gate": gate})


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """The client hop: fragments capped, a refused handshake answered and closed. Used
    through :func:`bounded_ws_protocol`, in front of the fast path's class or alone."""

    gate: PendingGate | None = None  # set per server by bounded_ws_protocol

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
        self._ticket: GateTicket | None = None
        self._budget: int | None = None  # refused by the edge: bytes it may still send

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._ticket = GateTicket(self.gate, self.client[0] if self.client else "unknown")
        if not self._ticket.admitted:
            self._lingering = True  # over the pending caps: nothing of it is read
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._budget is not None:
            self._budget -= len(data)
            if self._budget < 0:  # a refused client that keeps sending: cut it off
                self._linger_refused()
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
                log.info("refused_client_cut_off", client=client, budget=REFUSED_READ_BUDGET)
                return
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc:
            self._refuse_head()

    def settle(self) -> None:
        """The edge admitted this connection: it no longer counts as pending."""
        if self._ticket is not None:
            self._ticket.release()

    def refuse_cheaply(self) -> None:
        """The edge refused it (its close frame is about to be sent): from now on any data
        frame fails at its header, at most REFUSED_READ_BUDGET bytes are read, and the
        socket is closed within REFUSED_CLOSE_S; it counts as pending until then."""
        if self._ticket is not None:
            self._ticket.retake()
        self.limit_message_size(REFUSED_MAX_MESSAGE)
        self._budget = REFUSED_READ_BUDGET
        self.loop.call_later(REFUSED_CLOSE_S, self._close_refused)

    def limit_message_size(self, max_bytes: int) -> None:
        self.conn.max_message_size = max_bytes
        frames = getattr(super(), "limit_frame_size", None)  # the fast path's scanner
        if frames is not None:
            frames(max_bytes)

    def handle_parser_exception(self) -> None:
        if self._budget is None:
            super().handle_parser_exception()
            return
        # Refused, and a frame over the lowered limit came (the usual end of a refused
        # client that sends on): as uvicorn, but without closing on the client's unread data.
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._linger_refused()

    def _linger_refused(self) -> None:
        """Read nothing more of a refused client (what it sends waits in the kernel's buffer,
        not ours) and end our side after its close frame; the REFUSED_CLOSE_S timer closes
        the socket. Closing it at once, with the client's data unread, sends a reset that can
        destroy the close frame before the client reads it (seen under load as a bare EOF)."""
        self._lingering = True
        if not self.transport.is_closing():
            self.transport.pause_reading()
            if self.close_sent and self.transport.can_write_eof():
                self.transport.write_eof()

    def _close_refused(self) -> None:
        self._lingering = True
        if not self.transport.is_closing():
            self.transport.close()

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
    limit is the largest of all routes until the route is known); a frame that declares
    more is refused at its header, on the fast path too."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, BoundedWebSocketProtocol):
        protocol.limit_message_size(max_bytes)


def settle(send: Any) -> None:
    """The connection behind ``send`` was admitted by the edge (see :mod:`.pending`)."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, BoundedWebSocketProtocol):
        protocol.settle()


def refuse_cheaply(send: Any) -> None:
    """The connection behind ``send`` is being refused: bound what it may still cost."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, BoundedWebSocketProtocol):
        protocol.refuse_cheaply()


def bounded_http_protocol(
    max_head_bytes: int, head_timeout_s: float, gate: PendingGate | None = None
) -> type[Any]:
    """uvicorn's httptools protocol with these head bounds (and the pending caps)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s, "gate": gate},
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Request heads capped in size and time (uvicorn's own has no such bound)."""

    max_head_bytes = 16 * 1024
    head_timeout_s = 10.0
    gate: PendingGate | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._parsed_bytes = 0
        self._ticket: GateTicket | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Pending until its first request head is complete (then the request's own route
        # bounds it; an upgrade is counted again by the WebSocket protocol).
        self._ticket = GateTicket(self.gate, self.client[0] if self.client else "unknown")
        if not self._ticket.admitted:
            self._refused = True  # over the pending caps: closed before anything is read
            transport.close()
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._ticket is not None:
            self._ticket.release()
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
        if self._ticket is not None:
            self._ticket.release()
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
