"""Keepalive pings toward the backends: one task for all connections.

A keepalive task per connection costs memory on every idle proxied connection, and a
gateway holds thousands of them; one ticker pings them all instead. (Toward clients,
uvicorn pings from timers without a task: see :func:`.server.uvicorn_overrides`.)

Each tick, a connection whose last ping is still unanswered after ``timeout`` is closed
with 1011 on both sides; otherwise one is pinged every ``interval``. A ping never waits:
it is written to the backend's socket buffer (see :meth:`.link.BackendLink.ping`); a
backend that stopped reading never answers it, which the timeout catches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from .lifecycle import Side
from .link import BackendLink

__all__ = ["BackendKeepalive", "Pinged", "check"]


class Pinged(Protocol):
    """What keepalive needs from a connection (a :class:`.proxy.ProxyConnection`)."""

    @property
    def link(self) -> BackendLink: ...
    @property
    def finishing(self) -> bool: ...

    def terminate(self, code: int, reason: str, by: Side = ...) -> None: ...


def check(conn: Pinged, now: float, interval: float, timeout: float) -> None:
    """Close ``conn`` if its backend left the last ping unanswered for ``timeout``; send a
    ping when one is due (every ``interval``)."""
    link = conn.link
    if link.ping_payload is not None:
        # Unanswered, or still in the write buffer behind data the backend does not read:
        # as dead as a missing pong either way.
        if now - link.ping_at >= timeout:
            link.ping_payload = None
            conn.terminate(1011, "backend: keepalive ping timeout", Side.BACKEND)
        return
    if now - link.ping_at >= interval and not conn.finishing:
        link.ping()


class BackendKeepalive:
    """The one task that pings every backend connection."""

    def __init__(self, connections: Iterable[Pinged], interval: float, timeout: float) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait, not await: a cancel of the caller must propagate, not be suppressed.
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # A few ticks per period: a dead peer is found within timeout + tick.
        tick = min(self._interval, self._timeout) / 4
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in self._connections:
                check(conn, now, self._interval, self._timeout)
