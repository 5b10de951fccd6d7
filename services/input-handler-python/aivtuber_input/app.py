"""The input handler's app: ``/ws/input`` plus ``/health`` and ``/metrics``.

The WebSocket layer is thin: it moves messages into :class:`~aivtuber_input.session.
InputSession` and carries out the events it returns. Messages of one connection are handled
one after the other, so replies keep the order of the requests (a cancel is answered after
the speak before it was queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.internal import SubmitTask
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import ErrorMessage, dump
from aivtuber_common.transport import TaskSubmitter, TransportError

from .metrics import InputMetrics
from .redis_submitter import RedisTaskSubmitter, redis_submitter
from .session import CancelTask, Close, Event, InputSession, Reply, Submit
from .workers import HttpTaskSubmitter

__all__ = ["InputEndpoint", "create_app"]

log = structlog.get_logger("aivtuber_input")


def create_app(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """``transport`` replaces the network under the workers' HTTP client (tests)."""
    config = settings.input_handler
    metrics = InputMetrics()
    started = time.monotonic()
    endpoint = InputEndpoint(settings, metrics)
    workers: list[HttpTaskSubmitter | RedisTaskSubmitter | None] = [None]  # for /health

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if isinstance(settings.bus, RedisBusSettings):  # bus seam: workers found on Redis
            async with redis_submitter(settings) as on_redis:
                endpoint.submitter = workers[0] = on_redis
                try:
                    yield
                finally:
                    endpoint.submitter = workers[0] = None
            return
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(transport=transport, limits=limits) as client:
            submitter = HttpTaskSubmitter(
                client,
                list(config.workers),
                timeout_s=config.worker_timeout_s,
                token=settings.internal_token,
            )
            endpoint.submitter = workers[0] = submitter
            probes = asyncio.create_task(submitter.run_health_checks(config.health_interval_s))
            try:
                yield
            finally:
                probes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probes
                endpoint.submitter = workers[0] = None

    async def health(request: Request) -> Response:
        submitter = workers[0]
        states = [worker.as_dict() for worker in submitter.workers] if submitter else []
        body = {
            "status": "ok",
            "service": "input_handler",
            "uptime_s": round(time.monotonic() - started, 1),
            "connections": endpoint.connections,
            "workers_available": submitter.available if submitter else 0,
            "workers": states,
        }
        if isinstance(submitter, RedisTaskSubmitter):  # bus seam: Redis down is a 503
            body["bus"] = submitter.state()
            if not submitter.link.up:
                body["status"] = "unavailable"
                return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    routes = [
        WebSocketRoute("/ws/input", endpoint.handle),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class InputEndpoint:
    """``/ws/input``: drives one :class:`InputSession` per connection."""

    def __init__(self, settings: Settings, metrics: InputMetrics) -> None:
        self.config = settings.input_handler
        self.metrics = metrics
        self.submitter: TaskSubmitter | None = None  # set by the lifespan
        self.connections = 0
        self._ids = itertools.count(1)

    async def handle(self, websocket: WebSocket) -> None:
        await websocket.accept()
        session = InputSession(
            max_text_chars=self.config.max_text_chars,
            max_message_bytes=self.config.max_message_bytes,
        )
        structlog.contextvars.bind_contextvars(conn=f"in-{next(self._ids)}")
        self.connections += 1
        self.metrics.connections.inc()
        try:
            if await self._carry_out(websocket, session, session.opening()):
                await self._serve(websocket, session)
        except WebSocketDisconnect:
            pass  # the client left while we were answering: nothing left to do
        finally:
            self.connections -= 1
            self.metrics.connections.dec()
            structlog.contextvars.unbind_contextvars("conn")

    async def _serve(self, websocket: WebSocket, session: InputSession) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if (text := message.get("text")) is not None:
                events = session.receive_text(text)
            else:
                events = session.receive_bytes(message.get("bytes") or b"")
            if not await self._carry_out(websocket, session, events):
                return

    async def _carry_out(
        self, websocket: WebSocket, session: InputSession, events: list[Event]
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
                    pending[:0] = await self._submit(session, event)
                case CancelTask(task_id):
                    pending[:0] = await self._cancel(session, task_id)
                case Close(code, reason):
                    self.metrics.errors.labels("message_too_big").inc()
                    log.warning("closing", code=code, reason=reason)
                    await websocket.close(code, reason)
                    return False
        return True

    async def _submit(self, session: InputSession, submit: Submit) -> list[Event]:
        assert self.submitter is not None
        task = SubmitTask(task_id=submit.task_id, text=submit.text, voice=submit.voice)
        started = time.perf_counter()
        try:
            accepted = await self.submitter.submit(task)
        except TransportError as exc:
            self.metrics.submissions.labels(exc.code).inc()
            log.info("task_refused", task_id=submit.task_id, code=exc.code)
            return session.refused(submit, exc.code, str(exc))
        self.metrics.submissions.labels("queued").inc()
        self.metrics.submit_seconds.observe(time.perf_counter() - started)
        log.info("task_queued", task_id=submit.task_id, voice=accepted.voice, chars=len(task.text))
        return session.queued(submit)

    async def _cancel(self, session: InputSession, task_id: str) -> list[Event]:
        assert self.submitter is not None
        try:
            stopped = await self.submitter.cancel(task_id)
        except TransportError as exc:
            return session.cancel_failed(task_id, exc.code, str(exc))
        self.metrics.cancels.labels(str(stopped).lower()).inc()
        log.info("task_cancel", task_id=task_id, stopped=stopped)
        return session.cancel_result(task_id, stopped)
