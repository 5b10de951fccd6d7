"""The input handler's app: ``/ws/input`` plus ``/health`` and ``/metrics``.

The WebSocket layer is thin: it moves messages into :class:`~aivtuber_input.session.
InputSession` and carries out the events it returns. Messages of one connection are handled
one after the other, so replies keep the order of the requests (a cancel is answered after
the speak before it was queued).

Who a connection is comes from the gateway's identity headers (``aivtuber_common.identity``);
each speak passes the tenant's limits (:mod:`aivtuber_input.limits`) before any worker is
asked, and its task counts as active until the worker reports its end
(:mod:`aivtuber_input.activity`). A streaming task's pieces count against the same
characters-per-minute limit as they arrive; a stream stays active until it ends. Each
connection has one watcher that ends its streams when they go idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import TypedDict

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.health import InputHealth
from aivtuber_common.identity import Identity, read_identity
from aivtuber_common.internal import SubmitTask, TaskText
from aivtuber_common.internal_auth import internal_middleware
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import ErrorMessage, VoiceList, dump
from aivtuber_common.transport import TaskSubmitter, TransportError

from .activity import ActiveTasks
from .bus import open_bus
from .limits import SpeakLimiter
from .metrics import InputMetrics
from .session import (
    CancelTask,
    Close,
    Event,
    InputSession,
    ListVoicesRequest,
    Reply,
    SendText,
    Submit,
)
from .speech import SpeechApi
from .voicevox import VoicevoxApi

__all__ = ["InputEndpoint", "create_app"]

log = structlog.get_logger("aivtuber_input")


class InputState(TypedDict):
    """The lifespan state: what every request of the app sees (``request.state``)."""

    submitter: TaskSubmitter


def create_app(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """``transport`` replaces the network under the workers' HTTP client (tests)."""
    metrics = InputMetrics()
    started = time.monotonic()
    endpoint = InputEndpoint(settings, metrics)
    speech = SpeechApi(
        settings, metrics, endpoint.limiter, endpoint.active
    )  # POST /v1/audio/speech and its discovery routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[InputState]:
        # On Redis the limiter counts in Redis, once for every replica (shared_limits.py).
        async with open_bus(settings, endpoint.active, transport, endpoint.limiter) as submitter:
            endpoint.submitter = speech.submitter = submitter
            try:
                yield {"submitter": submitter}
            finally:
                endpoint.submitter = speech.submitter = None

    async def health(request: Request) -> Response:
        # 200 only when a line can be spoken now: a worker is ready (voices warm, frames
        # reach the output side). Until then "degraded" (or "unavailable" when the bus is
        # down), 503: the gateway's /health does not say ok before a speak can succeed.
        submitter: TaskSubmitter | None = getattr(request.state, "submitter", None)
        uptime_s = round(time.monotonic() - started, 1)
        if submitter is None:
            body = InputHealth(status="degraded", workers_available=0, workers=[])
        else:
            body = submitter.health()
        body = body.model_copy(update={"uptime_s": uptime_s, "connections": endpoint.connections})
        return Response(
            body.model_dump_json(exclude_none=True),
            status_code=200 if body.status == "ok" else 503,
            media_type="application/json",
        )

    routes = [
        WebSocketRoute("/ws/input", endpoint.handle),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
        *speech.routes(),
        *VoicevoxApi(settings, speech).routes(),  # /voicevox/...: docs/voicevox.md
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=internal_middleware(settings.internal_token)
    )


