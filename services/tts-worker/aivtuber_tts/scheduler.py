"""Engine slots handed out by urgency, so a new task's first piece goes ahead of audio that
is not needed yet.

``max_concurrent`` pieces run at once, each in a thread of the executor the app owns
(onnxruntime releases the GIL). Every admitted task asks for a slot piece by piece, with a
priority: the latest moment the piece can start and still be done in time (see
``TaskManager``: for later pieces, when the listener runs out of audio minus the piece's
estimated synthesis time; for a first piece, shortly after the task arrived). The waiting
piece with the smallest value gets the next free slot. So a task that just arrived is
served as soon as one in-flight piece finishes, before long tasks' later sentences, which
already have seconds of audio playing; and a stream about to underrun goes before one that
is well ahead.

A slot is given back when its thread finishes, not when the waiting coroutine is cancelled:
a cancelled task stops awaiting at once, but the CPU stays busy with the piece until it
ends, and counting the slot free earlier would oversubscribe the cores.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

__all__ = ["PieceScheduler"]

T = TypeVar("T")


class PieceScheduler:
    def __init__(self, slots: int, executor: Executor) -> None:
        self.slots = slots
        self.busy = 0  # slots whose thread is running a piece
        self._executor = executor
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def run(self, deadline: float, work: Callable[[], T]) -> T:
        """Run ``work`` in a slot once it is this piece's turn; its result or exception."""
        self._loop = asyncio.get_running_loop()
        await self._acquire(deadline)
        try:
            future = self._executor.submit(work)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release_from_thread)
        return await asyncio.wrap_future(future)

    async def _acquire(self, deadline: float) -> None:
        if self.busy < self.slots and not self.waiting:
            self.busy += 1
            return
        assert self._loop is not None
        turn: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiting, (deadline, next(self._order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            raise

    def _release(self) -> None:
        # Hand the slot straight to the most urgent waiter, so busy never dips and a
        # fresh arrival cannot jump the queue in between.
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.busy -= 1

    def _release_from_thread(self, _: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # the loop closed between the check and the call
            pass
