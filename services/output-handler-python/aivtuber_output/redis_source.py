"""The output handler on the Redis bus: every task read from its own stream.

:class:`RedisFrameSource` implements :class:`aivtuber_common.transport.FrameSource` (plus
the ``snapshot`` the subscriber endpoint asks for the totals of ``audio_complete``). Any
replica serves any task: it reads ``P:task:<id>`` with blocking ``XREAD``s, one reader per
task however many listen to it here (a feed, dropped with its last subscriber), and each
subscriber takes the feed from its own position. So a subscriber may come before the
worker (it waits ``task_wait_s`` for the TaskOpen), join late, or resume with
``from_chunk`` after a replica died, and gets the very bytes the worker wrote. Nothing a
restart could lose is kept here: the feeds and a small cache of finished tasks' totals are
copies of what the stream can always give again.

A task's end reaches the subscriber as the TaskEnd event; so do the failures seen here:
``timeout`` (no frame for ``task_timeout_s`` once speaking began), ``frame_lost`` (frames
trimmed by ``max_frames_per_task`` before this replica read them), ``task_expired`` (the
stream expired under a waiting reader) and ``tts_unavailable`` (Redis unreachable: the
subscriber is closed at once and may resume with ``from_chunk`` once it is back).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import structlog

from aivtuber_common.bus import BusUnavailable, RedisLink
from aivtuber_common.bus.streams import DATA, K_END, K_FRAME, K_OPEN, K_QUEUED, KIND, SAMPLES
from aivtuber_common.codes import ErrorCode
from aivtuber_common.health import BusHealth, OutputHealth
from aivtuber_common.internal import SubmitTask, TaskEnd, TaskOpen, decode_frame
from aivtuber_common.transport import FrameEvent, TaskAudio, TaskStatus
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

from .store import TaskNotFound, TaskSnapshot, TaskState

__all__ = ["RedisFrameSource"]

log = structlog.get_logger("aivtuber_output.redis_source")

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
        self._feeds: dict[str, _Feed] = {}  # tasks being listened to here
        self._pumps: set[asyncio.Task[None]] = set()  # their readers, until they end

    @property
    def subscriber_count(self) -> int:
        return sum(self.subscribers.values())

    async def read(
        self, task_id: str, from_chunk: int = 0, tenant: str | None = None
    ) -> AsyncGenerator[FrameEvent, None]:
        """TaskOpen, frames ``(chunk_id, level, pcm, visemes, words)`` from ``from_chunk``, TaskEnd.

        Raises TaskNotFound when no worker opens the task within ``task_wait_s``, and
        likewise (after the same wait) when the task is another tenant's than ``tenant``
        (None: anonymous), so a subscriber cannot learn that it exists.
        """
        self.subscribers[task_id] += 1
        try:
            async for event in self._read(task_id, max(0, from_chunk), tenant):
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

    async def status(self, task_id: str) -> TaskStatus:
        """From the stream ("not_found" when absent); ``connected``: on this replica."""
        state, chunks, code = await self._status(task_id)
        connected = self.subscribers[task_id] > 0
        return TaskStatus(
            task_id=task_id, status=state, connected=connected, chunks=chunks, code=code
        )

    def health(self) -> OutputHealth:
        link = self.link
        return OutputHealth(
            status="ok" if link.up else "unavailable",
            subscribers=self.subscriber_count,
            bus=BusHealth(kind="redis", url=link.url, connected=link.up, error=link.error),
        )

    async def _status(self, task_id: str) -> tuple[str, int, str | None]:
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

    async def audio(self, task_id: str) -> TaskAudio | None:
        """The whole stream: its TaskOpen, TaskEnd and PCM (None when there is no stream
        or no worker announced the task yet)."""
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
                        pcm.append(bytes(decode_frame(fields[DATA]).pcm))
                    elif kind == K_END:
                        end = TaskEnd.model_validate_json(fields[DATA])
                    start = "(" + entry_id.decode()
                if len(entries) < FRAMES_PER_READ:
                    return None if opened is None else TaskAudio(opened, end, b"".join(pcm))

    async def aclose(self) -> None:
        """Stop every feed's reader (the lifespan calls this at shutdown)."""
        pumps = set(self._pumps)
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.wait(pumps)
        self._feeds.clear()

    # --- internals ------------------------------------------------------------------------

    async def _read(
        self, task_id: str, position: int, tenant: str | None
    ) -> AsyncGenerator[FrameEvent, None]:
        feed = self._feeds.get(task_id)
        if feed is None:
            feed = self._feeds[task_id] = _Feed(task_id)
            feed.pump = asyncio.create_task(self._pump(feed), name="bus-feed")
            self._pumps.add(feed.pump)
            feed.pump.add_done_callback(self._pumps.discard)
        feed.readers += 1
        try:
            deadline = time.monotonic() + self.task_wait_s
            not_found = TaskNotFound(
                f"No task {task_id} was started within {self.task_wait_s:g} s."
            )
            while feed.opened is None and feed.end is None:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await feed.changed.wait()
                except TimeoutError:
                    raise not_found from None
            if not feed.owned_by(tenant):
                # Another tenant's task: the same wait and the same answer as an unknown one.
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                raise not_found
            if feed.opened is None:  # cancelled before any worker took it, or Redis lost
                assert feed.end is not None
                yield feed.end
                return
            yield feed.opened
            while True:
                if position < feed.base:
                    yield _failed(
                        task_id,
                        ErrorCode.FRAME_LOST,
                        f"Chunk {position} is no longer kept (the first kept is {feed.base}).",
                    )
                    return
                while position - feed.base < len(feed.frames):
                    level, pcm, visemes, words = feed.frames[position - feed.base]
                    yield (position, level, pcm, visemes, words)
                    position += 1
                if feed.end is not None:
                    self._remember(task_id, feed.end, feed.base + len(feed.frames), feed.samples)
                    yield feed.end
                    return
                await feed.changed.wait()
        finally:
            feed.readers -= 1
            if feed.readers == 0 and self._feeds.get(task_id) is feed:
                del self._feeds[task_id]
                if feed.pump is not None:
                    feed.pump.cancel()  # done at its next await; aclose() awaits the rest

    async def _pump(self, feed: _Feed) -> None:
        """Read the task's stream into ``feed`` for its subscribers on this replica: one
        blocking read per task, however many listen to it."""
        key = self.link.keys.task(feed.task_id)
        last_id: str | bytes = "0-0"
        quiet_since = time.monotonic()
        try:
            while feed.end is None:
                entries = await self._next(key, last_id, self.block_ms, count=FRAMES_PER_READ)
                if not entries:
                    streaming = feed.opened is not None and feed.opened.stream
                    quiet_s = time.monotonic() - quiet_since
                    if feed.frames and not streaming and quiet_s >= self.task_timeout_s:
                        message = f"The TTS worker sent nothing for {self.task_timeout_s:g} s."
                        feed.finish(_failed(feed.task_id, ErrorCode.TIMEOUT, message))
                    elif feed.opened is not None:
                        with self.link.guard():
                            if not await self.link.client.exists(key):
                                feed.finish(
                                    _failed(feed.task_id, ErrorCode.TASK_EXPIRED, "It expired.")
                                )
                    continue
                quiet_since = time.monotonic()
                for entry_id, fields in entries:
                    last_id = entry_id
                    feed.take(fields)
                feed.notify()
        except BusUnavailable as exc:
            feed.finish(_failed(feed.task_id, exc.code, str(exc)))
        except Exception:
            # No caller: say what broke, and end the stream for its listeners (never a hang).
            log.exception("bus_feed_failed", task_id=feed.task_id)
            feed.finish(
                _failed(feed.task_id, ErrorCode.INTERNAL_ERROR, "The stream could not be read.")
            )

    async def _next(
        self, key: str, last_id: str | bytes, block_ms: int, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        with self.link.guard():
            reply: Any = await self.link.client.xread({key: last_id}, count=count, block=block_ms)
        self.link.mark_up()
        return reply[0][1] if reply else []

    def _remember(self, task_id: str, end: TaskEnd, chunks: int, samples: int) -> None:
        self._totals[task_id] = (end, chunks, samples)
        self._totals.move_to_end(task_id)
        while len(self._totals) > MAX_REMEMBERED_TOTALS:
            self._totals.popitem(last=False)


@dataclass(eq=False)
class _Feed:
    """One task's stream as this replica has read it so far, shared by its subscribers;
    dropped with its last subscriber (a cache: the stream in Redis is the truth)."""

    task_id: str
    opened: TaskOpen | None = None
    queued_by: str | None = None  # the tenant of the SubmitTask (until the TaskOpen says)
    queued: bool = False
    base: int = 0  # the first chunk kept (above 0 once MAXLEN trimmed the stream's start)
    frames: list[tuple[float, bytes, Track | None, WordTrack | None]] = field(default_factory=list)
    samples: int = 0  # of the whole task up to the last frame, as the worker counted
    end: TaskEnd | None = None
    readers: int = 0
    pump: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, fields: dict[bytes, bytes]) -> None:
        kind = fields.get(KIND)
        if kind == K_QUEUED:
            self.queued, self.queued_by = True, SubmitTask.model_validate_json(fields[DATA]).tenant
        elif kind == K_OPEN:
            self.opened = TaskOpen.model_validate_json(fields[DATA])
        elif kind == K_FRAME:
            _, chunk_id, level, pcm, visemes, words = decode_frame(fields[DATA])
            if not self.frames:
                self.base = chunk_id
            elif chunk_id != self.base + len(self.frames):
                self.finish(
                    _failed(
                        self.task_id, ErrorCode.FRAME_LOST, f"Chunk {chunk_id} is out of order."
                    )
                )
                return
            # The level travels as a float32: rounded once, as on the direct bus.
            self.frames.append((round(level, 4), bytes(pcm), visemes, words))
            self.samples = int(fields.get(SAMPLES, 0))
        elif kind == K_END:
            self.end = TaskEnd.model_validate_json(fields[DATA])

    def owned_by(self, tenant: str | None) -> bool:
        """Whether ``tenant`` may read this task: its TaskOpen's tenant, else its
        SubmitTask's. A task with neither (entries trimmed, or failed here before any
        was read) is nobody's to tell apart: readable, as it holds nothing to leak."""
        if self.opened is not None:
            return self.opened.tenant == tenant
        if self.queued:
            return self.queued_by == tenant
        return True

    def finish(self, end: TaskEnd) -> None:
        if self.end is None:
            self.end = end
        self.notify()

    def notify(self) -> None:
        # Wake every reader waiting now; later readers wait on the fresh event.
        self.changed.set()
        self.changed = asyncio.Event()


def _chunks_through(fields: dict[bytes, bytes]) -> int:
    return decode_frame(fields[DATA])[1] + 1


def _failed(task_id: str, code: str, message: str) -> TaskEnd:
    return TaskEnd(task_id=task_id, status="failed", code=code, message=message)
