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
cancelled too: the worker that takes it finds it ended and drops it. Only the tenant that
submitted a task (the SubmitTask in its ``queued`` entry) may cancel it: for any other, the
task is not found, exactly like one that never existed.

A streaming task's text (``text``) goes to the task's own text stream ``P:text:<id>``, one
TaskText entry per piece, flush or end, in order; the worker holding the task reads it (from
the start, so text sent before any worker took the task waits there). Before each write the
task's stream is checked: no such task for the tenant is ``task_not_found``, one with its
end entry ``task_ended``. The text stream expires with the task (``task_ttl_s``).

Active tasks (``limits.max_active_tasks``): every task submitted here is followed until its
stream shows its end entry, or is gone (expired ``task_ttl_s`` after its last write, or
lost with a Redis restarted empty); then ``on_ended`` releases it. The check is one
pipelined ``XREVRANGE ... COUNT 1`` per followed task every ``heartbeat_interval_s``. Every
way a task can stop writes that end or lets the stream expire (a worker's finish, a cancel,
another worker claiming a dead one's task), so none stays active forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from redis.exceptions import ResponseError

from aivtuber_common.bus import END_ID, QUEUED_ID, BusUnavailable, RedisLink
from aivtuber_common.bus.liveness import Heartbeat, instance_name, read_live
from aivtuber_common.bus.streams import (
    DATA,
    GROUP,
    K_END,
    K_OPEN,
    K_QUEUED,
    KIND,
    is_id_collision,
)
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.health import BusHealth, InputBeat, InputHealth, WorkerHealth, WorkerView
from aivtuber_common.internal import SubmitAccepted, SubmitTask, TaskEnd, TaskOpen, TaskText
from aivtuber_common.protocol import VoiceInfo
from aivtuber_common.transport import SubmitRefused, TaskEnded, TaskNotFound, TransportError

from .refreshes import Refreshes

__all__ = ["LiveWorker", "RedisTaskSubmitter"]

log = structlog.get_logger("aivtuber_input.redis_submitter")

# Tasks followed for their end at once; beyond it the oldest is released unseen (a bound on
# memory; the limits keep a tenant far below it).
MAX_FOLLOWED = 65536
END_CHECK_BATCH = 512  # XREVRANGEs per pipeline


@dataclass
class LiveWorker:
    """A worker as its last heartbeat described it."""

    name: str
    beat: WorkerHealth

    @property
    def healthy(self) -> bool:
        return self.beat.status in ("ok", "degraded")

    @property
    def ready(self) -> bool:
        """Fit for a task now: alive, with its default voice loaded."""
        return self.healthy and self.beat.speaks_default

    @property
    def ready_voices(self) -> list[str]:
        return self.beat.ready_voices

    def view(self) -> WorkerView:
        return WorkerView(
            name=self.name,
            healthy=self.healthy,
            state=self.beat.status,
            running=self.beat.running,
            queued=self.beat.queued,
            capacity=self.beat.capacity,
            voices=self.ready_voices,
        )

    @classmethod
    def from_heartbeat(cls, beat: WorkerHealth) -> LiveWorker:
        return cls(name=beat.name or "?", beat=beat)


class RedisTaskSubmitter:
    """Implements :class:`aivtuber_common.transport.TaskSubmitter` on the Redis bus."""

    def __init__(
        self,
        link: RedisLink,
        task_ttl_s: float,
        *,
        ready_wait_s: float = 0.0,
        on_ended: Callable[[str], None] | None = None,
    ) -> None:
        self.link = link
        self.ttl_ms = int(task_ttl_s * 1000)
        self.ready_wait_s = ready_wait_s
        self.on_ended = on_ended  # (task id): its end entry appeared, or its stream is gone
        self.name = instance_name()
        self.workers: list[LiveWorker] = []
        self.backlog = 0  # tasks in the stream no worker has taken yet
        self.heartbeat = Heartbeat(link, "input", self.name, self._describe)
        self._followed: OrderedDict[str, None] = OrderedDict()  # submitted here, not ended
        self._refreshes = Refreshes()

    @property
    def available(self) -> int:
        return sum(1 for worker in self.workers if worker.healthy and worker.ready_voices)

    @property
    def ready(self) -> bool:
        """Redis is up and a live worker has its default voice loaded."""
        return self.link.up and any(worker.ready for worker in self.workers)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Until a worker is ready, for ``timeout_s`` at most while one is alive and still
        loading its voices (not when none is alive: not worth a wait). True if one is."""
        return await self._refreshes.wait_ready(
            lambda: self.ready,
            lambda: any(w.beat.status == "starting" for w in self.workers),
            timeout_s,
        )

    @property
    def default_voice(self) -> str | None:
        return next((w.beat.default_voice for w in self.workers if w.beat.default_voice), None)

    def health(self) -> InputHealth:
        link = self.link
        bus = BusHealth(
            kind="redis", url=link.url, connected=link.up, error=link.error, backlog=self.backlog
        )
        return InputHealth(
            status="unavailable" if not link.up else "ok" if self.ready else "degraded",
            workers_available=self.available,
            workers=[worker.view() for worker in self.workers],
            bus=bus,
        )

    def ready_voice_names(self) -> set[str]:
        """Every voice some live worker can speak now."""
        return {voice for worker in self.workers for voice in worker.ready_voices}

    async def voices(self) -> list[VoiceInfo]:
        """Every live worker's voices from their heartbeats, merged by name (ready if ready
        on any worker), sorted. Raises TransportError when no worker is alive."""
        if not self.link.up:
            raise BusUnavailable(
                "The message bus (Redis) cannot be reached; try again in a moment."
            )
        if not self.workers:
            raise TransportError("No TTS worker is alive on the bus; try again in a moment.")
        merged: dict[str, VoiceInfo] = {}
        for worker in self.workers:
            for info in (voice.info() for voice in worker.beat.voices):
                known = merged.get(info.name)
                if known is None or (info.ready and not known.ready):
                    merged[info.name] = info
        return [merged[name] for name in sorted(merged)]

    async def submit(self, task: SubmitTask) -> SubmitAccepted:
        await self.wait_ready(self.ready_wait_s)
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
        voice = task.voice or ready[0].beat.default_voice or ""
        known = self.ready_voice_names()
        if voice not in known:
            names = ", ".join(sorted(known)) or "none"
            raise SubmitRefused(ErrorCode.UNKNOWN_VOICE, f"No voice {voice!r}; known: {names}.")
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
                    message = f"Task {task.task_id} was submitted before."
                    raise SubmitRefused(ErrorCode.BAD_REQUEST, message)
                raise added
            await self.link.client.xadd(self.link.keys.tasks, {b"task": body})
        self.backlog += 1  # until the next refresh counts it
        self._follow(task.task_id)
        return SubmitAccepted(task_id=task.task_id, voice=voice, queued=self.backlog - 1)

    async def cancel(self, task_id: str, tenant: str | None = None) -> bool:
        """True when this ended the task; False when it had ended already. Raises
        TaskNotFound when there is no such task for ``tenant`` (None: anonymous)."""
        end = TaskEnd(task_id=task_id, status="cancelled")
        key = self.link.keys.task(task_id)
        with self.link.guard():
            first: Any = await self.link.client.xrange(key, count=2)
            if _owner(first) != (True, tenant):
                # Unknown, expired, or another tenant's: never said which.
                raise TaskNotFound(f"No task {task_id} is known: it never existed or is not yours.")
            try:
                added = await self.link.client.xadd(
                    key, {KIND: K_END, DATA: end.model_dump_json()}, id=END_ID, nomkstream=True
                )
            except ResponseError as exc:
                if is_id_collision(exc):
                    return False  # it had ended already
                raise
            if added is None:  # expired since the check above
                raise TaskNotFound(f"No task {task_id} is known: it never existed or is not yours.")
            await self.link.client.publish(self.link.keys.cancel, task_id)
        self._ended(task_id)
        return True

    async def text(self, message: TaskText) -> None:
        """Append to the task's text stream. Raises TaskNotFound (unknown, expired or
        another tenant's) or TaskEnded."""
        task_id = message.task_id
        key = self.link.keys.task(task_id)
        with self.link.guard():
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.xrange(key, count=2)
                pipe.xrevrange(key, count=1)
                first, top = await pipe.execute()
            if _owner(first) != (True, message.tenant):
                raise TaskNotFound(f"No task {task_id} is known: it never existed or is not yours.")
            if top and top[0][1].get(KIND) == K_END:
                raise TaskEnded(f"Task {task_id} has ended; it takes no more text.")
            text_key = self.link.keys.text(task_id)
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.xadd(text_key, {DATA: message.model_dump_json()})
                pipe.pexpire(text_key, self.ttl_ms)
                await pipe.execute()

    async def refresh(self) -> None:
        """Read the workers' heartbeats and the backlog once. Raises BusUnavailable."""
        live = await read_live(self.link, "worker", WorkerHealth)
        workers = sorted((LiveWorker.from_heartbeat(beat) for beat in live), key=_by_name)
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
        self._refreshes.done()
        await self.check_ended()

    async def check_ended(self) -> None:
        """Release every followed task whose stream has its end entry or is gone."""
        followed = list(self._followed)
        for start in range(0, len(followed), END_CHECK_BATCH):
            batch = followed[start : start + END_CHECK_BATCH]
            with self.link.guard():
                async with self.link.client.pipeline(transaction=False) as pipe:
                    for task_id in batch:
                        pipe.xrevrange(self.link.keys.task(task_id), count=1)
                    tops: list[Any] = await pipe.execute()
            for task_id, top in zip(batch, tops, strict=True):
                if not top or top[0][1].get(KIND) == K_END:
                    self._ended(task_id)

    def _follow(self, task_id: str) -> None:
        self._followed[task_id] = None
        while len(self._followed) > MAX_FOLLOWED:
            oldest, _ = self._followed.popitem(last=False)
            log.warning("task_released_unfollowed", task_id=oldest)
            if self.on_ended is not None:
                self.on_ended(oldest)

    def _ended(self, task_id: str) -> None:
        if task_id in self._followed:
            del self._followed[task_id]
            if self.on_ended is not None:
                self.on_ended(task_id)

    async def run(self) -> None:
        """Heartbeat and refresh until cancelled; the lifespan owns the task running this."""
        await self.heartbeat.run(self.refresh)

    async def withdraw(self) -> None:
        await self.heartbeat.withdraw()

    def _describe(self) -> InputBeat:
        return InputBeat(name=self.name, workers=len(self.workers), backlog=self.backlog)


