"""The worker on the Redis bus: a FrameSink writing each task's stream, and the consumer
that takes tasks from the group as admission has room.

:class:`RedisFrameSink` writes TaskOpen, frames and TaskEnd at the fixed entry IDs of
:mod:`aivtuber_common.bus.streams`; a write Redis refuses because someone else ended the
task (a cancel, a worker that claimed it) stops the task like a lost ingest connection.

:class:`TaskConsumer` (one per worker, owned by the lifespan) runs four loops:

- take: while :attr:`TaskManager.room` is above 0 and the voices are ready, ``XREADGROUP``
  one task at a time (blocked readers are served in turn, so a burst is spread over the
  workers) and hand it to :meth:`TaskManager.submit`, the same entry point as the HTTP
  API, so admission and the scheduler's fairness apply unchanged;
- claim: ``XAUTOCLAIM`` tasks whose holder has not confirmed them for ``claim_idle_s``
  (it died). One without audio yet is run here; one that already streamed part ends
  ``failed``/``worker_lost`` (never two voices for one task);
- heartbeat: the key with a TTL, and ``XCLAIM ... JUSTID`` of the tasks held here so that
  no live worker's tasks look idle;
- cancel: the ``P:cancel`` channel; the holder stops the task at once.

A streaming task held here has one more reader: its text stream ``P:text:<id>`` (TaskText
entries written by the input handler), read from the start and handed to
:meth:`TaskManager.text` until the task ends.

A task is acknowledged (``XACK``) when it has ended, so a worker that dies holding queued
or running tasks leaves them pending for the others; one that shuts down hands back the
tasks it has not spoken a sample of (left pending, unended), and ends the others
``worker_stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import ValidationError
from redis.exceptions import ResponseError

from aivtuber_common.bus import END_ID, OPEN_ID, BusUnavailable, RedisLink, frame_entry_id
from aivtuber_common.bus.liveness import Heartbeat, instance_name
from aivtuber_common.bus.streams import (
    DATA,
    GROUP,
    K_END,
    K_FRAME,
    K_OPEN,
    KIND,
    SAMPLES,
    is_id_collision,
)
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.health import WorkerHealth
from aivtuber_common.internal import SubmitTask, TaskEnd, TaskOpen, TaskText, encode_frame
from aivtuber_common.refusal import Refusal
from aivtuber_common.transport import SinkLost
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

from .tasks import TaskManager
from .voices import Voices

__all__ = ["RedisFrameSink", "RedisWorkerBus", "TaskConsumer", "ensure_group"]

log = structlog.get_logger("aivtuber_tts.redis_bus")

SAMPLE_WIDTH = 2


class RedisFrameSink:
    """Implements :class:`aivtuber_common.transport.FrameSink` on the task streams."""

    def __init__(self, link: RedisLink, task_ttl_s: float, max_frames: int) -> None:
        self.link = link
        self.ttl_ms = int(task_ttl_s * 1000)
        self.max_frames = max_frames
        self._samples: dict[str, int] = {}  # samples written so far, per open task
        self.handed_back: set[str] = set()  # stopped before any audio: not to be acknowledged

    @property
    def is_connected(self) -> bool:
        return self.link.up

    async def open(self, task: TaskOpen) -> None:
        fields = {KIND: K_OPEN, DATA: task.model_dump_json()}
        try:
            await self._add(task.task_id, OPEN_ID, fields)
        except ResponseError as exc:
            if not is_id_collision(exc):
                raise
            # Opened before: a task claimed from a dead worker before it made audio.
        self._samples[task.task_id] = 0

    async def append(
        self,
        task_id: str,
        chunk_id: int,
        level: float,
        pcm: bytes,
        visemes: Track | None = None,
        words: WordTrack | None = None,
    ) -> None:
        samples = self._samples.get(task_id, 0) + len(pcm) // SAMPLE_WIDTH
        frame = encode_frame(task_id, chunk_id, level, pcm, visemes, words)
        fields = {KIND: K_FRAME, DATA: frame, SAMPLES: samples}
        try:
            await self._add(task_id, frame_entry_id(chunk_id), fields, trim=True)
        except ResponseError as exc:
            self._samples.pop(task_id, None)
            if not is_id_collision(exc):
                raise
            raise SinkLost("the task was ended elsewhere (cancelled or claimed)") from exc
        except SinkLost:
            self._samples.pop(task_id, None)  # the task stops here: no end will be written
            raise
        self._samples[task_id] = samples

    async def end(self, end: TaskEnd) -> None:
        samples = self._samples.pop(end.task_id, None)
        if end.code == ErrorCode.WORKER_STOPPED and not samples:
            # A worker shutting down hands back what it has not spoken a sample of: left
            # pending and unended, another worker claims it and speaks it whole.
            self.handed_back.add(end.task_id)
            return
        await write_end(self.link, end, self.ttl_ms)

    async def _add(
        self, task_id: str, entry_id: str, fields: dict[Any, Any], trim: bool = False
    ) -> None:
        key = self.link.keys.task(task_id)
        try:
            with self.link.guard():
                async with self.link.client.pipeline(transaction=False) as pipe:
                    pipe.xadd(key, fields, id=entry_id, maxlen=self.max_frames if trim else None)
                    pipe.pexpire(key, self.ttl_ms)
                    await pipe.execute()
        except BusUnavailable as exc:
            raise SinkLost(str(exc)) from exc


async def write_end(link: RedisLink, end: TaskEnd, ttl_ms: int) -> bool:
    """Append the task's end unless someone ended it first; False then. Raises SinkLost."""
    key = link.keys.task(end.task_id)
    try:
        with link.guard():
            async with link.client.pipeline(transaction=False) as pipe:
                # nomkstream: a task whose stream expired (or a Redis restarted empty) needs
                # no end, and an end alone would only be a stray key.
                pipe.xadd(
                    key, {KIND: K_END, DATA: end.model_dump_json()}, id=END_ID, nomkstream=True
                )
                pipe.pexpire(key, ttl_ms)
                added, _ = await pipe.execute(raise_on_error=False)
    except BusUnavailable as exc:
        raise SinkLost(str(exc)) from exc
    if isinstance(added, ResponseError):
        if is_id_collision(added):
            log.debug("task_already_ended", task_id=end.task_id)
            return False
        raise added
    return True


