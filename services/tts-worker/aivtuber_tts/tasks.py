"""Admission, synthesis and cancellation of tasks: the worker's core.

A submitted task is admitted when its voice is ready, the output handler is connected and
there is room (``max_concurrent`` engine slots plus ``max_queued`` waiting tasks; beyond that
the worker says ``busy`` so the input handler tries another). One group (a tenant, or one
anonymous client address) may hold at most ``tenant_share`` of that room, so a tenant that
floods leaves room for the others. It is announced to the output handler (TaskOpen) before
the submitter hears 202, so a listener never races the worker.

Engine time is shared fairly between groups (see :mod:`aivtuber_tts.scheduler`). Whoever
follows :meth:`TaskManager.events` (the input handlers, to count each tenant's active tasks)
hears of every task's end, with a snapshot of the tasks held first and then every
``TASK_SNAPSHOT_INTERVAL_S``.

Each admitted task runs as one coroutine that pulls PCM pieces from its engine (pieces go
through the :class:`~aivtuber_tts.scheduler.PieceScheduler`), cuts them into ``frame_ms``
frames and sends each frame at once. Stopping a task (cancel, lost connection, shutdown)
cancels that coroutine between two awaits, so no frame of it is sent after the stop, even
while its in-flight piece is still being computed in a thread.

A piece's priority is its deadline minus its estimated synthesis time (its characters
times the voice's measured seconds per character, a moving average). The deadline of a
later piece is when the listener runs out of audio (first frame sent + audio sent so far);
a first piece is due ``first_chunk_slack_s`` after the task arrived, so under load it waits
only for pieces of streams that would otherwise stutter.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from aivtuber_common.audio import level
from aivtuber_common.config import TtsWorkerSettings
from aivtuber_common.identity import Identity
from aivtuber_common.internal import (
    TASK_SNAPSHOT_INTERVAL_S,
    SubmitAccepted,
    SubmitTask,
    TaskEnd,
    TaskOpen,
    TaskSnapshot,
)
from aivtuber_common.transport import FrameSink
from aivtuber_common.visemes import Track

from .errors import EngineError, IngestLost
from .metrics import TtsMetrics
from .scheduler import PieceScheduler
from .visemes import TrackCutter
from .voices import Voice, Voices, VoiceState

__all__ = ["Refusal", "StopReason", "TaskManager"]

log = structlog.get_logger("aivtuber_tts.tasks")

CANCEL_WAIT_S = 2.0  # DELETE waits this long for the TaskEnd to be on its way
SHUTDOWN_WAIT_S = 3.0
COST_SMOOTHING = 0.2  # weight of the newest piece in the engine's cost per character
# Ended task ids repeated in every snapshot: a follower that connects just as a task ends
# still learns of it (far more than can end between a submission and a snapshot).
RECENTLY_ENDED = 128
# TaskEnds queued for one follower; one that falls this far behind is disconnected (it
# reconnects and catches up from the snapshot) instead of holding memory.
FOLLOWER_BACKLOG = 1024


class Refusal(Exception):
    """A submission the worker will not take; becomes a WorkerRefusal with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class StopReason(enum.StrEnum):
    CANCELLED = "cancelled"  # DELETE /v1/tasks/{id}
    INGEST_LOST = "ingest_lost"  # the output handler connection dropped
    SHUTDOWN = "shutdown"


