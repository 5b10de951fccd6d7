"""``/ws/output/{task_id}[?from_chunk=N]``: one subscriber's stream of a task's audio.

Order on the wire (the frontend protocol, kept exactly)::

    audio_start                       JSON
    audio_chunk  + one binary message per frame, chunk ids N, N+1, ...
    audio_complete (cancelled: bool)  JSON, then close 1000
  or error (status "error", code)     JSON, then close 1011 (4400 bad id, 4404 unknown task)

Two pumps per connection: the sender reads the store at this subscriber's pace and writes
each frame the moment it is there (no batching); the receiver only watches for the client
leaving, so a listener who hangs up between frames is counted out at once rather than at
the next frame.

A subscriber that stops reading and answering pings (a frozen gateway, a peer gone without
a FIN) is dropped by uvicorn's keepalive (:mod:`.keepalive`), which closes the connection
without telling the application: a send then raises a bare RuntimeError, or, with the
socket's buffers full, waits for room forever. So a send that does not complete within
``send_timeout_s`` (the keepalive's interval plus timeout: the peer has been given up on by
then) ends the subscription, and that RuntimeError counts as the client leaving.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.closecodes import AppCloseCode, CloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.identity import read_identity
from aivtuber_common.internal import TaskEnd, TaskOpen
from aivtuber_common.protocol import (
    AudioChunk,
    AudioComplete,
    AudioStart,
    OutputError,
    dump,
    is_canonical_uuid,
)
from aivtuber_common.transport import FrameSource, TaskNotFound
from aivtuber_common.visemes import Track
from aivtuber_common.words import WordTrack

from .metrics import OutputMetrics

__all__ = ["OutputEndpoint"]

log = structlog.get_logger("aivtuber_output.stream")

SAMPLE_WIDTH = 2


class OutputEndpoint:
    def __init__(
        self,
        store: FrameSource,
        metrics: OutputMetrics,
        internal_token: str | None = None,
        send_timeout_s: float = 40.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.internal_token = internal_token
        self.send_timeout_s = send_timeout_s

    async def handle(self, websocket: WebSocket) -> None:
        task_id: str = websocket.path_params["task_id"]
        await websocket.accept()
        if not is_canonical_uuid(task_id):
            await _fail(
                websocket,
                OutputError(
                    task_id=task_id,
                    code=ErrorCode.INVALID_TASK_ID,
                    error="The task id must be a lower-case canonical UUID such as "
                    "'3f1c2a9e-8d4b-4c1e-9a7f-0b6d5e4c3a21'.",
                ),
                AppCloseCode.BAD_REQUEST,
            )
            self.metrics.subscriptions.labels(ErrorCode.INVALID_TASK_ID).inc()
            return
        from_chunk = _from_chunk(websocket.query_params.get("from_chunk"))
        if from_chunk is None:
            await _fail(
                websocket,
                OutputError(
                    task_id=task_id,
                    code=ErrorCode.INVALID_FROM_CHUNK,
                    error="from_chunk must be a whole number of 0 or more.",
                ),
                AppCloseCode.BAD_REQUEST,
            )
            self.metrics.subscriptions.labels(ErrorCode.INVALID_FROM_CHUNK).inc()
            return
        # Whose subscription this is, as the gateway says (believed only from it).
        peer = websocket.client.host if websocket.client else None
        tenant = read_identity(websocket.headers.items(), peer, self.internal_token).tenant
        structlog.contextvars.bind_contextvars(task_id=task_id)
        self.metrics.subscribers.inc()
        sender = asyncio.create_task(self._send(websocket, task_id, from_chunk, tenant))
        watcher = asyncio.create_task(_client_gone(websocket))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in (sender, watcher):
                pump.cancel()
            await asyncio.wait({sender, watcher})
            self.metrics.subscribers.dec()
            structlog.contextvars.unbind_contextvars("task_id")
        if not watcher.cancelled() and (error := watcher.exception()) is not None:
            log.error("subscriber_watch_failed", error=repr(error))
        outcome = "client_left" if sender.cancelled() else sender.result()  # re-raises a bug
        self.metrics.subscriptions.labels(outcome).inc()
        log.debug("subscriber_done", task_id=task_id, outcome=outcome, from_chunk=from_chunk)

    async def _send(
        self, websocket: WebSocket, task_id: str, from_chunk: int, tenant: str | None
    ) -> str:
        """Stream the task; returns how it ended (a metrics label)."""
        opened: TaskOpen | None = None
        next_chunk, samples = from_chunk, 0  # what this subscriber saw, if the task is evicted
        try:
            reader = self.store.read(task_id, from_chunk, tenant)
            async with contextlib.aclosing(reader) as events:
                async for event in events:
                    match event:
                        case TaskOpen():
                            opened = event
                            await self._deliver(websocket, _audio_start(event))
                        case (chunk_id, level, pcm, visemes, words):
                            chunk = _audio_chunk(task_id, chunk_id, level, pcm, visemes, words)
                            await self._deliver(websocket, chunk)
                            await self._deliver(websocket, pcm)
                            next_chunk, samples = chunk_id + 1, samples + len(pcm) // SAMPLE_WIDTH
                            self.metrics.frames_sent.inc()
                        case TaskEnd(status="failed"):
                            await _fail(
                                websocket,
                                OutputError(
                                    task_id=task_id,
                                    code=event.code or ErrorCode.TTS_ERROR,
                                    error=event.message or "Speech synthesis failed.",
                                ),
                                CloseCode.INTERNAL_ERROR,
                            )
                            return event.code or "failed"
                        case TaskEnd():
                            seen = (next_chunk, samples)
                            complete = _audio_complete(self.store, event, opened, seen)
                            await self._deliver(websocket, complete)
                            await websocket.close(CloseCode.NORMAL_CLOSURE)
                            return event.status
        except TaskNotFound as exc:
            await _fail(
                websocket,
                OutputError(task_id=task_id, code=exc.code, error=str(exc)),
                AppCloseCode.NOT_FOUND,
            )
            return exc.code
        except WebSocketDisconnect:
            return "client_left"
        except TimeoutError:
            log.info("subscriber_unresponsive", send_timeout_s=self.send_timeout_s)
            return "client_left"
        return "ended"  # not reached: a read always ends with TaskEnd

    async def _deliver(self, websocket: WebSocket, message: str | bytes) -> None:
        """One message to the subscriber, within ``send_timeout_s`` (TimeoutError)."""
        async with asyncio.timeout(self.send_timeout_s):
            try:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
            except RuntimeError as exc:
                # uvicorn closed the connection itself (keepalive timeout) and has not heard
                # of the lost connection yet: the subscriber is gone, not a bug here.
                raise WebSocketDisconnect(CloseCode.ABNORMAL_CLOSURE) from exc


async def _client_gone(websocket: WebSocket) -> None:
    """Return when the subscriber disconnects; anything it sends is not part of the protocol."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        log.debug("subscriber_message_ignored")


