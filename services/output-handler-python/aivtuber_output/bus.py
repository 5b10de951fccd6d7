"""The output handler's one choice of bus: which :class:`FrameSource` serves the
subscribers, what else the bus needs served, and what runs while the app does.

Everything else in the service sees only the :class:`~aivtuber_common.transport.FrameSource`
interface. A new bus is one module with its source plus one ``case`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import assert_never

from starlette.routing import BaseRoute, WebSocketRoute

from aivtuber_common.config import DirectBusSettings, RedisBusSettings, Settings
from aivtuber_common.internal import INGEST_PATH, TaskEnd
from aivtuber_common.transport import FrameSource

from .metrics import OutputMetrics

__all__ = ["OutputBus", "open_bus"]


@dataclass(frozen=True)
class OutputBus:
    source: FrameSource
    routes: list[BaseRoute]  # endpoints this bus needs (the direct bus: workers' ingest)
    running: Callable[[], AbstractAsyncContextManager[None]]  # entered by the lifespan


def open_bus(settings: Settings, metrics: OutputMetrics) -> OutputBus:
    match settings.bus:
        case RedisBusSettings() as bus:
            return _redis(settings, bus)
        case DirectBusSettings():
            return _direct(settings, metrics)
        case unknown:
            assert_never(unknown)


def _direct(settings: Settings, metrics: OutputMetrics) -> OutputBus:
    """Workers push frames to ``/internal/ingest``; the tasks live in this process."""
    from .ingest import IngestEndpoint
    from .keepalive import ping_settings
    from .store import TaskStore

    config = settings.output_handler

    def count_finish(end: TaskEnd) -> None:
        metrics.tasks_finished.labels(end.status, end.code or "").inc()

    store = TaskStore(
        task_wait_s=config.task_wait_s,
        task_ttl_s=config.task_ttl_s,
        task_timeout_s=config.task_timeout_s,
        max_buffered_bytes=config.max_buffered_bytes,
        on_finish=count_finish,
    )
    _, ping_timeout_s = ping_settings(config)
    ingest = IngestEndpoint(store, metrics, settings.internal_token, stall_s=ping_timeout_s)

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()  # TTL and watchdog timers

    return OutputBus(store, [WebSocketRoute(INGEST_PATH, ingest.handle)], running)


def _redis(settings: Settings, bus: RedisBusSettings) -> OutputBus:
    """Every task read from its Redis stream; any replica serves any task."""
    from aivtuber_common.bus import RedisLink

    from .redis_source import RedisFrameSource

    config = settings.output_handler
    link = RedisLink(bus)
    source = RedisFrameSource(
        link, task_wait_s=config.task_wait_s, task_timeout_s=config.task_timeout_s
    )

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        probe = asyncio.create_task(link.run(), name="bus-link")
        try:
            yield
        finally:
            probe.cancel()
            await asyncio.wait({probe})
            await source.aclose()
            await link.aclose()

    return OutputBus(source, [], running)
