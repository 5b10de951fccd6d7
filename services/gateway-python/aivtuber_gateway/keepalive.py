"""Keepalive pings toward the backends: one task for all connections.

websockets' own keepalive runs one task per connection, about 2 KB of every idle proxied
connection; a gateway holds thousands of idle connections, so one ticker pings them all
instead. (Toward clients, uvicorn pings from timers without a task: see
:func:`.server.uvicorn_overrides`.)

Each tick, a connection whose last ping is still unanswered after ``timeout`` is closed
with 1011 on both sides; otherwise one is pinged every ``interval``. A ping is sent by a
short task (``ws.ping()`` waits while the backend's write buffer is full, and that must
not hold up the others); those tasks are owned here and cancelled on stop.
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
        self._pings: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [task for task in (self._task, *self._pings) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # A few ticks per period: a dead peer is found within timeout + tick.
        tick = min(self._interval, self._timeout) / 4
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in self._registry:
                ping = conn.keepalive(now, self._interval, self._timeout)
                if ping is not None:
                    task = loop.create_task(ping)
                    self._pings.add(task)
                    task.add_done_callback(self._pings.discard)