@contextlib.asynccontextmanager
async def redis_submitter(
    settings: Settings, bus: RedisBusSettings, on_ended: Callable[[str], None] | None = None
) -> AsyncIterator[RedisTaskSubmitter]:
    """The submitter with its link, probe and heartbeat running; all closed on exit."""
    link = RedisLink(bus)
    submitter = RedisTaskSubmitter(
        link,
        settings.output_handler.task_ttl_s,
        ready_wait_s=settings.input_handler.ready_wait_s,
        on_ended=on_ended,
    )
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


def _owner(entries: list[Any]) -> tuple[bool, str | None]:
    """(found, tenant) of a task from the first entries of its stream: the SubmitTask of
    its ``queued`` entry, else the TaskOpen. (False, None) when neither is there."""
    for _, fields in entries or []:
        try:
            if fields.get(KIND) == K_QUEUED:
                return True, SubmitTask.model_validate_json(fields[DATA]).tenant
            if fields.get(KIND) == K_OPEN:
                return True, TaskOpen.model_validate_json(fields[DATA]).tenant
        except (KeyError, ValidationError):
            break
    return False, None


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _name(group: dict[Any, Any]) -> str:
    name = group.get("name", b"")
    return name.decode() if isinstance(name, bytes) else str(name)


def _by_name(worker: LiveWorker) -> str:
    return worker.name
