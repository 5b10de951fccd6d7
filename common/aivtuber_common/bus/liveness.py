"""Heartbeats: each worker and input handler renews a key with a TTL; who is alive is who
has one (a set per role indexes the names, so nobody scans the keyspace). ``/health`` and
the voice list of the input handler are computed from them, so no static worker list is
needed on the Redis bus.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from .link import BusUnavailable, RedisLink

__all__ = ["Heartbeat", "instance_name", "read_live"]

log = structlog.get_logger("aivtuber_common.bus.liveness")

M = TypeVar("M", bound=BaseModel)

MAX_LIVE = 1000  # processes read per role: a bound on what a heartbeat scan can cost


def instance_name() -> str:
    """Unique per process: host, pid and a random suffix (a restarted process is new)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Renews ``P:live:<role>:<name>`` every ``heartbeat_interval_s`` with ``describe()``
    (a wire model: :class:`~aivtuber_common.health.WorkerHealth` for workers)."""

    def __init__(
        self, link: RedisLink, role: str, name: str, describe: Callable[[], BaseModel]
    ) -> None:
        self.link = link
        self.name = name
        self.key = link.keys.live(role, name)
        self.index = link.keys.live_index(role)
        self.describe = describe
        self.beats = 0

    async def beat(self) -> None:
        settings = self.link.settings
        body = self.describe().model_dump_json()
        with self.link.guard():
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, body, px=int(settings.heartbeat_ttl_s * 1000))
                pipe.sadd(self.index, self.name)
                await pipe.execute()
        self.link.mark_up()
        self.beats += 1

    async def run(self, on_beat: Callable[[], Any] | None = None) -> None:
        """Beat until cancelled; ``on_beat`` (a coroutine function) runs after each beat."""
        while True:
            try:
                await self.beat()
                if on_beat is not None:
                    await on_beat()
            except BusUnavailable:
                pass  # logged once by the link; the next beat retries
            except Exception:
                # No caller to report to: say what broke, keep beating (a Redis restarted
                # empty answers NOGROUP until the workers made their group again).
                log.exception("heartbeat_step_failed", key=self.key)
            await asyncio.sleep(self.link.settings.heartbeat_interval_s)

    async def withdraw(self) -> None:
        """Remove the key at a clean shutdown, so others see the process gone at once."""
        try:
            client: Any = self.link.client  # redis-py types set commands as sync-or-async
            with self.link.guard():
                await client.delete(self.key)
                await client.srem(self.index, self.name)
        except BusUnavailable:
            pass


async def read_live(link: RedisLink, role: str, model: type[M]) -> list[M]:
    """What every live process of ``role`` last said about itself (unreadable heartbeats
    are logged and skipped). Raises BusUnavailable."""
    index = link.keys.live_index(role)
    client: Any = link.client  # redis-py types set commands as sync-or-async
    with link.guard():
        members = await client.srandmember(index, MAX_LIVE)
        names = sorted(name.decode() for name in members)
        values = await client.mget([link.keys.live(role, name) for name in names]) if names else []
        # The index has no TTL of its own: a name whose heartbeat expired is taken out here.
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone:
            await client.srem(index, *gone)
    live = []
    for value in values:
        if value is None:
            continue
        try:
            live.append(model.model_validate_json(value))
        except ValidationError as exc:
            log.warning("heartbeat_unreadable", role=role, error=str(exc)[:200])
    return live
