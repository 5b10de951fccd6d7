"""The version contract of the client hop's fast path, and the check made before using it.

:class:`.clientside.GatewayWebSocketProtocol` subclasses uvicorn's ``websockets-sansio``
protocol and reads websockets' ``Protocol`` state: private internals that change between
releases (uvicorn 0.50 renamed the buffer its subclass must fill, 0.53 added
``disconnected``; websockets 16 renamed ``max_size``/``cur_size``). It was written and
tested for :data:`VERSIONS`, the same range pyproject.toml allows; CI runs the gateway's
suite at both ends.

At start (:func:`client_protocol`) the gateway checks the installed versions against that
range and pushes one frame each way through the subclass in memory (:func:`self_test`).
Outside the range, or when the self-test sees anything but the expected frames, it logs
one ``fast_path_disabled`` warning naming the versions and serves through uvicorn's own
``websockets-sansio`` protocol (the plain path: the same behaviour, a few microseconds
more per message). ``gateway.fast_path = "off"`` chooses the plain path outright.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import structlog

from .hook import EXTENSION

__all__ = ["EXTENSION", "PLAIN_PROTOCOL", "VERSIONS", "client_protocol", "self_test"]

# uvicorn's ``ws`` setting for the plain path.
PLAIN_PROTOCOL = "websockets-sansio"
# (lowest tested, first untested) release of each package the fast path reaches into.
VERSIONS: Mapping[str, tuple[str, str]] = {
    "uvicorn": ("0.53", "0.55"),
    "websockets": ("17.0", "17.5"),
}

FastPathMode = Literal["auto", "off"]


def client_protocol(
    mode: FastPathMode,
    log: structlog.typing.FilteringBoundLogger,
    installed: Mapping[str, str] | None = None,
) -> Any:
    """uvicorn's ``ws`` setting: the fast path's class when ``mode`` is ``"auto"`` and it
    fits the installed uvicorn and websockets, else :data:`PLAIN_PROTOCOL` (after one
    warning saying why). ``installed`` replaces the installed versions (for tests)."""
    if mode == "off":
        return PLAIN_PROTOCOL
    versions = dict(installed) if installed is not None else installed_versions()
    problem = version_problem(versions)
    if problem is None:
        problem = self_test()
    if problem is not None:
        log.warning(
            "fast_path_disabled",
            reason=problem,
            supported={name: f">={low},<{high}" for name, (low, high) in VERSIONS.items()},
            **versions,
        )
        return PLAIN_PROTOCOL
    from .clientside import GatewayWebSocketProtocol

    return GatewayWebSocketProtocol


def installed_versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def version_problem(installed: Mapping[str, str]) -> str | None:
    """Why these versions are outside :data:`VERSIONS`, or None."""
    for name, (low, high) in VERSIONS.items():
        found = _release(installed.get(name, ""))
        if found is None or not _release(low) <= found < _release(high):  # type: ignore[operator]
            return f"{name} {installed.get(name)} is outside the tested range >={low},<{high}"
    return None


def _release(text: str) -> tuple[int, ...] | None:
    """The numeric release of a version ("0.54.0" -> (0, 54, 0)); pre-releases and local
    parts count as their release, None if there is none."""
    match = re.match(r"\d+(\.\d+)*", text)
    if match is None:
        return None
    parts = tuple(int(part) for part in match[0].split("."))
    while len(parts) > 1 and parts[-1] == 0:
        parts = parts[:-1]  # 0.54.0 == 0.54
    return parts


@functools.cache
def self_test() -> str | None:
    """Push a client frame in and a server frame out through the fast path, in memory, and
    compare with what websockets itself makes of them; None if all is as expected, else
    what went wrong. Runs once per process, on a loop of its own in a thread (callers may
    or may not be inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fast-path-test") as pool:
        try:
            return pool.submit(asyncio.run, _self_test()).result(timeout=10)
        except Exception as exc:  # anything at all: the plain path is the safe answer
            return f"self-test failed: {type(exc).__name__}: {exc}"


async def _until(done: Callable[[], object]) -> None:
    """Give the event loop turns until ``done()``: the self-test drives uvicorn's protocol,
    which moves its handshake and close along in callbacks it schedules itself and offers no
    event to wait on (the caller bounds the wait)."""
    while not done():  # noqa: ASYNC110 - nothing to wait on but uvicorn's own state
        await asyncio.sleep(0)


async def _self_test() -> str | None:
    import uvicorn
    from uvicorn.server import ServerState
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.uri import parse_uri

    from .clientside import GatewayWebSocketProtocol

    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    taken: list[tuple[int, bytes]] = []
    hooks: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        hook = scope["extensions"].get(EXTENSION)
        hooks.append(hook)
        await receive()
        await send({"type": "websocket.accept"})
        received.put_nowait(await receive())  # through uvicorn's queue
        if hook is not None:

            def direct(opcode: int, payload: bytes) -> bool:
                taken.append((opcode, payload))
                hook.direct = None  # one message; the next goes through uvicorn again
                return True

            hook.direct = direct
        received.put_nowait(await receive())
        await send({"type": "websocket.send", "bytes": b"\x00out\xff"})
        await send({"type": "websocket.close", "code": 1000})

    config = uvicorn.Config(app, ws=GatewayWebSocketProtocol, lifespan="off", log_config=None)
    config.ws_ping_interval = config.ws_ping_timeout = None
    config.ws_per_message_deflate = False
    config.load()
    server = GatewayWebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    quiet = logging.Logger("aivtuber_gateway.fast_path_self_test")
    quiet.disabled = True
    server.logger = quiet
    transport = _MemoryTransport()
    server.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://selftest/"))
    client.send_request(client.connect())
    server.data_received(b"".join(client.data_to_send()))
    try:
        async with asyncio.timeout(5):
            await _until(lambda: server.handshake_complete)
            client.receive_data(transport.take())
            client.send_text("in é".encode())
            client.send_binary(b"\x01\x02")
            chunks = client.data_to_send()
            server.data_received(chunks[0])
            first = await received.get()
            await _until(lambda: hooks)
            if hooks[0] is None:
                return f"self-test: the {EXTENSION!r} scope extension is missing"
            await _until(lambda: hooks[0].direct is not None)
            server.data_received(chunks[1])  # taken by the direct path
            client.send_text(b"last")
            server.data_received(b"".join(client.data_to_send()))
            last = await received.get()
            await _until(lambda: server.close_sent)
            client.receive_data(transport.take())
            events = client.events_received()
            server.data_received(b"".join(client.data_to_send()))  # the close's echo
            await _until(lambda: transport.closed)
    finally:
        server.connection_lost(None)
    frames = [(event.opcode, bytes(event.data)) for event in events if isinstance(event, Frame)]
    if not hooks:
        return "self-test: the app never ran"
    if first != {"type": "websocket.receive", "text": "in é"}:
        return f"self-test: a text frame reached the app as {first!r}"
    if taken != [(Opcode.BINARY.value, b"\x01\x02")]:
        return f"self-test: the direct path took {taken!r}"
    if last != {"type": "websocket.receive", "text": "last"}:
        return f"self-test: a text frame reached the app as {last!r}"
    if not frames or frames[0] != (Opcode.BINARY, b"\x00out\xff"):
        return f"self-test: the client read {frames!r}"
    return None


class _MemoryTransport(asyncio.Transport):
    """What the protocol writes, kept in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)
