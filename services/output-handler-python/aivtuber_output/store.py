"""The task store: every task's frames, in order, for any number of subscribers.

The ingest endpoint writes (:meth:`TaskStore.open`, :meth:`~TaskStore.append`,
:meth:`~TaskStore.end`); each subscriber reads with :meth:`TaskStore.read` at its own pace
from a chunk position, so a slow subscriber never blocks the worker or the other
subscribers. Nothing here touches a socket: writers call plain methods, readers wait on an
``asyncio.Event`` that is replaced on every change (no polling).

Lifecycle of a task (:class:`TaskState`)::

    waiting ──first frame──> streaming ──TaskEnd──> completed | cancelled | failed
       │                                   │
       └───────TaskEnd / worker lost───────┴──> failed ("worker_lost", "timeout", ...)

A subscriber may come before the worker announces the task: a placeholder in ``waiting``
holds it for ``task_wait_s``. Finished tasks stay ``task_ttl_s``; beyond
``max_buffered_bytes`` the oldest finished ones go first.

Exceptions::

    TransportError (aivtuber_common.transport)
     ├── TaskNotFound      code "task_not_found": nothing announced within task_wait_s (for
     │                     this tenant: another tenant's task is not found, after the same wait)
     └── IngestError       code "ingest_error": a worker sent something that does not fit
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from aivtuber_common.codes import ErrorCode
from aivtuber_common.health import OutputHealth
from aivtuber_common.internal import TaskEnd, TaskOpen
from aivtuber_common.transport import (
    FrameEvent,
    TaskAudio,
    TaskNotFound,
    TaskStatus,
    TransportError,
)
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

__all__ = ["IngestError", "TaskNotFound", "TaskSnapshot", "TaskState", "TaskStore"]

SAMPLE_WIDTH = 2


class TaskState(StrEnum):
    WAITING = "waiting"
    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class IngestError(TransportError):
    code = ErrorCode.INGEST_ERROR


@dataclass(frozen=True)
class TaskSnapshot:
    task_id: str
    state: TaskState
    subscribers: int
    chunks: int
    samples: int
    sample_rate: int | None
    code: str | None = None
    message: str | None = None


@dataclass(eq=False)
class _Task:
    task_id: str
    open: TaskOpen | None = None
    frames: list[tuple[float, bytes, Track | None, WordTrack | None]] = field(default_factory=list)
    end: TaskEnd | None = None
    source: Hashable | None = None
    subscribers: int = 0
    nbytes: int = 0
    samples: int = 0
    last_event_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watchdog: asyncio.TimerHandle | None = None

    @property
    def state(self) -> TaskState:
        if self.end is not None:
            return TaskState(self.end.status)
        return TaskState.STREAMING if self.frames else TaskState.WAITING

    def notify(self) -> None:
        # Wake every reader waiting now; later readers wait on the fresh event.
        self.changed.set()
        self.changed = asyncio.Event()


class TaskStore:
    """In-memory implementation of :class:`aivtuber_common.transport.FrameSource`."""

    def __init__(
        self,
        *,
        task_wait_s: float,
        task_ttl_s: float,
        task_timeout_s: float,
        max_buffered_bytes: int,
        on_finish: Callable[[TaskEnd], None] | None = None,
    ) -> None:
        self.task_wait_s = task_wait_s
        self.task_ttl_s = task_ttl_s
        self.task_timeout_s = task_timeout_s
        self.max_buffered_bytes = max_buffered_bytes
        self._on_finish = on_finish  # metrics hook: every ending, whoever caused it
        self._tasks: dict[str, _Task] = {}
        self._finished: OrderedDict[str, _Task] = OrderedDict()  # oldest first
        self._timers: set[asyncio.TimerHandle] = set()
        self.buffered_bytes = 0
        self.writers = 0  # worker connections feeding the store (the ingest endpoint counts)

    # --- writer side (the ingest endpoint) ------------------------------------------------

    def open(self, message: TaskOpen, source: Hashable | None = None) -> None:
        task = self._tasks.get(message.task_id)
        if task is None:
            task = self._tasks[message.task_id] = _Task(message.task_id)
        elif task.open is not None:
            raise IngestError(f"task {message.task_id} was announced twice")
        task.open = message
        task.source = source
        task.last_event_at = time.monotonic()
        task.notify()

    def append(
        self,
        task_id: str,
        chunk_id: int,
        level: float,
        pcm: bytes,
        visemes: Track | None = None,
        words: WordTrack | None = None,
    ) -> float:
        """Store one frame (and its viseme and word tracks); returns the seconds since the
        task's previous event."""
        task = self._live(task_id, "a frame")
        if chunk_id != len(task.frames):
            # A gap or a repeat means the stream is not what the worker made: fail it
            # rather than play garbled audio.
            message = f"frame {chunk_id} arrived when {len(task.frames)} was expected"
            self._finish(
                task,
                TaskEnd(
                    task_id=task_id,
                    status="failed",
                    code=ErrorCode.FRAME_LOST,
                    message=f"The audio stream broke: {message}.",
                ),
            )
            raise IngestError(f"task {task_id}: {message}")
        now = time.monotonic()
        gap = now - task.last_event_at
        task.last_event_at = now
        if not task.frames and not (task.open and task.open.stream):  # quiet awaiting text
            self._arm_watchdog(task, self.task_timeout_s)
        task.frames.append((level, pcm, visemes, words))
        # The words count too (characters): up to 64 x 255 a frame would escape the bound.
        size = len(pcm) + (sum(len(word) for _, _, word in words) if words else 0)
        task.nbytes += size
        task.samples += len(pcm) // SAMPLE_WIDTH
        self.buffered_bytes += size
        task.notify()
        if self.buffered_bytes > self.max_buffered_bytes:
            self._evict_over_bound()
        return gap

    def end(self, message: TaskEnd) -> None:
        task = self._live(message.task_id, "task_end")
        self._finish(task, message)

    def fail(self, task_id: str, code: str, message: str) -> bool:
        """Fail an unfinished task (worker lost, timeout). False if it had already ended."""
        task = self._tasks.get(task_id)
        if task is None or task.end is not None:
            return False
        self._finish(task, TaskEnd(task_id=task_id, status="failed", code=code, message=message))
        return True

    def source_lost(
        self,
        source: Hashable,
        code: str = ErrorCode.WORKER_LOST,
        message: str = "The TTS worker's connection was lost before the task finished.",
    ) -> list[str]:
        """The worker connection ``source`` is gone: fail its unfinished tasks."""
        lost = [
            task.task_id
            for task in self._tasks.values()
            if task.source == source and task.end is None and task.open is not None
        ]
        for task_id in lost:
            self.fail(task_id, code, message)
        return lost

    # --- reader side (subscribers, HTTP) --------------------------------------------------

    async def read(
        self, task_id: str, from_chunk: int = 0, tenant: str | None = None
    ) -> AsyncGenerator[FrameEvent, None]:
        """TaskOpen, frames ``(chunk_id, level, pcm, visemes, words)`` from ``from_chunk``, TaskEnd.

        Raises TaskNotFound when the task is not announced for ``tenant`` (None: anonymous)
        within ``task_wait_s``: a task of another tenant waits the same and fails the same
        as one that does not exist, so a subscriber cannot learn that it does. Use it inside
        ``contextlib.aclosing`` so an abandoned read is counted out at once.
        """
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = _Task(task_id)
        task.subscribers += 1
        try:
            if task.open is None or task.open.tenant != tenant:
                await self._wait_for_open(task, tenant)
            assert task.open is not None
            yield task.open
            position = max(0, from_chunk)
            while True:
                frames = task.frames
                while position < len(frames):
                    level, pcm, visemes, words = frames[position]
                    yield (position, level, pcm, visemes, words)
                    position += 1
                if task.end is not None:
                    yield task.end
                    return
                await task.changed.wait()
        finally:
            task.subscribers -= 1
            if task.open is None and task.subscribers == 0 and self._tasks.get(task_id) is task:
                del self._tasks[task_id]  # a placeholder nobody waits for any more

    def snapshot(self, task_id: str) -> TaskSnapshot | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        return _snapshot(task)

    def snapshots(self) -> Iterator[TaskSnapshot]:
        return (_snapshot(task) for task in list(self._tasks.values()))

    async def audio(self, task_id: str) -> TaskAudio | None:
        """The task's whole PCM so far (None when unknown, or only waited for)."""
        task = self._tasks.get(task_id)
        if task is None or task.open is None:
            return None
        return TaskAudio(task.open, task.end, b"".join(frame[1] for frame in task.frames))

    async def status(self, task_id: str) -> TaskStatus:
        snapshot = self.snapshot(task_id)
        return TaskStatus(
            task_id=task_id,
            status=snapshot.state.value if snapshot else "not_found",
            connected=bool(snapshot and snapshot.subscribers),
            chunks=snapshot.chunks if snapshot else 0,
            code=snapshot.code if snapshot else None,
        )

    def health(self) -> OutputHealth:
        states = {state.value: 0 for state in TaskState}
        for snapshot in self.snapshots():
            states[snapshot.state.value] += 1
        return OutputHealth(
            tasks=states,
            subscribers=self.subscriber_count,
            ingest_connections=self.writers,
            buffered_bytes=self.buffered_bytes,
        )

    @property
    def subscriber_count(self) -> int:
        return sum(task.subscribers for task in self._tasks.values())

    def close(self) -> None:
        """Cancel the timers (TTL, watchdogs); called by the lifespan at shutdown."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # --- internals ------------------------------------------------------------------------

    async def _wait_for_open(self, task: _Task, tenant: str | None) -> None:
        try:
            async with asyncio.timeout(self.task_wait_s):
                while task.open is None or task.open.tenant != tenant:
                    await task.changed.wait()
        except TimeoutError:
            raise TaskNotFound(
                f"No task {task.task_id} was started within {self.task_wait_s:g} s."
            ) from None

    def _live(self, task_id: str, what: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None or task.open is None:
            raise IngestError(f"{what} for task {task_id}, which was never announced")
        if task.end is not None:
            raise IngestError(f"{what} for task {task_id}, which already ended ({task.end.status})")
        return task

    def _finish(self, task: _Task, end: TaskEnd) -> None:
        task.end = end
        if task.watchdog is not None:
            task.watchdog.cancel()
            self._timers.discard(task.watchdog)
            task.watchdog = None
        task.notify()
        if self._on_finish is not None:
            self._on_finish(end)
        self._finished[task.task_id] = task
        self._call_later(self.task_ttl_s, self._expire, task)
        if self.buffered_bytes > self.max_buffered_bytes:
            self._evict_over_bound()

    def _arm_watchdog(self, task: _Task, delay: float) -> None:
        # One timer per task, re-armed only when it fires early: cheaper than resetting a
        # timer on every frame.
        task.watchdog = self._call_later(delay, self._check_idle, task)

    def _check_idle(self, task: _Task) -> None:
        task.watchdog = None
        if task.end is not None:
            return
        idle = time.monotonic() - task.last_event_at
        if idle >= self.task_timeout_s:
            self.fail(
                task.task_id,
                ErrorCode.TIMEOUT,
                f"The TTS worker sent nothing for {self.task_timeout_s:g} s.",
            )
        else:
            self._arm_watchdog(task, self.task_timeout_s - idle)

    def _expire(self, task: _Task) -> None:
        self._forget(task)

    def _evict_over_bound(self) -> None:
        while self.buffered_bytes > self.max_buffered_bytes and self._finished:
            _, oldest = next(iter(self._finished.items()))
            self._forget(oldest)

    def _forget(self, task: _Task) -> None:
        if self._finished.pop(task.task_id, None) is task:
            self.buffered_bytes -= task.nbytes
        if self._tasks.get(task.task_id) is task:
            del self._tasks[task.task_id]

    def _call_later(self, delay: float, callback: object, task: _Task) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback(task)  # type: ignore[operator]

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)
        return handle


def _snapshot(task: _Task) -> TaskSnapshot:
    return TaskSnapshot(
        task_id=task.task_id,
        state=task.state,
        subscribers=task.subscribers,
        chunks=len(task.frames),
        samples=task.samples,
        sample_rate=task.open.sample_rate if task.open else None,
        code=task.end.code if task.end else None,
        message=task.end.message if task.end else None,
    )
