"""Real servers on ephemeral ports for the tests (after uvicorn's tests/utils.py)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import uvicorn

from aivtuber_common.cli import uvicorn_config

START_TIMEOUT_S = 10.0
# How long wait_until waits for another party's state before the test fails.
POLL_WAIT_S = 15.0

T = TypeVar("T")


async def eventually(check: Callable[[], T | None | Awaitable[T | None]], every: float = 0.01) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that.
    For state that another process or server owns (its /health, a Redis key, a counter of a
    server's) and that offers no event to wait on; the caller bounds the wait."""
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        await asyncio.sleep(every)


async def wait_until(check: Callable[[], object]) -> None:
    """:func:`eventually`, failing the test after POLL_WAIT_S."""
    async with asyncio.timeout(POLL_WAIT_S):
        await eventually(check)


class RunningServer:
    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def run_server(app: Any, **overrides: Any) -> AsyncIterator[RunningServer]:
    """Serve ``app`` with uvicorn on a free loopback port, configured as the services are."""
    config = uvicorn_config(app, "127.0.0.1", 0, "warning")
    for key, value in overrides.items():
        setattr(config, key, value)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningServer(server, port)
    finally:
        server.should_exit = True
        await task


async def listening_port(stream: asyncio.StreamReader, seen: list[str] | None = None) -> int:
    """Read a service's JSON log lines (``--port 0``) until its ``listening`` event: the
    port the kernel gave it. Lines read are appended to ``seen``."""
    async with asyncio.timeout(START_TIMEOUT_S * 3):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise RuntimeError("the service exited before it listened: " + "".join(seen or []))
            if seen is not None:
                seen.append(line)
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "listening":
                    return int(event["port"])


def free_port() -> int:
    """A port that was free a moment ago: for a backend that must be down (nothing listens
    there), or one started later on a port chosen in advance."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_script(name: str) -> ModuleType:
    """A module of scripts/ (not a package), e.g. the docs generators."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
