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
import contextlib

from .registry import Registry

__all__ = ["BackendKeepalive"]


class BackendKeepalive:
    def __init__(self, registry: Registry, interval: float, timeout: float) -> None:
        self._registry = registry
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # A few ticks per period: a dead peer is found within timeout + tick.
        tick = min(self._interval, self._timeout) / 4
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in self._registry:
                conn.keepalive(now, self._interval, self._timeout)
