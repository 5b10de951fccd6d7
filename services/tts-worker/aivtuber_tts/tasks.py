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
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from aivtuber_common.audio import level
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import TtsWorkerSettings
from aivtuber_common.identity import Identity
from aivtuber_common.internal import (
    TASK_SNAPSHOT_INTERVAL_S,
    SubmitAccepted,
    SubmitTask,
    TaskEnd,
    TaskOpen,
    TaskSnapshot,
    TaskText,
)
from aivtuber_common.refusal import Refusal
from aivtuber_common.transport import FrameSink, SinkLost
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

from .errors import EngineError
from .metrics import TtsMetrics
from .scheduler import PieceScheduler
from .streaming import TextFeed
from .visemes import TrackCutter
from .voices import Voice, Voices, VoiceState

__all__ = ["StopReason", "TaskManager"]

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
# Streaming tasks that ended, remembered (with their tenant) so that more text for one is
# answered task_ended rather than task_not_found.
ENDED_STREAMS = 1024
# A stream that hears nothing for this long ends by itself. The input handler ends idle
# streams long before (input_handler.stream_idle_timeout_s); this catches the streams of an
# input handler that died, which would otherwise hold their place here for ever.
STREAM_ORPHAN_S = 600.0


_NOBODY = object()  # no tenant recorded (None is the anonymous tenant)


class StopReason(enum.StrEnum):
    CANCELLED = "cancelled"  # DELETE /v1/tasks/{id}
    SINK_LOST = "sink_lost"  # its frames can no longer reach the output side (SinkLost)
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
    feed: TextFeed | None = None  # a streaming task's text as it arrives
    end_reason: Literal["idle"] | None = None  # why the stream's input ended, if not by end


