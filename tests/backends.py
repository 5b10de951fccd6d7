"""Backends written for the gateway's tests: real servers on ephemeral loopback ports.

:class:`EchoBackend` is a websockets server that echoes every message as it came (text as
text, binary as binary) and obeys commands sent as text messages starting with ``!``:

    !close CODE [REASON]   close with CODE and REASON
    !info                  reply with JSON: backend name, path, headers, subprotocol, extensions
    !burst N SIZE          send N binary messages of SIZE bytes, each starting with its index
    !sink                  stop echoing; count what arrives (``received_bytes``, ``received``)
    !freeze                stop reading the socket (no more pongs, no more messages)
    !abort                 drop the TCP connection without a close frame

It records what the gateway did to it (``closes``: the code and reason each connection was
closed with), answers ``GET /health`` with ``health_status``, and can be started with a
small receive buffer to make backpressure visible. Also: :func:`silent_server` accepts
TCP connections and never answers (a handshake that never completes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["BackendClose", "EchoBackend", "burst_message", "silent_server"]


@dataclass(frozen=True)
class BackendClose:
    path: str
    code: int | None
    reason: str | None


def burst_message(index: int, size: int) -> bytes:
    """The ``index``-th message of a burst: its index, then filler."""
    return struct.pack("!I", index) + bytes([index % 251]) * (size - 4)


@dataclass
class _Live:
    ws: ServerConnection
    sink: bool = False
    received: list[int] = field(default_factory=list)  # sizes of sunk messages


class EchoBackend:
    def __init__(
        self,
        name: str = "backend",
        *,
        subprotocols: list[str] | None = None,
        compression: str | None = None,
        health_status: int = 200,
        rcvbuf: int | None = None,
    ) -> None:
        self.name = name
        self.subprotocols = subprotocols
        self.compression = compression
        self.health_status = health_status
        self.rcvbuf = rcvbuf
        self.closes: asyncio.Queue[BackendClose] = asyncio.Queue()
        self.live: dict[int, _Live] = {}
        self.accepted = 0
        self.burst_sent = 0
        self.port = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def received_bytes(self) -> int:
        return sum(sum(live.received) for live in self.live.values())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EchoBackend]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            # Inherited by accepted sockets; a fixed buffer also stops kernel autotuning.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        async with serve(
            self._handler,
            sock=sock,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            compression=self.compression,
            max_size=None,
            process_request=self._process_request,
            ping_interval=None,
        ) as server:
            self._server = server
            yield self

    def thaw_all(self) -> None:
        """Resume reading on every frozen connection."""
        for live in self.live.values():
            live.ws.transport.resume_reading()

    async def next_close(self) -> BackendClose:
        async with asyncio.timeout(15.0):
            return await self.closes.get()

    def _process_request(self, _: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            body = json.dumps({"status": "ok" if self.health_status == 200 else "bad"}).encode()
            headers = Headers([("Content-Type", "application/json")])
            headers["Content-Length"] = str(len(body))
            phrase = HTTPStatus(self.health_status).phrase
            return Response(self.health_status, phrase, headers, body)
        if request.path.startswith("/reject/"):
            status = int(request.path.rsplit("/", 1)[1])
            headers = Headers([("Content-Length", "0")])
            return Response(status, HTTPStatus(status).phrase, headers, b"")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.accepted += 1
        live = self.live[id(ws)] = _Live(ws)
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("!"):
                    await self._command(live, message)
                elif live.sink:
                    live.received.append(len(message))
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self.live.pop(id(ws), None)
            self.closes.put_nowait(BackendClose(ws.request.path, ws.close_code, ws.close_reason))

    async def _command(self, live: _Live, command: str) -> None:
        ws = live.ws
        verb, _, rest = command[1:].partition(" ")
        if verb == "close":
            code, _, reason = rest.partition(" ")
            await ws.close(int(code), reason)
        elif verb == "info":
            request = ws.request
            await ws.send(
                json.dumps(
                    {
                        "backend": self.name,
                        "path": request.path,
                        "headers": [[k.lower(), v] for k, v in request.headers.raw_items()],
                        "subprotocol": ws.subprotocol,
                        "extensions": [ext.name for ext in ws.protocol.extensions],
                    }
                )
            )
        elif verb == "burst":
            count, size = (int(part) for part in rest.split())
            for index in range(count):
                await ws.send(burst_message(index, size))
                self.burst_sent += 1
        elif verb == "sink":
            live.sink = True
        elif verb == "freeze":
            ws.transport.pause_reading()
        elif verb == "abort":
            ws.transport.abort()
        else:
            await ws.send(f"unknown command {verb!r}")


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A ws:// URL whose server accepts TCP and never completes the handshake."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the gateway gives up and closes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
