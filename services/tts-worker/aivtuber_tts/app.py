"""The TTS worker's app: task submission and cancellation, health, voices, metrics.

Routes::

    POST   /v1/tasks             SubmitTask -> 202 SubmitAccepted | WorkerRefusal (400/401/404/503)
    DELETE /v1/tasks/{task_id}   -> 200 {"task_id", "cancelled": bool}
                                 -> 404 WorkerRefusal(code="task_not_found")
                                    (x-aivtuber-tenant: the canceller's tenant; a task of
                                    another tenant is not found, exactly like an unknown one)
    POST   /v1/tasks/{task_id}/text  TaskText -> 200 {"task_id"}: more text for a streaming task
                                 -> 404 WorkerRefusal(code="task_not_found") (or another tenant's)
                                 -> 409 WorkerRefusal(code="task_ended")
    WS     /v1/tasks/events      TaskSnapshot, then each TaskEnd as tasks end (JSON text
                                 messages); the input handlers count active tasks with it
    POST   /v1/utterance         UtteranceRequest -> 200 Utterance | WorkerRefusal: a text
                                 timed mora by mora (and spoken) for the VOICEVOX API
    GET    /health               200 when ok, 503 while starting or degraded
    GET    /v1/voices            the configured voices, their engine, device and state
    GET    /metrics              Prometheus text

The task endpoints demand ``Authorization: Bearer <internal_token>`` when one is set (the
events socket closes with 4401 without it); the read-only ones do not (load balancers and
scrapers poll them).

The lifespan owns every resource: the HTTP client of remote engines, the engine threads,
the ingest connection and the voices, which load in the background so ``/health`` says
``starting`` until they are warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings, TtsWorkerSettings
from aivtuber_common.health import VoiceListing, WorkerHealth
from aivtuber_common.identity import TENANT_HEADER
from aivtuber_common.internal import (
    TASK_EVENTS_PATH,
    TASKS_PATH,
    SubmitTask,
    TaskCancelled,
    TaskText,
)
from aivtuber_common.internal_auth import internal_middleware
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import is_canonical_uuid
from aivtuber_common.refusal import Refusal
from aivtuber_common.transport import FrameSink
from aivtuber_common.utterance import UTTERANCE_PATH, UtteranceRequest

from .bus import open_bus
from .engines import EngineFactory, build_engine
from .metrics import TtsMetrics
from .scheduler import PieceScheduler
from .tasks import TaskManager
from .utterance import utterance
from .voices import Voices

__all__ = ["Worker", "create_app"]

log = structlog.get_logger("aivtuber_tts.app")

MAX_BODY_BYTES = 1024 * 1024
M = TypeVar("M", bound=BaseModel)
HTTP_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16)


@dataclass
class Worker:
    """Everything one running worker holds; lives from lifespan start to end."""

    settings: TtsWorkerSettings
    voices: Voices
    sink: FrameSink
    manager: TaskManager
    metrics: TtsMetrics
    scheduler: PieceScheduler

    def health(self) -> WorkerHealth:
        if self.voices.loading:
            status: Literal["ok", "starting", "degraded"] = "starting"
        elif self.voices.failed or not self.sink.is_connected:
            status = "degraded"
        else:
            status = "ok"
        return WorkerHealth(
            status=status,
            voices=[voice.describe() for voice in self.voices.voices.values()],
            default_voice=self.voices.default,
            running=self.manager.running,
            queued=self.manager.queued,
            capacity=self.manager.capacity,
            max_concurrent=self.settings.max_concurrent,
            ingest_connected=self.sink.is_connected,
            ready_s=None if self.voices.ready_s is None else round(self.voices.ready_s, 3),
        )


def create_app(
    settings: Settings,
    http_transport: httpx.AsyncBaseTransport | None = None,
    engine_factory: EngineFactory = build_engine,
) -> Starlette:
    """The worker app. Tests may hand in an HTTP transport for remote engines, or their own
    engine factory (an engine that blocks on an event, fails on cue, ...)."""
    config = settings.tts_worker
    token = settings.internal_token
    metrics = TtsMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Worker]]:
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=http_transport, limits=HTTP_POOL)
            )
            # One thread more than the slots for the scheduler's spare slot (scheduler.py).
            threads = config.max_concurrent + (1 if config.spare_slot else 0)
            executor = ThreadPoolExecutor(threads, thread_name_prefix="tts-engine")
            # Last in, first out: threads are released after the tasks using them stopped.
            stack.push_async_callback(_shutdown_executor, executor)
            voices = Voices(config, client, engine_factory, executor)
            stack.push_async_callback(voices.aclose)
            bus = open_bus(settings)
            stack.push_async_callback(bus.aclose)
            sink = bus.sink
            scheduler = PieceScheduler(
                config.max_concurrent,
                executor,
                spare=config.spare_slot,
                preempt=config.preempt,
                on_preempt=metrics.preempted.inc,
            )
            manager = TaskManager(config, voices, sink, scheduler, metrics)
            worker = Worker(config, voices, sink, manager, metrics, scheduler)
            background = {asyncio.create_task(voices.load_all(), name="tts-load-voices")}
            background |= bus.start(manager, voices, worker.health)
            stack.push_async_callback(_cancel_and_wait, background)
            stack.push_async_callback(manager.shutdown)  # runs first: tasks end while connected
            yield {"worker": worker}

    async def submit(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        task = await _read(request, SubmitTask, worker)
        if isinstance(task, Response):
            return task
        if not is_canonical_uuid(task.task_id):
            return _refusal(
                worker, 400, ErrorCode.BAD_REQUEST, "task_id: must be a canonical uuid."
            )
        try:
            accepted = await worker.manager.submit(task)
        except Refusal as refusal:
            log.info("task_refused", task_id=task.task_id, code=refusal.code)
            return _json(refusal.status, refusal.wire())
        return _json(202, accepted)

    async def timed_utterance(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        asked = await _read(request, UtteranceRequest, worker)
        if isinstance(asked, Response):
            return asked
        try:
            made = await utterance(asked, worker.voices, worker.scheduler)
        except Refusal as refusal:
            return _refusal(worker, refusal.status, refusal.code, refusal.message)
        return _json(200, made)

    async def cancel(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        task_id = request.path_params["task_id"]
        # The input handler says whose cancel this is (it is trusted by the token above).
        tenant = request.headers.get(TENANT_HEADER) or None
        if not worker.manager.has(task_id, tenant):
            message = f"No task {task_id} is queued or running here."
            return _json(404, Refusal(404, ErrorCode.TASK_NOT_FOUND, message).wire())
        cancelled = await worker.manager.cancel(task_id, tenant)
        log.info("task_cancel_requested", task_id=task_id, cancelled=cancelled)
        return _json(200, TaskCancelled(task_id=task_id, cancelled=cancelled))

    async def text(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        message = await _read(request, TaskText, worker)
        if isinstance(message, Response):
            return message
        task_id = request.path_params["task_id"]
        if message.task_id != task_id:
            return _refusal(worker, 400, ErrorCode.BAD_REQUEST, "task_id: differs from the path's.")
        try:
            worker.manager.text(message)
        except Refusal as refusal:
            return _json(refusal.status, refusal.wire())
        return JSONResponse({"task_id": task_id})

    async def task_events(websocket: WebSocket) -> None:
        worker: Worker = websocket.state.worker
        await websocket.accept()
        given = websocket.headers.get("authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            log.warning("unauthorized", path=TASK_EVENTS_PATH)
            await websocket.close(AppCloseCode.UNAUTHORIZED, "a valid internal token is required")
            return
        # Nothing is read from the follower: the reader only notices its close (or the
        # server's shutdown), which ends the sender at once.
        sender = asyncio.create_task(_send_events(websocket, worker.manager))
        reader = asyncio.create_task(_drain(websocket))
        try:
            done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, reader):
                task.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
        if sender in done and not sender.cancelled() and sender.exception() is None:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(1001, "worker shutting down")

    async def health(request: Request) -> Response:
        body: WorkerHealth = request.state.worker.health()
        return _json(200 if body.status == "ok" else 503, body)

    async def voices(request: Request) -> Response:
        worker: Worker = request.state.worker
        listing = VoiceListing(
            default=worker.voices.default,
            voices=[voice.describe() for voice in worker.voices.voices.values()],
        )
        return _json(200, listing)

    return Starlette(
        routes=[
            Route(TASKS_PATH, submit, methods=["POST"]),
            WebSocketRoute(TASK_EVENTS_PATH, task_events),
            Route(TASKS_PATH + "/{task_id}", cancel, methods=["DELETE"]),
            Route(UTTERANCE_PATH, timed_utterance, methods=["POST"]),
            Route(TASKS_PATH + "/{task_id}/text", text, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/voices", voices, methods=["GET"]),
            Route("/metrics", metrics_endpoint(metrics.registry), methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=internal_middleware(token),
    )


async def _read(request: Request, model: type[M], worker: Worker) -> M | Response:
    """The body as ``model``, or the 400 refusal naming what is wrong with it."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _refusal(
            worker, 400, ErrorCode.BAD_REQUEST, f"The body is over {MAX_BODY_BYTES} bytes."
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        return _refusal(worker, 400, ErrorCode.BAD_REQUEST, f"{where}: {error['msg']}")


def _check_token(request: Request, token: str | None, worker: Worker) -> Response | None:
    if not token:
        return None
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    log.warning("unauthorized", path=request.url.path)
    return _refusal(worker, 401, ErrorCode.UNAUTHORIZED, "A valid internal token is required.")


def _refusal(worker: Worker, status: int, code: str, message: str) -> Response:
    worker.metrics.refusals.labels(code).inc()
    return _json(status, Refusal(status, code, message).wire())


def _json(status: int, model: BaseModel) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


async def _cancel_and_wait(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("background_task_failed", error=repr(result))


async def _send_events(websocket: WebSocket, manager: TaskManager) -> None:
    async with contextlib.aclosing(manager.events()) as events:
        async for event in events:
            await websocket.send_text(event.model_dump_json())


async def _drain(websocket: WebSocket) -> None:
    """Read until the follower closes (or the server does); what it sends is ignored."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _shutdown_executor(executor: ThreadPoolExecutor) -> None:
    # A piece still in a thread finishes (onnxruntime cannot be interrupted); waiting for it
    # in another thread keeps the loop free meanwhile.
    await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