class TaskManager:
    def __init__(
        self,
        settings: TtsWorkerSettings,
        voices: Voices,
        sink: FrameSink,
        scheduler: PieceScheduler,
        metrics: TtsMetrics,
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
        self._ended_streams: OrderedDict[str, str | None] = OrderedDict()  # id -> tenant
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
        if task.stream:
            wait_s = self.settings.stream_max_wait_ms / 1000
            job.feed = TextFeed(task.text, wait_s, voice.engine.language, job.accepted_at)
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
                    stream=task.stream,
                )
            )
        except SinkLost as exc:
            del self._jobs[task.task_id]
            self._ungroup(job)
            raise self._refuse(503, ErrorCode.NOT_READY, str(exc)) from exc
        runner = asyncio.create_task(self._run(job), name=f"tts-{task.task_id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        log.info("task_accepted", task_id=task.task_id, voice=voice.id, chars=len(task.text))
        return SubmitAccepted(task_id=task.task_id, voice=voice.id, queued=ahead)

    def text(self, message: TaskText) -> None:
        """More text, a flush or the end for a streaming task of ``message.tenant``; raises
        :class:`Refusal` (404 task_not_found: unknown or another tenant's; 409 task_ended)."""
        job = self._jobs.get(message.task_id)
        if job is None or job.tenant != message.tenant or job.feed is None:
            ended = self._ended_streams.get(message.task_id, _NOBODY)
            if job is None and ended == message.tenant:
                raise Refusal(409, ErrorCode.TASK_ENDED, f"Task {message.task_id} has ended.")
            raise Refusal(
                404, ErrorCode.TASK_NOT_FOUND, f"No streaming task {message.task_id} here."
            )
        if job.feed.closed or job.stop_reason is not None:
            raise Refusal(409, ErrorCode.TASK_ENDED, f"Task {message.task_id} has ended.")
        if message.end and message.reason is not None:
            job.end_reason = message.reason
        job.feed.add(message.text, flush=message.flush, end=message.end, now=time.monotonic())

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

    def sink_lost(self, task_ids: list[str]) -> None:
        """The connection these tasks were announced on dropped: stop them, no TaskEnd."""
        for task_id in task_ids:
            if (job := self._jobs.get(task_id)) is not None:
                self._stop(job, StopReason.SINK_LOST)

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
            raise self._refuse(
                404, ErrorCode.UNKNOWN_VOICE, f"No voice {voice_id!r}; known: {known}."
            )
        if not task.text.strip() and not task.stream:  # a stream's first piece may be empty
            raise self._refuse(400, ErrorCode.BAD_REQUEST, "The text is empty.")
        if task.task_id in self._jobs:
            raise self._refuse(
                400, ErrorCode.BAD_REQUEST, f"Task {task.task_id} is already running."
            )
        if voice.state is VoiceState.LOADING:
            raise self._refuse(503, ErrorCode.NOT_READY, f"Voice {voice_id!r} is still loading.")
        if voice.state is VoiceState.FAILED:
            raise self._refuse(
                503, ErrorCode.NOT_READY, f"Voice {voice_id!r} failed: {voice.error}"
            )
        if not self.sink.is_connected:
            raise self._refuse(503, ErrorCode.NOT_READY, "The output handler is not connected.")
        if len(self._jobs) >= self.capacity:
            raise self._refuse(
                503,
                ErrorCode.BUSY,
                f"All {self.settings.max_concurrent} engine slots are busy and "
                f"{self.settings.max_queued} tasks are waiting.",
            )
        if self._per_group[group] >= self.group_capacity:
            raise self._refuse(
                503,
                ErrorCode.BUSY,
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
        except SinkLost as exc:
            log.warning("task_end_not_sent", error=str(exc))
        finally:
            self._finish(job, end)

    def _outcome(self, job: _Job, synth: asyncio.Task[None]) -> TaskEnd | None:
        task_id = job.task_id
        if synth.cancelled():
            match job.stop_reason:
                case StopReason.SINK_LOST:
                    log.warning("task_lost_with_sink", chunks=job.chunks)
                    return None  # the output handler has failed it for its listeners
                case StopReason.SHUTDOWN:
                    return TaskEnd(
                        task_id=task_id,
                        status="failed",
                        code=ErrorCode.WORKER_STOPPED,
                        message="The TTS worker is shutting down.",
                    )
                case _:
                    return TaskEnd(task_id=task_id, status="cancelled")
        error = synth.exception()
        if error is None:
            return TaskEnd(task_id=task_id, status="completed", reason=job.end_reason)
        if isinstance(error, SinkLost):
            job.stop_reason = StopReason.SINK_LOST
            log.warning("task_lost_with_sink", chunks=job.chunks, error=str(error))
            return None
        if isinstance(error, EngineError):
            log.error("task_failed", code=error.code, error=str(error))
            return TaskEnd(task_id=task_id, status="failed", code=error.code, message=str(error))
        log.error("task_crashed", exc_info=error)
        return TaskEnd(
            task_id=task_id,
            status="failed",
            code=ErrorCode.INTERNAL_ERROR,
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
        if job.feed is not None:
            job.feed.closed = True
            self._ended_streams[job.task_id] = job.tenant
            while len(self._ended_streams) > ENDED_STREAMS:
                self._ended_streams.popitem(last=False)
        # A task lost with the ingest link ended too: its listeners got worker_lost.
        self._publish(
            end or TaskEnd(task_id=job.task_id, status="failed", code=ErrorCode.WORKER_LOST)
        )
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

        if job.feed is None:
            await self._speak(job, job.text, cutter, run_piece)
        else:
            await self._speak_stream(job, job.feed, cutter, run_piece)
        if (last := cutter.flush()) is not None:
            await self._send(job, *last)

    async def _speak(
        self, job: _Job, text: str, cutter: TrackCutter, run_piece: Callable[..., Any]
    ) -> None:
        # aclosing: a stopped task closes the engine's stream (and a remote request) at once.
        async with contextlib.aclosing(job.voice.engine.stream(text, run_piece)) as pieces:
            async for piece in pieces:
                job.started = True
                for frame, visemes, words in cutter.push(piece):
                    await self._send(job, frame, visemes, words)

    async def _speak_stream(
        self, job: _Job, feed: TextFeed, cutter: TrackCutter, run_piece: Callable[..., Any]
    ) -> None:
        """One continuous stream of frames for all of a streaming task's text: each part
        is spoken as soon as :class:`TextFeed` says it is ready, with the one cutter, so
        the chunk ids run on across clauses and no frame is cut short at a join."""
        while True:
            now = time.monotonic()
            listener_ends_at = job.deadline if job.first_frame_at is not None else None
            # Sizes the pieces and times an early cut (streaming.py): 0 until measured.
            per_char = self._seconds_per_char.get(job.voice.id, 0.0)
            part = feed.take(now, listener_ends_at, per_char)
            if part is not None:
                await self._speak(job, part, cutter, run_piece)
                continue
            if feed.done:
                return
            orphaned_at = feed.heard_at + STREAM_ORPHAN_S
            if now >= orphaned_at:
                log.warning("stream_orphaned", silent_s=round(now - feed.heard_at))
                job.end_reason = "idle"
                feed.add("", flush=False, end=True, now=now)
                continue
            # Nothing to say until more text comes: the frame in the cutter is all the
            # listener will get for now, so it goes out short rather than wait.
            if (last := cutter.flush()) is not None:
                await self._send(job, *last)
            wake_at = feed.wake_at(now, listener_ends_at, per_char) or orphaned_at
            wake_at = min(wake_at, orphaned_at)
            timeout = max(0.0, wake_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await feed.changed.wait()

    def _learn_cost(self, voice_id: str, elapsed: float, chars: int) -> None:
        if chars <= 0:
            return
        sample = elapsed / chars
        previous = self._seconds_per_char.get(voice_id, sample)
        self._seconds_per_char[voice_id] = previous + (sample - previous) * COST_SMOOTHING

    async def _send(
        self, job: _Job, frame: bytes, visemes: Track | None, words: WordTrack | None
    ) -> None:
        await self.sink.append(job.task_id, job.chunks, level(frame), frame, visemes, words)
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
