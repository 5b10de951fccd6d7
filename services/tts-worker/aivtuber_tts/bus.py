"""The worker's one choice of bus: where its frames go and where else tasks come from.

The rest of the worker sees a :class:`WorkerBus`: its :class:`~aivtuber_common.transport.
FrameSink` and the background tasks it runs. A new bus is one module with its sink and its
``WorkerBus`` plus one ``case`` in :func:`open_bus`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, assert_never

from aivtuber_common.config import DirectBusSettings, RedisBusSettings, Settings
from aivtuber_common.health import WorkerHealth
from aivtuber_common.transport import FrameSink

if TYPE_CHECKING:  # the bus modules import the manager; only their types are needed here
    from .tasks import TaskManager
    from .voices import Voices

__all__ = ["WorkerBus", "open_bus"]


class WorkerBus(Protocol):
    @property
    def sink(self) -> FrameSink: ...

    def start(
        self, manager: TaskManager, voices: Voices, describe: Callable[[], WorkerHealth]
    ) -> set[asyncio.Task[None]]:
        """The bus's background tasks (the caller cancels and awaits them, then
        :meth:`aclose`). ``describe`` gives the worker's health for a heartbeat."""
        ...

    async def aclose(self) -> None: ...


def open_bus(settings: Settings) -> WorkerBus:
    match settings.bus:
        case RedisBusSettings() as bus:
            from .redis_bus import RedisWorkerBus

            return RedisWorkerBus(settings, bus)
        case DirectBusSettings():
            from .sink import DirectWorkerBus

            return DirectWorkerBus(settings)
        case unknown:
            assert_never(unknown)