async def _fail(websocket: WebSocket, error: OutputError, code: int) -> None:
    try:
        await websocket.send_text(dump(error))
        await websocket.close(code, error.code)
    except WebSocketDisconnect:
        log.debug("subscriber_gone_before_error", code=error.code)


MAX_FROM_CHUNK_DIGITS = 18


def _from_chunk(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return 0
    # ASCII digits only ("²".isdigit() too), and few enough for int() and any real chunk id
    # (past 4300 digits int() raises: that was a 1011 instead of a 4400).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_FROM_CHUNK_DIGITS:
        return None
    return int(raw)


def _audio_start(event: TaskOpen) -> str:
    return dump(
        AudioStart(
            task_id=event.task_id,
            content=event.text,
            sample_rate=event.sample_rate,
            voice=event.voice,
            engine=event.engine,
        )
    )


def _audio_chunk(
    task_id: str,
    chunk_id: int,
    level: float,
    pcm: bytes,
    visemes: Track | None,
    words: WordTrack | None,
) -> str:
    return dump(
        AudioChunk(
            task_id=task_id,
            chunk_id=chunk_id,
            samples=len(pcm) // SAMPLE_WIDTH,
            level=level,
            visemes=visemes,
            words=words,
        )
    )


def _audio_complete(
    store: FrameSource,
    end: TaskEnd,
    opened: TaskOpen | None,
    seen: tuple[int, int],
) -> str:
    snapshot = store.snapshot(end.task_id)
    # The whole task's totals, even for a subscriber that resumed from a later chunk; what
    # this subscriber saw if the task was evicted in the meantime.
    chunks, samples = (snapshot.chunks, snapshot.samples) if snapshot else seen
    rate = opened.sample_rate if opened else 0
    duration_ms = round(samples * 1000 / rate, 1) if rate else 0.0
    return dump(
        AudioComplete(
            task_id=end.task_id,
            chunks=chunks,
            duration_ms=duration_ms,
            cancelled=end.status == "cancelled",
            reason=end.reason,
        )
    )
