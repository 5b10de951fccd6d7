"""The input handler's one choice of bus: which :class:`~aivtuber_common.transport.
TaskSubmitter` takes the tasks.

Everything else in the service sees only the interface. A new bus is one module with its
submitter (and a context manager that runs it) plus one ``case`` in :func:`open_bus`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import assert_never

import httpx

from aivtuber_common.config import DirectBusSettings, RedisBusSettings, Settings
from aivtuber_common.transport import TaskSubmitter

from .activity import ActiveTasks
from .limits import SpeakLimiter

__all__ = ["open_bus"]


@contextlib.asynccontextmanager
async def open_bus(
    settings: Settings,
    active: ActiveTasks,
    transport: httpx.AsyncBaseTransport | None = None,
    limiter: SpeakLimiter | None = None,
) -> AsyncIterator[TaskSubmitter]:
    """The submitter, running (health, heartbeats, followers of the tasks' ends) until the
    block exits. ``active`` hears which tasks were taken and which ended; ``transport``
    replaces the network under the direct bus's HTTP client (tests); on Redis, ``limiter``
    counts in Redis for as long (the limits every replica shares: shared_limits.py)."""
    match settings.bus:
        case RedisBusSettings() as bus:
            from .redis_submitter import redis_submitter
            from .shared_limits import shared_limits

            async with (
                redis_submitter(settings, bus, on_ended=active.ended) as on_redis,
                shared_limits(on_redis.link, bus, active, limiter),
            ):
                yield on_redis
        case DirectBusSettings():
            from .workers import http_submitter

            async with http_submitter(settings, active, transport) as direct:
                yield direct
        case unknown:
            assert_never(unknown)
