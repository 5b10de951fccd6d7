"""Waiting for the workers to become ready, on either bus: each submitter re-reads its
workers' state now and then (health probes, heartbeats) and says so here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Refreshes"]


class Refreshes:
    """Wakes whoever waits for the workers' state to be read again."""

    def __init__(self) -> None:
        self._event = asyncio.Event()  # set (and replaced) after every refresh

    def done(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_ready(
        self, ready: Callable[[], bool], warming: Callable[[], bool], timeout_s: float
    ) -> bool:
        """Until ``ready()``, for ``timeout_s`` at most while ``warming()`` (a worker is
        still loading its voices; not when none is: that is not worth a wait), looking
        again after each refresh. The last ``ready()``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not ready() and warming():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._event.wait()
            except TimeoutError:
                break
        return ready()
