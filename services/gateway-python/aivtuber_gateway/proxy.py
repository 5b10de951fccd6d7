"""One proxied WebSocket connection: the hot path.

The client side is the raw ASGI interface (no Starlette wrapper: it costs on every
message); the backend side is a :class:`.link.BackendLink` (websockets' sans-I/O protocol
on a plain asyncio protocol). Two pumps move messages: client -> backend runs in the ASGI
task itself, backend -> client in one task it owns.

Ownership of the sockets, so that no two tasks ever send a close on the same side:

- only the backend -> client pump (or, once it is finished, whoever ended the connection)
  sends ``websocket.close`` to the client; uvicorn then hands the ASGI task a
  ``websocket.disconnect``, which ends the client -> backend pump;
- the ASGI task closes the backend last, on every path, and removes the connection from
  the registry.

Backpressure: uvicorn pauses reading the client's socket after each message until the
app has taken it, and ``send`` waits while the client's write buffer is full; the link
stops reading the backend while :data:`.link.MAX_QUEUE` messages wait for the client, and
the client pump waits while the link's write buffer is full. A slow reader therefore slows
its writer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import structlog
from starlette.types import Receive, Send
from websockets.exceptions import ConnectionClosed

from aivtuber_common.redact import short_path

from .bounds import BoundedWebSocketProtocol
from .framing import BINARY, TEXT
from .hook import EXTENSION, ClientHook
from .lifecycle import End, Side, backend_end, client_end, short_reason, to_backend, to_client
from .link import CLOSE_TIMEOUT_S, BackendGone, BackendLink
from .registry import Registry
from .routing import Backend, Route

__all__ = ["ProxyConnection", "ProxyOptions", "Receive", "Send"]


class ProxyOptions:
    """The settings and shared objects every connection reads; built once per app."""

    def __init__(
        self,
        *,
        registry: Registry[ProxyConnection],
        connect_timeout_s: float,
        idle_timeout_s: float,
        debug: bool,
        log: structlog.typing.FilteringBoundLogger,
        observe_first_audio: Callable[[str], Callable[[float], None]] | None = None,
        observe_audio_gap: Callable[[str], Callable[[float], None]] | None = None,
    ) -> None:
        self.registry: Registry[ProxyConnection] = registry
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.debug = debug
        self.log = log
        self.observe_first_audio = observe_first_audio
        self.observe_audio_gap = observe_audio_gap


class ProxyConnection:
    """A client <-> backend pair from accept to both sockets closed."""

    __slots__ = (
        "id",
        "route",
        "backend",
        "path",
        "client",
        "request_id",
        "connected_at",
        "opened",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "last_activity",
        "end",
        "_link",
        "_send",
        "_options",
        "_b2c",
        "_closing_client",
        "_terminator",
        "_idle_timer",
        "_finishing",
        "_hook",
        "_sink",
        "_sending",
        "_first_audio",
        "_audio_gap",
        "_last_audio",
    )

    def __init__(
        self,
        route: Route,
        backend: Backend,
        link: BackendLink,
        scope: dict[str, Any],
        request_id: str,
        send: Send,
        options: ProxyOptions,
    ) -> None:
        self.id = os.urandom(6).hex()
        self.route = route
        self.backend = backend
        self.path = short_path(scope["path"])  # never a whole task id in logs or pages
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else "unknown"
        self.request_id = request_id
        self.connected_at = time.time()
        self.opened = time.monotonic()
        # in = client -> backend, out = backend -> client.
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.last_activity = self.opened
        self.end: End | None = None
        self._link = link
        self._send = send
        self._options = options
        self._b2c: asyncio.Task[None] | None = None
        self._closing_client = False
        self._terminator: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._finishing = False
        # The client's uvicorn protocol when it offers the fast path (see .fastpath), and
        # once it takes messages directly (see _forward_out).
        self._hook: ClientHook | None = scope.get("extensions", {}).get(EXTENSION)
        self._sink: ClientHook | None = None
        self._sending = False  # the backend pump holds a message not yet sent
        self._first_audio: Callable[[float], None] | None = None
        self._audio_gap: Callable[[float], None] | None = None
        self._last_audio = 0.0
        if route.audio_metrics and options.observe_first_audio and options.observe_audio_gap:
            self._first_audio = options.observe_first_audio(route.name)
            self._audio_gap = options.observe_audio_gap(route.name)

    @property
    def backend_url(self) -> str:
        # Without the query string: browsers put tokens there.
        return self.backend.url + self.path

    def terminate(self, code: int, reason: str, by: Side = Side.GATEWAY) -> None:
        """Close both sides with ``code`` (shutdown, idle timeout). Returns at once."""
        if self.end is None:
            self.end = End(by, code, reason)
        if self._terminator is None and not self._finishing and self._b2c is not None:
            self._terminator = asyncio.get_running_loop().create_task(self._terminate())

    @property
    def link(self) -> BackendLink:
        return self._link

    @property
    def finishing(self) -> bool:
        """The client side has ended; the backend is being closed."""
        return self._finishing

    def unanswered_pings(self) -> dict[str, float | None]:
        """Seconds each side has left the gateway's keepalive ping unanswered (None: no
        ping pending), for /connections: who stopped answering."""
        client = getattr(self._send, "__self__", None)
        client_s = None
        if isinstance(client, BoundedWebSocketProtocol):
            client_s = client.unanswered_ping_s()
        backend_s = None
        if self._link.ping_payload is not None:
            backend_s = asyncio.get_running_loop().time() - self._link.ping_at
        return {
            "client": None if client_s is None else round(client_s, 3),
            "backend": None if backend_s is None else round(backend_s, 3),
        }

    async def run(self, receive: Receive) -> None:
        """Pump both ways until either side ends, then close both and deregister."""
        options = self._options
        registry = options.registry
        registry.add(self)
        self.backend.open_connections += 1
        options.log.info(
            "connection_opened",
            conn_id=self.id,
            route=self.route.name,
            path=self.path,
            client=self.client,
            backend=self.backend_url,
            subprotocol=self._link.subprotocol,
            request_id=self.request_id,
        )
        loop = asyncio.get_running_loop()
        if options.idle_timeout_s:
            self._idle_timer = loop.call_later(options.idle_timeout_s, self._check_idle)
        sink = self._hook
        if sink is not None and self._link.fast:
            self._sink = sink
            sink.direct = self._forward_in
            self._link.direct = self._forward_out
            self._link.direct_done = sink.flush_pending
        try:
            self._b2c = loop.create_task(self._backend_to_client())
            try:
                await self._client_to_backend(receive)
            finally:
                await self._finish()
        finally:
            if self._sink is not None:
                self._sink.flush_pending()
                self._sink.direct = self._link.direct = self._link.direct_done = None
                self._sink = None
            self.backend.open_connections -= 1
            registry.remove(self)
            self._log_closed()

    # -- the direct path ----------------------------------------------------------------
    # A message is forwarded from the socket callback that read it, without waking a
    # pump, when nothing is queued ahead of it and the other side's write buffer has room;
    # otherwise (False) it takes the pumps' way, which waits for room.

    def _forward_in(self, opcode: int, payload: bytes) -> bool:
        link = self._link
        if self.end is not None or link.write_paused:
            return False
        try:
            link.send(opcode, payload)
        except BackendGone:
            return False
        size = len(payload)
        self.messages_in += 1
        self.bytes_in += size
        self.last_activity = time.monotonic()
        if self._options.debug:
            kind = "text" if opcode == TEXT else "binary"
            self._log_forward("in", kind, size)
        return True

    def _forward_out(self, data: str | bytes) -> bool:
        sink = self._sink
        if self.end is not None or self._sending or sink is None:
            return False
        if isinstance(data, str):
            payload = data.encode()
            if not sink.write_frame(TEXT, payload, defer=True):
                return False
            self._count_out(len(payload), False)
        else:
            if not sink.write_frame(BINARY, data, defer=True):
                return False
            self._count_out(len(data), True)
        return True

    def _count_out(self, size: int, binary: bool) -> None:
        now = time.monotonic()
        if binary and self._first_audio is not None:
            if self._last_audio:
                self._audio_gap(now - self._last_audio)  # type: ignore[misc]
            else:
                self._first_audio(now - self.opened)
            self._last_audio = now
        self.messages_out += 1
        self.bytes_out += size
        self.last_activity = now
        if self._options.debug:
            self._log_forward("out", "binary" if binary else "text", size)

    def _log_forward(self, direction: str, kind: str, size: int) -> None:
        self._options.log.debug(
            "forward", conn_id=self.id, direction=direction, type=kind, size=size
        )

    # -- the two pumps -------------------------------------------------------------------

    async def _client_to_backend(self, receive: Receive) -> None:
        link = self._link
        link_send = link.send
        debug = self._options.debug
        monotonic = time.monotonic
        while True:
            message = await receive()
            data = message.get("bytes")
            if data is None:
                text = message.get("text")
                if text is None:
                    if message["type"] == "websocket.disconnect":
                        if self.end is None:
                            self.end = client_end(message.get("code"), message.get("reason"))
                        return
                    continue
                data = text.encode()
                opcode = TEXT
            else:
                opcode = BINARY
            size = len(data)
            self.messages_in += 1
            self.bytes_in += size
            self.last_activity = monotonic()
            if debug:
                self._log_forward("in", "text" if opcode == TEXT else "binary", size)
            try:
                link_send(opcode, data)
            except BackendGone:
                return  # the backend is closing; the other pump reports why
            if link.write_paused:
                await link.drain()

    async def _backend_to_client(self) -> None:
        recv = self._link.recv
        send = self._send
        log = self._options.log
        try:
            while True:
                data = await recv()
                self._sending = True
                if isinstance(data, str):
                    size = len(data) if data.isascii() else len(data.encode())
                    self._count_out(size, False)
                    await send({"type": "websocket.send", "text": data})
                else:
                    self._count_out(len(data), True)
                    await send({"type": "websocket.send", "bytes": data})
                self._sending = False
        except ConnectionClosed as exc:
            if self.end is None:
                self.end = backend_end(exc)
        except OSError:
            return  # the client is gone (uvicorn's ClientDisconnected); its pump sees it
        except Exception:
            # A bug: this task has no caller to raise to. Log it and close both with 1011.
            log.exception("proxy_error", conn_id=self.id, route=self.route.name)
            if self.end is None:
                self.end = End(Side.GATEWAY, 1011, "gateway error")
        # From here on this task owns closing the client and is never cancelled.
        self._closing_client = True
        assert self.end is not None
        await self._close_client(*to_client(self.end))

    # -- ending --------------------------------------------------------------------------

    async def _close_client(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):
            pass  # already disconnected, or uvicorn already closed it (e.g. shutdown)

    async def _terminate(self) -> None:
        """Stop the backend pump, then close the client and the backend ourselves."""
        b2c = self._b2c
        if b2c is not None:
            if not self._closing_client:
                b2c.cancel()
            await asyncio.wait({b2c}, timeout=CLOSE_TIMEOUT_S)
        assert self.end is not None
        if not self._closing_client:
            self._closing_client = True
            await self._close_client(*to_client(self.end))
        await self._link.close(*to_backend(self.end))

    async def _finish(self) -> None:
        """After the client -> backend pump: stop the other pump, close the backend."""
        self._finishing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        b2c = self._b2c
        assert b2c is not None
        if (
            not self._closing_client
            and self.end is not None
            and self.end.by is Side.CLIENT
            and self._terminator is None
        ):
            b2c.cancel()  # the client left: nothing more to deliver to it
        # Otherwise the backend pump is delivering the close to the client; let it finish.
        await asyncio.wait({b2c}, timeout=CLOSE_TIMEOUT_S)
        if not b2c.done():
            b2c.cancel()
            await asyncio.wait({b2c})
        if not b2c.cancelled() and b2c.exception() is not None:  # pragma: no cover
            self._options.log.error("proxy_error", conn_id=self.id, exc_info=b2c.exception())
        if self._terminator is not None:
            await asyncio.wait({self._terminator}, timeout=CLOSE_TIMEOUT_S * 2)
            if not self._terminator.done():
                self._terminator.cancel()
                await asyncio.wait({self._terminator})
        if self.end is None:
            self.end = End(Side.BACKEND, 1011, "backend connection lost")
        await self._link.close(*to_backend(self.end))

    def _check_idle(self) -> None:
        idle_for = time.monotonic() - self.last_activity
        timeout = self._options.idle_timeout_s
        if idle_for >= timeout:
            self._idle_timer = None
            self.terminate(1000, "idle timeout")
        else:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(timeout - idle_for, self._check_idle)

    def _log_closed(self) -> None:
        end = self.end
        self._options.log.info(
            "connection_closed",
            conn_id=self.id,
            route=self.route.name,
            client=self.client,
            backend=self.backend_url,
            closed_by=end.by.value if end else None,
            code=end.code if end else None,
            reason=short_reason(end.reason) if end else None,
            duration_s=round(time.monotonic() - self.opened, 3),
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )
