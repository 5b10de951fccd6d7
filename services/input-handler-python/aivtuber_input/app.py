"""The input handler's app: ``/ws/input`` plus ``/health`` and ``/metrics``.

The WebSocket layer is thin: it moves messages into :class:`~aivtuber_input.session.
InputSession` and carries out the events it returns. Messages of one connection are handled
one after the other, so replies keep the order of the requests (a cancel is answered after
the speak before it was queued).

Who a connection is comes from the gateway's identity headers (``aivtuber_common.identity``);
each speak passes the tenant's limits (:mod:`aivtuber_input.limits`) before any worker is
asked, and its task counts as active until the worker reports its end
(:mod:`aivtuber_input.activity`).
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
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.identity import Identity, read_identity
from aivtuber_common.internal import SubmitTask
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import ErrorMessage, VoiceList, dump
from aivtuber_common.transport import TaskSubmitter, TransportError

from .activity import ActiveTasks, WorkerEvents
from .limits import SpeakLimiter
from .metrics import InputMetrics
from .redis_submitter import RedisTaskSubmitter, redis_submitter
from .session import CancelTask, Close, Event, InputSession, ListVoicesRequest, Reply, Submit
from .shared_limits import RedisLimits
from .speech import SpeechApi
from .workers import HttpTaskSubmitter

__all__ = ["InputEndpoint", "create_app"]

log = structlog.get_logger("aivtuber_input")


class InputState(TypedDict):
    """The lifespan state: what every request of the app sees (``request.state``)."""

    submitter: HttpTaskSubmitter | RedisTaskSubmitter


def create_app(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """``transport`` replaces the network under the workers' HTTP client (tests)."""
    config = settings.input_handler
    metrics = InputMetrics()
    started = time.monotonic()
    endpoint = InputEndpoint(settings, metrics)
    speech = SpeechApi(
        settings, metrics, endpoint.limiter, endpoint.active
    )  # POST /v1/audio/speech and its discovery routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[InputState]:
        if isinstance(settings.bus, RedisBusSettings):  # bus seam: workers found on Redis
            async with redis_submitter(settings, on_ended=endpoint.active.ended) as on_redis:
                endpoint.submitter = speech.submitter = on_redis
                # The limits on Redis too: every replica counts against the same window.
                bus = settings.bus
                shared = RedisLimits(on_redis.link, endpoint.active.holds, bus.heartbeat_ttl_s)
                endpoint.limiter.shared = shared
                renew = asyncio.create_task(shared.run(bus.heartbeat_interval_s))
                try:
                    yield {"submitter": on_redis}
                finally:
                    renew.cancel()
                    await asyncio.gather(renew, return_exceptions=True)
                    endpoint.limiter.shared = None
                    endpoint.submitter = speech.submitter = None
            return
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(transport=transport, limits=limits) as client:
            submitter = HttpTaskSubmitter(
                client,
                list(config.workers),
                timeout_s=config.worker_timeout_s,
                token=settings.internal_token,
                ready_wait_s=config.ready_wait_s,
                on_accepted=endpoint.active.accepted,
            )
            endpoint.submitter = speech.submitter = submitter
            events = WorkerEvents(
                endpoint.active,
                list(config.workers),
                settings.internal_token,
                config.worker_timeout_s,
            )
            background = [
                asyncio.create_task(submitter.run_health_checks(config.health_interval_s)),
                asyncio.create_task(events.run()),
            ]
            try:
                yield {"submitter": submitter}
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                endpoint.submitter = speech.submitter = None

    async def health(request: Request) -> Response:
        # 200 only when a line can be spoken now: a worker answered its /health with 200
        # (voices warm, ingest connected). Until then "degraded", 503: the gateway's /health
        # (and whoever waits on it) does not say ok before a speak can succeed.
        submitter: HttpTaskSubmitter | RedisTaskSubmitter | None = getattr(
            request.state, "submitter", None
        )
        states = [worker.as_dict() for worker in submitter.workers] if submitter else []
        ready = submitter is not None and submitter.ready
        body: dict[str, object] = {
            "status": "ok" if ready else "degraded",
            "service": "input_handler",
            "uptime_s": round(time.monotonic() - started, 1),
            "connections": endpoint.connections,
            "workers_available": submitter.available if submitter else 0,
            "workers": states,
        }
        if isinstance(submitter, RedisTaskSubmitter):  # bus seam: Redis down is "unavailable"
            body["bus"] = submitter.state()
            if not submitter.link.up:
                body["status"] = "unavailable"
        return JSONResponse(body, status_code=200 if ready else 503)

    routes = [
        WebSocketRoute("/ws/input", endpoint.handle),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
        *speech.routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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
        )
        structlog.contextvars.bind_contextvars(conn=f"in-{next(self._ids)}")
        self.connections += 1
        self.metrics.connections.inc()
        try:
            if await self._carry_out(websocket, session, identity, session.opening()):
                await self._serve(websocket, session, identity)
        except WebSocketDisconnect:
            pass  # the client left while we were answering: nothing left to do
        finally:
            self.connections -= 1
            self.metrics.connections.dec()
            structlog.contextvars.unbind_contextvars("conn")

    async def _serve(self, websocket: WebSocket, session: InputSession, identity: Identity) -> None:
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
                case CancelTask(task_id):
                    pending[:0] = await self._cancel(session, task_id, identity.tenant)
                case ListVoicesRequest(request_id):
                    pending[:0] = await self._voices(request_id)
                case Close(code, reason):
                    self.metrics.errors.labels("message_too_big").inc()
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
        )
        self.active.admitted(task.task_id, key, len(task.text))
        started = time.perf_counter()
        try:
            accepted = await self.submitter.submit(task)
        except asyncio.CancelledError:
            self.active.abandoned(task.task_id)
            raise
        except TransportError as exc:
            self.active.refused(task.task_id)
            self.metrics.submissions.labels(exc.code).inc()
            log.info("task_refused", task_id=submit.task_id, code=exc.code)
            return session.refused(submit, exc.code, str(exc))
        self.metrics.submissions.labels("queued").inc()
        self.metrics.submit_seconds.observe(time.perf_counter() - started)
        log.info("task_queued", task_id=submit.task_id, voice=accepted.voice, chars=len(task.text))
        return session.queued(submit)

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