@dataclass(eq=False)
class _Job:
    task_id: str
    text: str
    voice: Voice
    group: str  # fair sharing: Identity.limits_key of who spoke it
    tenant: str | None = None  # who spoke it: only this tenant may cancel it
    accepted_at: float = field(default_factory=time.monotonic)
    started: bool = False  # its first piece reached an engine slot
    deadline: float = 0.0  # when its listener runs out of audio; see scheduler.py
    first_frame_at: float | None = None
    audio_s: float = 0.0
    engine_s: float = 0.0
    chunks: int = 0
    stop_reason: StopReason | None = None
    synth: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class TaskManager:
    def __init__(
        self,
        settings: TtsWorkerSettings,
        voices: Voices,
        sink: FrameSink,
        scheduler: PieceScheduler,
        metrics: TtsMetrics,
        ingest_connected: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.voices = voices
        self.sink = sink
        self.scheduler = scheduler
        self.metrics = metrics
        self.capacity = settings.max_concurrent + settings.max_queued
        # Rounded up: a tiny worker (capacity 2) still lets one user fill it.
        self.group_capacity = max(1, math.ceil(self.capacity * settings.tenant_share))
        self._per_group: Counter[str] = Counter()
        self._followers: set[asyncio.Queue[TaskEnd | None]] = set()
        self._recently_ended: deque[str] = deque(maxlen=RECENTLY_ENDED)
        self._ingest_connected = ingest_connected
        self._jobs: dict[str, _Job] = {}
        self._seconds_per_char: dict[str, float] = {}  # per voice, a moving average
        self._runners: set[asyncio.Task[None]] = set()
        # Bus seam: a pull-based bus (aivtuber_tts.redis_bus) learns here when a task is done
        # (its TaskEnd, None when lost) and so when there is room to take the next one.
        self.finished_hooks: list[Callable[[str, TaskEnd | None], None]] = []
        # Read when scraped, so the gauges are never stale.
        metrics.running.set_function(lambda: self.running)
        metrics.queued.set_function(lambda: self.queued)
        metrics.engine_busy.set_function(lambda: scheduler.busy + scheduler.spare_busy)
        metrics.pieces_waiting.set_function(lambda: scheduler.waiting)

    @property
    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if job.started)

    @property
    def queued(self) -> int:
        return len(self._jobs) - self.running

    @property
    def room(self) -> int:
        """Tasks admission would take now (bus seam: a pull-based bus takes no more)."""
        return max(0, self.capacity - len(self._jobs))

    def holds(self, task_id: str) -> bool:
        return task_id in self._jobs

    def tenant_of(self, task_id: str) -> str | None:
        """The tenant of a task held here (bus seam: the Redis bus checked the canceller)."""
        job = self._jobs.get(task_id)
        return job.tenant if job is not None else None

    async def submit(self, task: SubmitTask) -> SubmitAccepted:
        """Admit and announce a task, or raise :class:`Refusal`."""
        group = Identity(tenant=task.tenant, client_ip=task.client or "unknown").limits_key
        voice = self._admit(task, group)
        ahead = self.queued
        job = _Job(task.task_id, task.text, voice, group, tenant=task.tenant)
        job.deadline = job.accepted_at + self.settings.first_chunk_slack_s
        self._jobs[task.task_id] = job  # reserved before the first await: no over-admission
        self._per_group[group] += 1
        try:
            await self.sink.open(
                TaskOpen(
                    task_id=task.task_id,
                    text=task.text,
                    voice=voice.id,
                    engine=voice.engine.name,
                    sample_rate=voice.engine.sample_rate,
                    tenant=task.tenant,
                )
            )
        except IngestLost as exc:
            del self._jobs[task.task_id]
            self._ungroup(job)
            raise self._refuse(503, "not_ready", str(exc)) from exc
        runner = asyncio.create_task(self._run(job), name=f"tts-{task.task_id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        log.info("task_accepted", task_id=task.task_id, voice=voice.id, chars=len(task.text))
        return SubmitAccepted(task_id=task.task_id, voice=voice.id, queued=ahead)

    def has(self, task_id: str, tenant: str | None) -> bool:
        """Whether ``task_id`` is queued or running here for ``tenant`` (another tenant's
        task is as unknown to it as a task that never was)."""
        job = self._jobs.get(task_id)
        return job is not None and job.tenant == tenant

    async def cancel(self, task_id: str, tenant: str | None = None) -> bool:
        """Stop a task of ``tenant``; True when it was running here. Returns once its TaskEnd
        is sent."""
        job = self._jobs.get(task_id)
        if job is None or job.tenant != tenant or not self._stop(job, StopReason.CANCELLED):
            return False
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                await job.done.wait()
        except TimeoutError:
            log.warning("cancel_slow", task_id=task_id)
        return True

    def snapshot(self) -> TaskSnapshot:
        return TaskSnapshot(active=list(self._jobs), ended=list(self._recently_ended))

    async def events(self) -> AsyncGenerator[TaskSnapshot | TaskEnd, None]:
        """A snapshot, then every task end as it happens, a snapshot again when quiet for
        ``TASK_SNAPSHOT_INTERVAL_S``; ends at shutdown or when the follower falls behind."""
        queue: asyncio.Queue[TaskEnd | None] = asyncio.Queue(FOLLOWER_BACKLOG)
        self._followers.add(queue)
        try:
            yield self.snapshot()
            while True:
                try:
                    async with asyncio.timeout(TASK_SNAPSHOT_INTERVAL_S):
                        event = await queue.get()
                except TimeoutError:
                    yield self.snapshot()
                    continue
                if event is None:
                    return
                yield event
        finally:
            self._followers.discard(queue)

    def _publish(self, end: TaskEnd | None) -> None:
        for queue in list(self._followers):
            try:
                queue.put_nowait(end)
            except asyncio.QueueFull:
                self._followers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)  # ends that follower's stream

    def ingest_lost(self, task_ids: list[str]) -> None:
        """The connection these tasks were announced on dropped: stop them, no TaskEnd."""
        for task_id in task_ids:
            if (job := self._jobs.get(task_id)) is not None:
                self._stop(job, StopReason.INGEST_LOST)

    async def shutdown(self) -> None:
        """Stop every task (each ends with failed/worker_stopped) and await them."""
        for job in list(self._jobs.values()):
            self._stop(job, StopReason.SHUTDOWN)
        if self._runners:
            _, pending = await asyncio.wait(self._runners, timeout=SHUTDOWN_WAIT_S)
            for runner in pending:
                runner.cancel()
            if pending:
                await asyncio.wait(pending)
        self._publish(None)

    # -- admission ---------------------------------------------------------------------

    def _admit(self, task: SubmitTask, group: str) -> Voice:
        voice_id = task.voice or self.voices.default
        voice = self.voices.get(voice_id)
        if voice is None:
            known = ", ".join(sorted(self.voices.voices))
            raise self._refuse(404, "unknown_voice", f"No voice {voice_id!r}; known: {known}.")
        if not task.text.strip():
            raise self._refuse(400, "bad_request", "The text is empty.")
        if task.task_id in self._jobs:
            raise self._refuse(400, "bad_request", f"Task {task.task_id} is already running.")
        if voice.state is VoiceState.LOADING:
            raise self._refuse(503, "not_ready", f"Voice {voice_id!r} is still loading.")
        if voice.state is VoiceState.FAILED:
            raise self._refuse(503, "not_ready", f"Voice {voice_id!r} failed: {voice.error}")
        if not self._ingest_connected():
            raise self._refuse(503, "not_ready", "The output handler is not connected.")
        if len(self._jobs) >= self.capacity:
            raise self._refuse(
                503,
                "busy",
                f"All {self.settings.max_concurrent} engine slots are busy and "
                f"{self.settings.max_queued} tasks are waiting.",
            )
        if self._per_group[group] >= self.group_capacity:
            raise self._refuse(
                503,
                "busy",
                f"This client already has {self.group_capacity} tasks on this worker, its "
                f"share of the {self.capacity}; the rest is kept for the others.",
            )
        return voice

    def _refuse(self, status: int, code: str, message: str) -> Refusal:
        self.metrics.refusals.labels(code).inc()
        return Refusal(status, code, message)

    # -- running -----------------------------------------------------------------------

    def _stop(self, job: _Job, reason: StopReason) -> bool:
        if job.stop_reason is not None:
            return True  # already stopping; the first reason wins
        job.stop_reason = reason
        if job.synth is not None:
            job.synth.cancel()
        return True

    async def _run(self, job: _Job) -> None:
        structlog.contextvars.bind_contextvars(task_id=job.task_id)
        synth = job.synth = asyncio.create_task(self._synthesise(job))
        if job.stop_reason is not None:
            synth.cancel()  # stopped between admission and now
        try:
            await asyncio.wait({synth})
        except asyncio.CancelledError:  # only when shutdown gave up waiting
            synth.cancel()
            await asyncio.wait({synth})
            if not synth.cancelled():
                synth.exception()  # retrieved, so asyncio does not report it as lost
            self._finish(job, None)
            raise
        end = self._outcome(job, synth)
        try:
            if end is not None:
                await self.sink.end(end)
        except IngestLost as exc:
            log.warning("task_end_not_sent", error=str(exc))
        finally:
            self._finish(job, end)

    def _outcome(self, job: _Job, synth: asyncio.Task[None]) -> TaskEnd | None:
        task_id = job.task_id
        if synth.cancelled():
            match job.stop_reason:
                case StopReason.INGEST_LOST:
                    log.warning("task_lost_with_ingest", chunks=job.chunks)
                    return None  # the output handler has failed it for its listeners
                case StopReason.SHUTDOWN:
                    return TaskEnd(
                        task_id=task_id,
                        status="failed",
                        code="worker_stopped",
                        message="The TTS worker is shutting down.",
                    )
                case _:
                    return TaskEnd(task_id=task_id, status="cancelled")
        error = synth.exception()
        if error is None:
            return TaskEnd(task_id=task_id, status="completed")
        if isinstance(error, IngestLost):
            job.stop_reason = StopReason.INGEST_LOST
            log.warning("task_lost_with_ingest", chunks=job.chunks, error=str(error))
            return None
        if isinstance(error, EngineError):
            log.error("task_failed", code=error.code, error=str(error))
            return TaskEnd(task_id=task_id, status="failed", code=error.code, message=str(error))
        log.error("task_crashed", exc_info=error)
        return TaskEnd(
            task_id=task_id,
            status="failed",
            code="internal_error",
            message=f"The TTS worker hit an unexpected error: {error}",
        )

    def _ungroup(self, job: _Job) -> None:
        self._per_group[job.group] -= 1
        if self._per_group[job.group] <= 0:
            del self._per_group[job.group]

    def _finish(self, job: _Job, end: TaskEnd | None) -> None:
        if self._jobs.pop(job.task_id, None) is not None:
            self._ungroup(job)
        job.done.set()
        self._recently_ended.append(job.task_id)
        # A task lost with the ingest link ended too: its listeners got worker_lost.
        self._publish(end or TaskEnd(task_id=job.task_id, status="failed", code="worker_lost"))
        for hook in self.finished_hooks:
            hook(job.task_id, end)
        outcome: str = end.status if end is not None else "lost"
        if job.stop_reason is StopReason.SHUTDOWN:
            outcome = "stopped"
        self.metrics.tasks.labels(outcome, job.voice.id).inc()
        if end is not None and end.status == "completed" and job.audio_s > 0:
            wall = time.monotonic() - job.accepted_at
            self.metrics.rtf.labels(job.voice.id).observe((job.engine_s or wall) / job.audio_s)
        log.info(
            "task_ended",
            status=outcome,
            chunks=job.chunks,
            audio_s=round(job.audio_s, 3),
            engine_s=round(job.engine_s, 3),
        )

    async def _synthesise(self, job: _Job) -> None:
        engine = job.voice.engine
        cutter = TrackCutter(engine.sample_rate, self.settings.frame_ms)

        started_pieces = 0  # the first may take the scheduler's spare slot

        async def run_piece(work: Callable[[], Any], chars: int) -> Any:
            nonlocal started_pieces
            elapsed = 0.0
            first = started_pieces == 0
            started_pieces += 1

            def timed() -> Any:
                nonlocal elapsed
                job.started = True
                started = time.perf_counter()
                try:
                    return work()
                finally:
                    elapsed = time.perf_counter() - started

            # Least slack first: the piece must be done by the deadline, so it must start
            # its estimated duration before it.
            estimate = chars * self._seconds_per_char.get(job.voice.id, 0.0)
            result = await self.scheduler.run(
                job.deadline - estimate, timed, group=job.group, cost=estimate, first=first
            )
            job.engine_s += elapsed
            self._learn_cost(job.voice.id, elapsed, chars)
            return result

        # aclosing: a stopped task closes the engine's stream (and a remote request) at once.
        async with contextlib.aclosing(engine.stream(job.text, run_piece)) as pieces:
            async for piece in pieces:
                job.started = True
                for frame, visemes in cutter.push(piece):
                    await self._send(job, frame, visemes)
        if (last := cutter.flush()) is not None:
            await self._send(job, *last)

    def _learn_cost(self, voice_id: str, elapsed: float, chars: int) -> None:
        if chars <= 0:
            return
        sample = elapsed / chars
        previous = self._seconds_per_char.get(voice_id, sample)
        self._seconds_per_char[voice_id] = previous + (sample - previous) * COST_SMOOTHING

    async def _send(self, job: _Job, frame: bytes, visemes: Track | None) -> None:
        await self.sink.append(job.task_id, job.chunks, level(frame), frame, visemes)
        now = time.monotonic()
        if job.first_frame_at is None:
            job.first_frame_at = now
            self.metrics.first_chunk.labels(job.voice.id).observe(now - job.accepted_at)
        job.chunks += 1
        seconds = len(frame) / 2 / job.voice.engine.sample_rate
        job.audio_s += seconds
        # Until this moment the listener is covered; the next piece is due then.
        job.deadline = job.first_frame_at + job.audio_s
        self.metrics.frames.inc()
        self.metrics.audio_seconds.inc(seconds)
