"""The output handler on the Redis bus: every task read from its own stream.

:class:`RedisFrameSource` implements :class:`aivtuber_common.transport.FrameSource` (plus
the ``snapshot`` the subscriber endpoint asks for the totals of ``audio_complete``). Any
replica serves any task: a subscriber reads ``P:task:<id>`` with blocking ``XREAD``s from
its own position, so it may come before the worker (it waits ``task_wait_s`` for the
TaskOpen), join late, or resume with ``from_chunk`` after a replica died, and gets the very
bytes the worker wrote. Nothing a restart could lose is kept here: the only memory is a
small cache of finished tasks' totals, which the stream can always give again.

A task's end reaches the subscriber as the TaskEnd event; so do the failures seen here:
``timeout`` (no frame for ``task_timeout_s`` once speaking began), ``frame_lost`` (frames
trimmed by ``max_frames_per_task`` before this subscriber read them), ``task_expired`` (the
stream expired under a waiting reader) and ``tts_unavailable`` (Redis unreachable: the
subscriber is closed at once and may resume with ``from_chunk`` once it is back).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

from aivtuber_common.bus import OPEN_ID, BusUnavailable, RedisLink
from aivtuber_common.bus.streams import DATA, K_END, K_FRAME, K_OPEN, KIND, SAMPLES
from aivtuber_common.internal import TaskEnd, TaskOpen, decode_frame
from aivtuber_common.transport import FrameEvent

from .store import TaskNotFound, TaskSnapshot, TaskState

__all__ = ["RedisFrameSource"]

FRAMES_PER_READ = 256
MAX_REMEMBERED_TOTALS = 4096
SAMPLE_WIDTH = 2


class RedisFrameSource:
    def __init__(self, link: RedisLink, *, task_wait_s: float, task_timeout_s: float) -> None:
        self.link = link
        self.task_wait_s = task_wait_s
        self.task_timeout_s = task_timeout_s
        # Blocking reads in slices under the socket timeout, which applies to them too.
        self.block_ms = max(100, int(link.settings.timeout_s * 500))
        self.subscribers: Counter[str] = Counter()  # this replica's, per task
        self._totals: OrderedDict[str, tuple[TaskEnd, int, int]] = OrderedDict()

    @property
    def subscriber_count(self) -> int:
        return sum(self.subscribers.values())

    async def read(self, task_id: str, from_chunk: int = 0) -> AsyncGenerator[FrameEvent, None]:
        """TaskOpen, frames ``(chunk_id, level, pcm)`` from ``from_chunk``, then TaskEnd.

        Raises TaskNotFound when no worker opens the task within ``task_wait_s``.
        """
        self.subscribers[task_id] += 1
        try:
            async for event in self._read(task_id, max(0, from_chunk)):
                yield event
        except BusUnavailable as exc:
            yield TaskEnd(task_id=task_id, status="failed", code=exc.code, message=str(exc))
        finally:
            self.subscribers[task_id] -= 1
            if self.subscribers[task_id] <= 0:
                del self.subscribers[task_id]

    def snapshot(self, task_id: str) -> TaskSnapshot | None:
        """A finished task's totals, as the last read of it found them (None if unknown)."""
        found = self._totals.get(task_id)
        if found is None:
            return None
        end, chunks, samples = found
        return TaskSnapshot(
            task_id=task_id,
            state=TaskState(end.status),
            subscribers=self.subscribers[task_id],
            chunks=chunks,
            samples=samples,
            sample_rate=None,
            code=end.code,
            message=end.message,
        )

    async def status(self, task_id: str) -> tuple[str, int, str | None]:
        """(state, chunks so far, failure code) from the stream; "not_found" when absent."""
        key = self.link.keys.task(task_id)
        with self.link.guard():
            top: Any = await self.link.client.xrevrange(key, count=1)
            if not top:
                return "not_found", 0, None
            kind = top[0][1].get(KIND)
            if kind != K_END:
                chunks = _chunks_through(top[0][1]) if kind == K_FRAME else 0
                return (TaskState.STREAMING if kind == K_FRAME else TaskState.WAITING), chunks, None
            end = TaskEnd.model_validate_json(top[0][1][DATA])
            last: Any = await self.link.client.xrevrange(key, max="(" + top[0][0].decode(), count=1)
        chunks = _chunks_through(last[0][1]) if last and last[0][1].get(KIND) == K_FRAME else 0
        return end.status, chunks, end.code

    async def audio(self, task_id: str) -> tuple[TaskOpen | None, TaskEnd | None, bytes] | None:
        """The whole stream: its TaskOpen, TaskEnd and PCM (None when there is no stream)."""
        key = self.link.keys.task(task_id)
        opened: TaskOpen | None = None
        end: TaskEnd | None = None
        pcm: list[bytes] = []
        start = "-"
        with self.link.guard():
            while True:
                entries: Any = await self.link.client.xrange(key, min=start, count=FRAMES_PER_READ)
                if not entries and start == "-":
                    return None
                for entry_id, fields in entries:
                    kind = fields.get(KIND)
                    if kind == K_OPEN:
                        opened = TaskOpen.model_validate_json(fields[DATA])
                    elif kind == K_FRAME:
                        pcm.append(bytes(decode_frame(fields[DATA])[3]))
                    elif kind == K_END:
                        end = TaskEnd.model_validate_json(fields[DATA])
                    start = "(" + entry_id.decode()
                if len(entries) < FRAMES_PER_READ:
                    return opened, end, b"".join(pcm)

    # --- internals ------------------------------------------------------------------------

    async def _read(self, task_id: str, position: int) -> AsyncGenerator[FrameEvent, None]:
        key = self.link.keys.task(task_id)
        opened: TaskOpen | None = None
        last_id: str | bytes = "0-0"
        deadline = time.monotonic() + self.task_wait_s
        while opened is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TaskNotFound(f"No task {task_id} was started within {self.task_wait_s:g} s.")
            block = min(self.block_ms, max(1, int(remaining * 1000)))
            for entry_id, fields in await self._next(key, last_id, block, count=2):
                last_id = entry_id
                kind = fields.get(KIND)
                if kind == K_OPEN:
                    opened = TaskOpen.model_validate_json(fields[DATA])
                    break
                if kind == K_END:  # cancelled before any worker took it
                    yield TaskEnd.model_validate_json(fields[DATA])
                    return
        yield opened
        # Chunk c is entry c+1-0: XREAD after c-0 starts at chunk c (the open is 0-2).
        last_id = f"{position}-0" if position > 0 else OPEN_ID
        assert opened is not None
        expected, chunks, samples = position, 0, 0
        quiet_since = time.monotonic()
        while True:
            entries = await self._next(key, last_id, self.block_ms, count=FRAMES_PER_READ)
            if not entries:
                if chunks and time.monotonic() - quiet_since >= self.task_timeout_s:
                    yield _failed(
                        task_id,
                        "timeout",
                        f"The TTS worker sent nothing for {self.task_timeout_s:g} s.",
                    )
                    return
                with self.link.guard():
                    if not await self.link.client.exists(key):
                        yield _failed(task_id, "task_expired", "The task expired.")
                        return
                continue
            quiet_since = time.monotonic()
            for entry_id, fields in entries:
                last_id = entry_id
                kind = fields.get(KIND)
                if kind == K_FRAME:
                    _, chunk_id, level, pcm = decode_frame(fields[DATA])
                    if chunk_id != expected:
                        yield _failed(
                            task_id,
                            "frame_lost",
                            f"Chunk {expected} is no longer kept (the next is {chunk_id}).",
                        )
                        return
                    yield (chunk_id, round(level, 4), bytes(pcm))
                    expected = chunk_id + 1
                    chunks, samples = expected, int(fields.get(SAMPLES, 0))
                elif kind == K_END:
                    end = TaskEnd.model_validate_json(fields[DATA])
                    if not chunks:  # resumed past the last frame: read the totals from it
                        chunks, samples = await self._totals_before(key, entry_id)
                    self._remember(task_id, end, chunks, samples)
                    yield end
                    return

    async def _next(
        self, key: str, last_id: str | bytes, block_ms: int, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        with self.link.guard():
            reply: Any = await self.link.client.xread({key: last_id}, count=count, block=block_ms)
        self.link.mark_up()
        return reply[0][1] if reply else []

    async def _totals_before(self, key: str, end_id: bytes) -> tuple[int, int]:
        with self.link.guard():
            last: Any = await self.link.client.xrevrange(key, max="(" + end_id.decode(), count=1)
        if last and last[0][1].get(KIND) == K_FRAME:
            return _chunks_through(last[0][1]), int(last[0][1].get(SAMPLES, 0))
        return 0, 0

    def _remember(self, task_id: str, end: TaskEnd, chunks: int, samples: int) -> None:
        self._totals[task_id] = (end, chunks, samples)
        self._totals.move_to_end(task_id)
        while len(self._totals) > MAX_REMEMBERED_TOTALS:
            self._totals.popitem(last=False)


def _chunks_through(fields: dict[bytes, bytes]) -> int:
    return decode_frame(fields[DATA])[1] + 1


def _failed(task_id: str, code: str, message: str) -> TaskEnd:
    return TaskEnd(task_id=task_id, status="failed", code=code, message=message)
