"""The worker's FrameSink: one reused WebSocket to the output handler's ``/internal/ingest``.

A background task (owned by the app's lifespan) keeps the connection up, reconnecting with
backoff while the output handler is down; meanwhile the worker reports ``not_ready``. Tasks
of any number interleave on the one socket: TaskOpen JSON, one binary message per frame
(:func:`~aivtuber_common.internal.encode_frame`), TaskEnd JSON; each task's messages are
sent by one coroutine, so its order holds.

The sink remembers which connection each open task was announced on. When that connection
drops, the output handler fails those tasks for their listeners, so they must not continue
on the next connection: ``on_lost`` is told their ids (the worker stops them) and further
frames for them raise :class:`~aivtuber_common.transport.SinkLost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.config import Settings
from aivtuber_common.health import WorkerHealth
from aivtuber_common.internal import INGEST_PATH, TaskEnd, TaskOpen, encode_frame
from aivtuber_common.transport import SinkLost
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

if TYPE_CHECKING:  # the manager imports the sink's error; only its type is needed here
    from .tasks import TaskManager
    from .voices import Voices

__all__ = ["DirectWorkerBus", "IngestSink"]

log = structlog.get_logger("aivtuber_tts.sink")

OPEN_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0


class IngestSink:
    def __init__(
        self,
        output_handler_url: str,
        token: str | None = None,
        on_lost: Callable[[list[str]], None] | None = None,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.url = output_handler_url.rstrip("/") + INGEST_PATH
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.on_lost = on_lost
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self.connections = 0  # how many times it connected, for logs and tests
        self._ws: ClientConnection | None = None
        self._open: dict[str, ClientConnection] = {}  # task id -> the socket it was opened on

    @property
    def is_connected(self) -> bool:
        return self._ws is not None

    async def run(self) -> None:
        """Keep the connection up until cancelled."""
        delay = BACKOFF_MIN_S
        failures = 0
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers=self.headers,
                    compression=None,  # PCM does not compress; deflate would only cost CPU
                    open_timeout=OPEN_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=None,
                ) as ws:
                    self._connected(ws)
                    failures, delay = 0, BACKOFF_MIN_S
                    await ws.wait_closed()
                    code = ws.close_code
                    (log.error if code == AppCloseCode.UNAUTHORIZED else log.warning)(
                        "ingest_closed", url=self.url, code=code, reason=ws.close_reason
                    )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                failures += 1
                # Say it once loudly, then quietly while it stays down.
                (log.warning if failures == 1 else log.debug)(
                    "ingest_unreachable", url=self.url, error=str(exc) or type(exc).__name__
                )
            finally:
                self._disconnected()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def open(self, task: TaskOpen) -> None:
        ws = self._require()
        self._open[task.task_id] = ws
        try:
            await self._send(ws, task.model_dump_json())
        except SinkLost:
            self._open.pop(task.task_id, None)
            raise

    async def append(
        self,
        task_id: str,
        chunk_id: int,
        level: float,
        pcm: bytes,
        visemes: Track | None = None,
        words: WordTrack | None = None,
    ) -> None:
        ws = self._socket_of(task_id)
        await self._send(ws, encode_frame(task_id, chunk_id, level, pcm, visemes, words))

    async def end(self, end: TaskEnd) -> None:
        ws = self._socket_of(end.task_id)
        del self._open[end.task_id]
        await self._send(ws, end.model_dump_json())

    def _require(self) -> ClientConnection:
        if self._ws is None:
            raise SinkLost(f"the output handler at {self.url} is not connected")
        return self._ws

    def _socket_of(self, task_id: str) -> ClientConnection:
        ws = self._open.get(task_id)
        if ws is None or ws is not self._ws:
            raise SinkLost("the output handler connection this task was announced on is gone")
        return ws

    async def _send(self, ws: ClientConnection, message: str | bytes) -> None:
        try:
            await ws.send(message)
        except ConnectionClosed as exc:
            raise SinkLost(f"the connection to the output handler closed: {exc}") from exc

    def _connected(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connections += 1
        self.connected.set()
        log.info("ingest_connected", url=self.url)

    def _disconnected(self) -> None:
        if self._ws is None:
            return
        lost = [task_id for task_id, ws in self._open.items() if ws is self._ws]
        self._ws = None
        self.connected.clear()
        for task_id in lost:
            del self._open[task_id]
        if lost:
            log.warning("ingest_lost_tasks", tasks=lost)
        if self.on_lost is not None and lost:
            self.on_lost(lost)


class DirectWorkerBus:
    """What the worker's lifespan owns on the direct bus: the ingest connection. Tasks come
    over HTTP (the app's routes), so there is nothing to consume here."""

    def __init__(self, settings: Settings) -> None:
        self.sink = IngestSink(settings.tts_worker.output_handler_url, settings.internal_token)

    def start(
        self, manager: TaskManager, voices: Voices, describe: Callable[[], WorkerHealth]
    ) -> set[asyncio.Task[None]]:
        """The background tasks; the caller cancels and awaits them, then :meth:`aclose`."""
        self.sink.on_lost = manager.sink_lost  # its tasks stop when their connection drops
        return {asyncio.create_task(self.sink.run(), name="tts-ingest")}

    async def aclose(self) -> None:
        """Nothing to close: :meth:`IngestSink.run` closes its connection when cancelled."""
