"""``/internal/ingest``: where TTS workers push their tasks' frames (internal only).

One WebSocket per worker carries many interleaved tasks (protocol in
:mod:`aivtuber_common.internal`): TaskOpen JSON, binary frames (header + PCM), TaskEnd JSON.
The endpoint only moves messages into the :class:`~aivtuber_output.store.TaskStore`; it
never waits for a subscriber. When the connection drops, every unfinished task it carried
fails with ``worker_lost``; when it was closed after the worker had been silent for the
keepalive timeout (it stopped answering pings: hung, see :mod:`.keepalive`), with
``timeout``.

A message that does not fit (bad JSON, a frame for an unknown task) is logged and counted,
and the connection stays up: one bad message must not fail every task of the worker.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools

import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.internal import IngestMessageAdapter, TaskEnd, TaskOpen, decode_frame

from .metrics import OutputMetrics
from .store import IngestError, TaskStore

__all__ = ["IngestEndpoint", "authorized"]

log = structlog.get_logger("aivtuber_output.ingest")


def authorized(headers: object, token: str | None) -> bool:
    """Bearer ``token`` check (always true when no token is configured)."""
    if not token:
        return True
    given = headers.get("authorization", "")  # type: ignore[attr-defined]
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


class IngestEndpoint:
    """The ASGI WebSocket endpoint; one instance per app."""

    def __init__(
        self,
        store: TaskStore,
        metrics: OutputMetrics,
        token: str | None,
        stall_s: float | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.token = token
        # Silent this long before the connection dropped: the worker stopped answering.
        self.stall_s = stall_s
        self._ids = itertools.count(1)

    async def handle(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if not authorized(websocket.headers, self.token):
            log.warning("ingest_unauthorized", client=_client(websocket))
            await websocket.close(AppCloseCode.UNAUTHORIZED, "internal token required")
            return
        source = f"ingest-{next(self._ids)}"
        structlog.contextvars.bind_contextvars(ingest=source)
        log.info("ingest_connected", client=_client(websocket))
        self.metrics.ingest_connections.inc()
        self.store.writers += 1
        silent_for = 0.0
        try:
            silent_for = await self._pump(websocket, source)
        finally:
            self.metrics.ingest_connections.dec()
            self.store.writers -= 1
            if self.stall_s is not None and silent_for >= self.stall_s:
                lost = self.store.source_lost(
                    source,
                    ErrorCode.TIMEOUT,
                    f"The TTS worker stopped answering (silent for {silent_for:.0f} s, "
                    "no reply to keepalive pings).",
                )
                log.warning("ingest_stalled", silent_s=round(silent_for, 1), tasks_lost=len(lost))
            else:
                lost = self.store.source_lost(source)
            log.info("ingest_disconnected", tasks_lost=len(lost))
            structlog.contextvars.unbind_contextvars("ingest")

    async def _pump(self, websocket: WebSocket, source: str) -> float:
        """Until the connection drops; how long the worker had been silent by then."""
        # Tasks opened on this connection are tagged with ``source`` so they fail if it drops.
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            try:
                message = await websocket.receive()
            except WebSocketDisconnect:
                return loop.time() - last
            if message["type"] == "websocket.disconnect":
                return loop.time() - last
            last = loop.time()
            try:
                if (data := message.get("bytes")) is not None:
                    self._frame(data)
                elif (text := message.get("text")) is not None:
                    self._control(text, source)
            except IngestError as exc:
                self.metrics.ingest_errors.inc()
                log.error("ingest_message_rejected", error=str(exc))

    def _frame(self, data: bytes) -> None:
        try:
            task_id, chunk_id, level, pcm, visemes, words = decode_frame(data)
        except ValueError as exc:
            raise IngestError(str(exc)) from exc
        # The level travels as a float32: round it once so every subscriber's JSON reads
        # 0.1234, not 0.12340000271797180.
        gap = self.store.append(task_id, chunk_id, round(level, 4), bytes(pcm), visemes, words)
        (self.metrics.first_frame if chunk_id == 0 else self.metrics.frame_gap).observe(gap)
        self.metrics.frames.inc()
        self.metrics.bytes.inc(len(pcm))
        self.metrics.buffered_bytes.set(self.store.buffered_bytes)

    def _control(self, text: str, source: str) -> None:
        try:
            message = IngestMessageAdapter.validate_json(text)
        except ValidationError as exc:
            raise IngestError(f"not an ingest message: {exc.errors()[0]['msg']}") from exc
        match message:
            case TaskOpen():
                self.store.open(message, source)
                self.metrics.tasks.inc()
                log.info("task_opened", task_id=message.task_id, voice=message.voice)
            case TaskEnd():
                self.store.end(message)
                self.metrics.buffered_bytes.set(self.store.buffered_bytes)
                log.info(
                    "task_ended", task_id=message.task_id, status=message.status, code=message.code
                )


def _client(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "?"