async def ensure_group(link: RedisLink) -> None:
    """Create the tasks stream and the workers' group unless they exist."""
    with link.guard():
        try:
            await link.client.xgroup_create(link.keys.tasks, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class TaskConsumer:
    def __init__(
        self,
        sink: RedisFrameSink,
        manager: TaskManager,
        voices: Voices,
        name: str,
        describe: Callable[[], WorkerHealth],
    ) -> None:
        self.sink = sink
        self.link = sink.link  # one client per worker, and the streams' one TTL
        self.ttl_ms = sink.ttl_ms
        self.manager = manager
        self.voices = voices
        self.name = name
        self.heartbeat = Heartbeat(self.link, "worker", name, describe)
        self.held: dict[str, bytes] = {}  # task id -> its entry in the tasks stream
        self.taken = 0
        self.claimed = 0
        self._room = asyncio.Event()
        self._done: asyncio.Queue[tuple[str, bytes, TaskEnd | None]] = asyncio.Queue()
        self._cancels: set[asyncio.Task[bool]] = set()
        self._texts: dict[str, asyncio.Task[None]] = {}  # streaming task id -> its reader
        manager.finished_hooks.append(self._finished)

    async def run(self) -> None:
        """All the loops, until cancelled (then the cancels in flight are awaited)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._forever(self._take_loop), name="bus-take")
                group.create_task(self._forever(self._claim_loop), name="bus-claim")
                group.create_task(self._forever(self._acknowledge_loop), name="bus-ack")
                group.create_task(self._forever(self._cancel_loop), name="bus-cancel")
                group.create_task(self.heartbeat.run(self._refresh_held), name="bus-heartbeat")
        finally:
            waiting = self._cancels | set(self._texts.values())
            for task in waiting:
                task.cancel()
            if waiting:
                await asyncio.wait(waiting)
            await self.heartbeat.withdraw()

    async def _forever(self, loop: Callable[[], Awaitable[None]]) -> None:
        # Redis going away ends a loop's pass; it starts again once Redis is back. A Redis
        # that restarted empty has lost the group: it is made again. These loops have no
        # caller to report to, so anything else is logged with its traceback and retried.
        while True:
            try:
                await loop()
            except BusUnavailable:
                await self.link.wait_up()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("bus_loop_failed", loop=loop.__name__)
                    await asyncio.sleep(self.link.settings.heartbeat_interval_s)
                with contextlib.suppress(BusUnavailable):
                    await ensure_group(self.link)
            except Exception:
                log.exception("bus_loop_failed", loop=loop.__name__)
                await asyncio.sleep(self.link.settings.heartbeat_interval_s)

    # --- taking tasks ---------------------------------------------------------------------

    async def _ready(self) -> None:
        """Wait until this worker can take a task: Redis up, voices loaded, room."""
        while True:
            await self.link.wait_up()
            if not self.voices.loading and self.manager.room > 0:
                return
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                # Voices load without telling; a short wait re-checks them.
                async with asyncio.timeout(None if not self.voices.loading else 0.1):
                    await self._room.wait()

    async def _take_loop(self) -> None:
        await ensure_group(self.link)
        block_ms = max(100, int(self.link.settings.timeout_s * 500))
        while True:
            await self._ready()
            with self.link.guard():
                reply: Any = await self.link.client.xreadgroup(
                    GROUP, self.name, {self.link.keys.tasks: ">"}, count=1, block=block_ms
                )
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await self._take(entry_id, fields, claimed=False)

    async def _claim_loop(self) -> None:
        settings = self.link.settings
        idle_ms = int(settings.claim_idle_s * 1000)
        cursor: bytes | str = "0-0"
        while True:
            await asyncio.sleep(min(settings.claim_idle_s / 2, settings.heartbeat_interval_s))
            await self._ready()
            with self.link.guard():
                claimed: Any = await self.link.client.xautoclaim(
                    self.link.keys.tasks,
                    GROUP,
                    self.name,
                    idle_ms,
                    start_id=cursor,
                    count=self.manager.room,
                )
            cursor, entries = claimed[0], claimed[1]
            for entry_id, fields in entries:
                if fields is None:
                    continue  # trimmed from the stream meanwhile
                self.claimed += 1
                await self._take(entry_id, fields, claimed=True)
            await self._forget_idle_consumers()

    async def _forget_idle_consumers(self) -> None:
        # Every worker start is a new consumer; the ones with nothing pending that have not
        # read for a while are dead (a live one that is deleted is recreated by its next read,
        # and having nothing pending, loses nothing).
        idle_ms = int(self.link.settings.heartbeat_ttl_s * 1000)
        with self.link.guard():
            consumers: Any = await self.link.client.xinfo_consumers(self.link.keys.tasks, GROUP)
            for consumer in consumers:
                name = consumer.get("name", b"")
                name = name.decode() if isinstance(name, bytes) else str(name)
                if (
                    name != self.name
                    and not consumer.get("pending")
                    and consumer.get("idle", 0) > idle_ms
                ):
                    await self.link.client.xgroup_delconsumer(self.link.keys.tasks, GROUP, name)

    async def _take(self, entry_id: bytes, fields: dict[bytes, bytes], claimed: bool) -> None:
        try:
            task = SubmitTask.model_validate_json(fields.get(b"task", b""))
        except ValidationError:
            log.error("bus_task_unreadable", entry=entry_id.decode())
            await self._ack(entry_id)
            return
        if task.task_id in self.held:
            self.held[task.task_id] = entry_id  # ours already (a late confirmation)
            return
        state = await self._stream_state(task.task_id)
        if state != "fresh":
            if state == "streamed":
                # Part of its audio is out: a second voice must not continue it.
                log.warning("bus_task_lost_by_worker", task_id=task.task_id)
                end = TaskEnd(
                    task_id=task.task_id,
                    status="failed",
                    code=ErrorCode.WORKER_LOST,
                    message="The TTS worker speaking this task stopped before it finished.",
                )
                with contextlib.suppress(SinkLost):
                    await write_end(self.link, end, self.ttl_ms)
            await self._ack(entry_id)
            return
        if claimed:
            log.info("bus_task_claimed", task_id=task.task_id)
        self.held[task.task_id] = entry_id
        try:
            await self.manager.submit(task)
        except Refusal as refusal:
            del self.held[task.task_id]
            if refusal.status == 503:
                # Not now (the bus dropped while opening): left pending, claimed again later.
                log.info("bus_task_deferred", task_id=task.task_id, code=refusal.code)
                return
            end = TaskEnd(
                task_id=task.task_id, status="failed", code=refusal.code, message=refusal.message
            )
            with contextlib.suppress(SinkLost):
                await write_end(self.link, end, self.ttl_ms)
            await self._ack(entry_id)
            return
        self.taken += 1
        if task.stream and self.manager.holds(task.task_id):
            reader = asyncio.create_task(self._read_text(task.task_id), name="bus-text")
            self._texts[task.task_id] = reader
            reader.add_done_callback(lambda _: self._texts.pop(task.task_id, None))

    async def _read_text(self, task_id: str) -> None:
        """Hand a streaming task's text to the manager as it arrives, until the task ends
        (this reader is cancelled then, see :meth:`_finished`)."""
        key = self.link.keys.text(task_id)
        block_ms = max(100, int(self.link.settings.timeout_s * 500))
        last: bytes | str = "0-0"
        while True:
            try:
                with self.link.guard():
                    reply: Any = await self.link.client.xread({key: last}, count=64, block=block_ms)
            except BusUnavailable:
                await self.link.wait_up()
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        message = TaskText.model_validate_json(fields.get(DATA, b""))
                    except ValidationError:
                        log.error("bus_text_unreadable", task_id=task_id)
                        continue
                    if message.task_id != task_id:
                        continue
                    try:
                        self.manager.text(message)
                    except Refusal:
                        return  # ended here already: the rest of its text is not wanted

    async def _stream_state(self, task_id: str) -> str:
        """fresh (nothing spoken yet), streamed (has frames), ended, or gone (expired)."""
        with self.link.guard():
            top: Any = await self.link.client.xrevrange(self.link.keys.task(task_id), count=1)
        if not top:
            return "gone"
        kind = top[0][1].get(KIND)
        if kind == K_END:
            return "ended"
        return "streamed" if kind == K_FRAME else "fresh"

    # --- ending tasks ---------------------------------------------------------------------

    def _finished(self, task_id: str, end: TaskEnd | None) -> None:
        if (reader := self._texts.pop(task_id, None)) is not None:
            reader.cancel()
        entry_id = self.held.pop(task_id, None)
        self._room.set()
        if task_id in self.sink.handed_back:
            self.sink.handed_back.discard(task_id)
            log.info("bus_task_handed_back", task_id=task_id)
            return  # left pending: another worker claims it after claim_idle_s
        if entry_id is not None:
            self._done.put_nowait((task_id, entry_id, end))

    async def _acknowledge_loop(self) -> None:
        while True:
            task_id, entry_id, end = await self._done.get()
            try:
                if end is None:
                    # Lost mid-stream (Redis went away, or it was ended elsewhere): make sure
                    # its listeners get an end; if one is there already this changes nothing.
                    lost = TaskEnd(
                        task_id=task_id,
                        status="failed",
                        code=ErrorCode.TTS_UNAVAILABLE,
                        message="The task was interrupted: the message bus was unreachable.",
                    )
                    with contextlib.suppress(SinkLost):
                        await write_end(self.link, lost, self.ttl_ms)
                await self._ack(entry_id)
            except BusUnavailable:
                self._done.put_nowait((task_id, entry_id, end))  # again once Redis is back
                raise

    async def _ack(self, entry_id: bytes) -> None:
        with self.link.guard():
            await self.link.client.xack(self.link.keys.tasks, GROUP, entry_id)

    async def _refresh_held(self) -> None:
        # Reset the idle time of what this worker holds: it is alive, nobody may claim them.
        if self.held:
            with self.link.guard():
                await self.link.client.xclaim(
                    self.link.keys.tasks,
                    GROUP,
                    self.name,
                    0,
                    list(self.held.values()),
                    justid=True,
                )

    # --- cancels --------------------------------------------------------------------------

    async def _cancel_loop(self) -> None:
        pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
        try:
            with self.link.guard():
                await pubsub.subscribe(self.link.keys.cancel)
                while True:
                    # In slices shorter than the socket timeout, which applies to this read.
                    message = await pubsub.get_message(timeout=self.link.settings.timeout_s / 2)
                    if message is None:
                        continue
                    task_id = message["data"].decode(errors="replace")
                    if self.manager.holds(task_id):
                        # The input handler checked the canceller's tenant before it
                        # ended the task and published its id here.
                        tenant = self.manager.tenant_of(task_id)
                        stop = asyncio.create_task(self.manager.cancel(task_id, tenant))
                        self._cancels.add(stop)
                        stop.add_done_callback(self._cancels.discard)
                        log.info("bus_task_cancelled", task_id=task_id)
        finally:
            with contextlib.suppress(BusUnavailable), self.link.guard():
                await pubsub.aclose()


class RedisWorkerBus:
    """What the worker's lifespan owns on the Redis bus: the link, the sink, the consumer."""

    def __init__(self, settings: Settings, bus: RedisBusSettings) -> None:
        self.settings = settings
        self.link = RedisLink(bus)
        self.name = instance_name()
        self.sink = RedisFrameSink(
            self.link, settings.output_handler.task_ttl_s, bus.max_frames_per_task
        )
        self.consumer: TaskConsumer | None = None

    def start(
        self, manager: TaskManager, voices: Voices, describe: Callable[[], WorkerHealth]
    ) -> set[asyncio.Task[None]]:
        """The background tasks; the caller cancels and awaits them, then :meth:`aclose`."""
        self.consumer = TaskConsumer(
            self.sink,
            manager,
            voices,
            self.name,
            lambda: describe().model_copy(update={"name": self.name}),
        )
        return {
            asyncio.create_task(self.link.run(), name="bus-link"),
            asyncio.create_task(self.consumer.run(), name="bus-consumer"),
        }

    async def aclose(self) -> None:
        await self.link.aclose()