class InputEndpoint:
    """``/ws/input``: drives one :class:`InputSession` per connection."""

    def __init__(self, settings: Settings, metrics: InputMetrics) -> None:
        self.settings = settings
        self.config = settings.input_handler
        self.internal_token = settings.internal_token
        self.metrics = metrics
        self.active = ActiveTasks()
        self.limiter = SpeakLimiter(self.active)
        metrics.active_tasks.set_function(lambda: len(self.active))
        self.submitter: TaskSubmitter | None = None  # set by the lifespan
        self.connections = 0
        self._ids = itertools.count(1)

    async def handle(self, websocket: WebSocket) -> None:
        await websocket.accept()
        # Who this is, as the gateway says (believed only from it: see read_identity).
        peer = websocket.client.host if websocket.client else None
        identity = read_identity(websocket.headers.items(), peer, self.internal_token)
        session = InputSession(
            max_text_chars=self.config.max_text_chars,
            max_message_bytes=self.config.max_message_bytes,
            max_stream_chars=self.config.max_stream_chars,
            stream_idle_timeout_s=self.config.stream_idle_timeout_s,
        )
        structlog.contextvars.bind_contextvars(conn=f"in-{next(self._ids)}")
        self.connections += 1
        self.metrics.connections.inc()
        heard = asyncio.Event()  # a message was handled: the idle watcher looks again
        watcher = asyncio.create_task(self._watch_idle(session, identity, heard))
        try:
            if await self._carry_out(websocket, session, identity, session.opening()):
                await self._serve(websocket, session, identity, heard)
        except WebSocketDisconnect:
            pass  # the client left while we were answering: nothing left to do
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            # Streams still open end with the connection: what was sent is spoken.
            for event in session.close():
                if isinstance(event, SendText):
                    await self._send_text(session, identity, event)
            self.connections -= 1
            self.metrics.connections.dec()
            structlog.contextvars.unbind_contextvars("conn")

    async def _serve(
        self, websocket: WebSocket, session: InputSession, identity: Identity, heard: asyncio.Event
    ) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if (text := message.get("text")) is not None:
                events = session.receive_text(text)
            else:
                events = session.receive_bytes(message.get("bytes") or b"")
            if not await self._carry_out(websocket, session, identity, events):
                return
            heard.set()

    async def _watch_idle(
        self, session: InputSession, identity: Identity, heard: asyncio.Event
    ) -> None:
        """End this connection's streams that go idle; never writes to the socket (the
        client learns it from audio_complete's ``"reason":"idle"``)."""
        while True:
            due = session.idle_due()
            heard.clear()
            wait_s = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await heard.wait()
            for event in session.expire_idle():
                if isinstance(event, SendText):
                    log.info("stream_idle", task_id=event.task_id)
                    await self._send_text(session, identity, event)

    async def _carry_out(
        self, websocket: WebSocket, session: InputSession, identity: Identity, events: list[Event]
    ) -> bool:
        """Do what the session asked; False once the socket is closed."""
        pending = list(events)
        while pending:
            event = pending.pop(0)
            match event:
                case Reply(message):
                    if isinstance(message, ErrorMessage):
                        self.metrics.errors.labels(message.code).inc()
                    await websocket.send_text(dump(message))
                case Submit():
                    pending[:0] = await self._submit(session, identity, event)
                case SendText():
                    pending[:0] = await self._send_text(session, identity, event)
                case CancelTask(task_id):
                    pending[:0] = await self._cancel(session, task_id, identity.tenant)
                case ListVoicesRequest(request_id):
                    pending[:0] = await self._voices(request_id)
                case Close(code, reason):
                    self.metrics.errors.labels(ErrorCode.MESSAGE_TOO_BIG).inc()
                    log.warning("closing", code=code, reason=reason)
                    await websocket.close(code, reason)
                    return False
        return True

    async def _submit(
        self, session: InputSession, identity: Identity, submit: Submit
    ) -> list[Event]:
        assert self.submitter is not None
        key = identity.limits_key
        limits = self.settings.limits_for(identity.tenant)
        limited = await self.limiter.admit(key, limits, len(submit.text), submit.task_id)
        if limited is not None:
            self.metrics.submissions.labels(limited.code).inc()
            log.info("task_limited", tenant=identity.tenant, code=limited.code)
            if limited.retry_after_ms is None:
                return session.refused(submit, limited.code, limited.message)
            return session.rate_limited(submit, limited.message, limited.retry_after_ms)
        task = SubmitTask(
            task_id=submit.task_id,
            text=submit.text,
            voice=submit.voice,
            tenant=identity.tenant,
            client=identity.client_ip,
            stream=submit.stream,
        )
        self.active.admitted(task.task_id, key, len(task.text), stream=submit.stream)
        started = time.perf_counter()
        try:
            accepted = await self.submitter.submit(task)
        except TransportError as exc:
            self.active.refused(task.task_id)
            self.metrics.submissions.labels(exc.code).inc()
            log.info("task_refused", task_id=submit.task_id, code=exc.code)
            return session.refused(submit, exc.code, str(exc))
        except BaseException:
            # Cancelled, or a bug: never a task counted as active that nothing will end.
            self.active.abandoned(task.task_id)
            raise
        self.metrics.submissions.labels("queued").inc()
        self.metrics.submit_seconds.observe(time.perf_counter() - started)
        log.info("task_queued", task_id=submit.task_id, voice=accepted.voice, chars=len(task.text))
        return session.queued(submit)

    async def _send_text(
        self, session: InputSession, identity: Identity, send: SendText
    ) -> list[Event]:
        assert self.submitter is not None
        if send.text:
            limits = self.settings.limits_for(identity.tenant)
            limited = await self.limiter.admit_text(identity.limits_key, limits, len(send.text))
            if limited is not None:
                self.metrics.submissions.labels(limited.code).inc()
                error = ErrorMessage(
                    code=limited.code,
                    message=limited.message,
                    retry_after_ms=limited.retry_after_ms,
                    task_id=send.task_id,
                )
                return session.text_refused(send, error)
        message = TaskText(
            task_id=send.task_id,
            text=send.text,
            flush=send.flush,
            end=send.end,
            reason=send.reason,
            tenant=identity.tenant,
        )
        try:
            await self.submitter.text(message)
        except TransportError as exc:
            log.info("stream_text_refused", task_id=send.task_id, code=exc.code)
            return session.text_failed(send, exc.code, str(exc))
        return []

    async def _voices(self, request_id: str | None) -> list[Event]:
        assert self.submitter is not None
        try:
            voices = await self.submitter.voices()
        except TransportError as exc:
            return [Reply(ErrorMessage(code=exc.code, message=str(exc), request_id=request_id))]
        return [Reply(VoiceList(voices=voices, request_id=request_id))]

    async def _cancel(self, session: InputSession, task_id: str, tenant: str | None) -> list[Event]:
        assert self.submitter is not None
        try:
            # Another tenant's task raises TaskNotFound, exactly like an unknown one.
            stopped = await self.submitter.cancel(task_id, tenant)
        except TransportError as exc:
            return session.cancel_failed(task_id, exc.code, str(exc))
        self.metrics.cancels.labels(str(stopped).lower()).inc()
        log.info("task_cancel", task_id=task_id, stopped=stopped)
        return session.cancel_result(task_id, stopped)
