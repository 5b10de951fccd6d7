"""Submitting tasks on the Redis bus: the :class:`TaskSubmitter` of ``bus.kind = "redis"``.

A submission is one pipelined transaction: the task's own stream gets its ``queued`` entry
(so the task exists for cancels and listeners from now on) and the tasks stream gets the
SubmitTask, which the first worker of the group with room takes. Which workers exist, and
which voices they speak, comes from their heartbeats (refreshed every
``heartbeat_interval_s``), not from a static list: a speak is refused with
``tts_unavailable`` when no live worker is ready (or Redis is down), with ``unknown_voice``
when no live worker has the voice, and with ``tts_unavailable`` when ``max_backlog`` tasks
already wait for a worker.

A cancel appends the task's end (``cancelled``) at the stream's end position, so it wins or
loses atomically against the worker finishing it, and publishes the task id on the cancel
channel so that its holder stops at once. A task no worker has taken yet is thereby
cancelled too: the worker that takes it finds it ended and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import ResponseError

from aivtuber_common.bus import END_ID, QUEUED_ID, BusUnavailable, RedisLink
from aivtuber_common.bus.liveness import Heartbeat, instance_name, read_live
from aivtuber_common.bus.streams import DATA, GROUP, K_END, K_QUEUED, KIND, is_id_collision
from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.internal import SubmitAccepted, SubmitTask, TaskEnd
from aivtuber_common.transport import TransportError

from .workers import SubmitRefused

__all__ = ["LiveWorker", "RedisTaskSubmitter"]

log = structlog.get_logger("aivtuber_input.redis_submitter")


@dataclass
class LiveWorker:
    """A worker as its last heartbeat described it."""

    name: str
    status: str
    running: int = 0
    queued: int = 0
    capacity: int = 1
    default_voice: str | None = None
    voices: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> describe()

    @property
    def healthy(self) -> bool:
        return self.status in ("ok", "degraded")

    @property
    def ready_voices(self) -> set[str]:
        return {voice for voice, info in self.voices.items() if info.get("state") == "ready"}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "healthy": self.healthy,
            "status": self.status,
            "running": self.running,
            "queued": self.queued,
            "capacity": self.capacity,
            "voices": sorted(self.ready_voices),
        }

    @classmethod
    def from_heartbeat(cls, data: dict[str, Any]) -> LiveWorker:
        voices = {
            str(voice["id"]): voice
            for voice in data.get("voices") or []
            if isinstance(voice, dict) and "id" in voice
        }
        return cls(
            name=str(data.get("name", "?")),
            status=str(data.get("status", "?")),
            running=_count(data.get("running")),
            queued=_count(data.get("queued")),
            capacity=_count(data.get("capacity")) or 1,
            default_voice=data.get("default_voice") if data.get("default_voice") else None,
            voices=voices,
        )


class RedisTaskSubmitter:
    """Implements :class:`aivtuber_common.transport.TaskSubmitter` on the Redis bus."""

    def __init__(self, link: RedisLink, task_ttl_s: float) -> None:
        self.link = link
        self.ttl_ms = int(task_ttl_s * 1000)
        self.name = instance_name()
        self.workers: list[LiveWorker] = []
        self.backlog = 0  # tasks in the stream no worker has taken yet
        self.heartbeat = Heartbeat(link, "input", self.name, self._describe)

    @property
    def available(self) -> int:
        return sum(1 for worker in self.workers if worker.healthy and worker.ready_voices)

    def voices(self) -> dict[str, dict[str, Any]]:
        """Every voice some live worker can speak now (the first description of each)."""
        found: dict[str, dict[str, Any]] = {}
        for worker in self.workers:
            for voice in sorted(worker.ready_voices):
                found.setdefault(voice, worker.voices[voice])
        return found

    async def submit(self, task: SubmitTask) -> SubmitAccepted:
        if not self.link.up:
            raise BusUnavailable(
                "The message bus (Redis) cannot be reached; try again in a moment."
            )
        ready = [worker for worker in self.workers if worker.healthy and worker.ready_voices]
        if not ready:
            raise TransportError(
                "No TTS worker is available right now (none is alive and ready on the bus); "
                "try again in a moment."
            )
        voice = task.voice or ready[0].default_voice or ""
        known = self.voices()
        if voice not in known:
            names = ", ".join(sorted(known)) or "none"
            raise SubmitRefused("unknown_voice", f"No voice {voice!r}; known: {names}.")
        if self.backlog >= self.link.settings.max_backlog:
            raise TransportError(
                f"{self.backlog} tasks are already waiting for a TTS worker; try again later."
            )
        key = self.link.keys.task(task.task_id)
        body = task.model_dump_json()
        with self.link.guard():
            # The task's stream first: its fixed "queued" ID makes a second submission of
            # the same id fail here, before it could reach a worker twice.
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {KIND: K_QUEUED, DATA: body}, id=QUEUED_ID)
                pipe.pexpire(key, self.ttl_ms)
                added, _ = await pipe.execute(raise_on_error=False)
            if isinstance(added, ResponseError):
                if is_id_collision(added):
                    raise SubmitRefused("bad_request", f"Task {task.task_id} was submitted before.")
                raise added
            await self.link.client.xadd(self.link.keys.tasks, {b"task": body})
        self.backlog += 1  # until the next refresh counts it
        return SubmitAccepted(task_id=task.task_id, voice=voice, queued=self.backlog - 1)

    async def cancel(self, task_id: str) -> bool:
        end = TaskEnd(task_id=task_id, status="cancelled")
        key = self.link.keys.task(task_id)
        with self.link.guard():
            try:
                added = await self.link.client.xadd(
                    key, {KIND: K_END, DATA: end.model_dump_json()}, id=END_ID, nomkstream=True
                )
            except ResponseError as exc:
                if is_id_collision(exc):
                    return False  # it had ended already
                raise
            if added is None:
                return False  # no such task (never submitted, or expired)
            await self.link.client.publish(self.link.keys.cancel, task_id)
        return True

    async def refresh(self) -> None:
        """Read the workers' heartbeats and the backlog once. Raises BusUnavailable."""
        live = await read_live(self.link, "worker")
        workers = sorted((LiveWorker.from_heartbeat(data) for data in live), key=_by_name)
        with self.link.guard():
            try:
                groups: Any = await self.link.client.xinfo_groups(self.link.keys.tasks)
            except ResponseError:
                groups = []  # no stream yet: no worker ever started
        self.backlog = next(
            (_count(group.get("lag")) for group in groups if _name(group) == GROUP), 0
        )
        before = {worker.name for worker in self.workers}
        after = {worker.name for worker in workers}
        for gone in sorted(before - after):
            log.warning("worker_gone", worker=gone)
        for new in sorted(after - before):
            log.info("worker_up", worker=new)
        self.workers = workers

    async def run(self) -> None:
        """Heartbeat and refresh until cancelled; the lifespan owns the task running this."""
        await self.heartbeat.run(self.refresh)

    async def withdraw(self) -> None:
        await self.heartbeat.withdraw()

    def _describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": len(self.workers), "backlog": self.backlog}

    def state(self) -> dict[str, Any]:
        """For /health."""
        return {
            "kind": "redis",
            "url": self.link.url,
            "connected": self.link.up,
            "error": self.link.error,
            "backlog": self.backlog,
        }


@contextlib.asynccontextmanager
async def redis_submitter(settings: Settings) -> AsyncIterator[RedisTaskSubmitter]:
    """The submitter with its link, probe and heartbeat running; all closed on exit."""
    assert isinstance(settings.bus, RedisBusSettings)
    link = RedisLink(settings.bus)
    submitter = RedisTaskSubmitter(link, settings.output_handler.task_ttl_s)
    background = {
        asyncio.create_task(link.run(), name="bus-link"),
        asyncio.create_task(submitter.run(), name="bus-heartbeat"),
    }
    try:
        yield submitter
    finally:
        for task in background:
            task.cancel()
        await asyncio.wait(background)
        await submitter.withdraw()
        await link.aclose()


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _name(group: dict[Any, Any]) -> str:
    name = group.get("name", b"")
    return name.decode() if isinstance(name, bytes) else str(name)


def _by_name(worker: LiveWorker) -> str:
    return worker.name
