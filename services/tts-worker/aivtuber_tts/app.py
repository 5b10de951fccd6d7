"""The TTS worker's app: task submission and cancellation, health, voices, metrics.

Routes::

    POST   /v1/tasks             SubmitTask -> 202 SubmitAccepted | WorkerRefusal (400/401/404/503)
    DELETE /v1/tasks/{task_id}   -> 200 {"task_id", "cancelled": bool}
                                 -> 404 WorkerRefusal(code="task_not_found")
                                    (x-aivtuber-tenant: the canceller's tenant; a task of
                                    another tenant is not found, exactly like an unknown one)
    WS     /v1/tasks/events      TaskSnapshot, then each TaskEnd as tasks end (JSON text
                                 messages); the input handlers count active tasks with it
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

import httpx
import structlog
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from aivtuber_common.config import RedisBusSettings, Settings, TtsWorkerSettings
from aivtuber_common.identity import TENANT_HEADER
from aivtuber_common.internal import TASK_EVENTS_PATH, TASKS_PATH, SubmitTask, WorkerRefusal
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import is_canonical_uuid

from .engines import EngineFactory, build_engine
from .metrics import TtsMetrics
from .redis_bus import RedisFrameSink, RedisWorkerBus
from .scheduler import PieceScheduler
from .sink import IngestSink
from .tasks import Refusal, TaskManager
from .voices import Voices

__all__ = ["Worker", "create_app"]

log = structlog.get_logger("aivtuber_tts.app")

MAX_BODY_BYTES = 1024 * 1024
HTTP_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16)


@dataclass
class Worker:
    """Everything one running worker holds; lives from lifespan start to end."""

    settings: TtsWorkerSettings
    voices: Voices
    sink: IngestSink | RedisFrameSink
    manager: TaskManager
    metrics: TtsMetrics

    def health(self) -> tuple[int, dict[str, object]]:
        if self.voices.loading:
            status = "starting"
        elif self.voices.failed or not self.sink.is_connected:
            status = "degraded"
        else:
            status = "ok"
        body = {
            "status": status,
            "voices": [voice.describe() for voice in self.voices.voices.values()],
            "default_voice": self.voices.default,
            "running": self.manager.running,
            "queued": self.manager.queued,
            "capacity": self.manager.capacity,
            "max_concurrent": self.settings.max_concurrent,
            "ingest_connected": self.sink.is_connected,
            "ready_s": None if self.voices.ready_s is None else round(self.voices.ready_s, 3),
        }
        return (200 if status == "ok" else 503), body


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
            manager_ref: list[TaskManager] = []
            sink: IngestSink | RedisFrameSink
            # Bus seam: on Redis, frames go to the task streams and tasks come from the group.
            bus = RedisWorkerBus(settings) if isinstance(settings.bus, RedisBusSettings) else None
            if bus is not None:
                sink = bus.sink
                stack.push_async_callback(bus.aclose)
            else:
                sink = IngestSink(
                    config.output_handler_url,
                    token,
                    on_lost=lambda task_ids: manager_ref[0].ingest_lost(task_ids),
                )
            manager = TaskManager(
                config,
                voices,
                sink,
                PieceScheduler(config.max_concurrent, executor, spare=config.spare_slot),
                metrics,
                ingest_connected=lambda: sink.is_connected,
            )
            manager_ref.append(manager)
            worker = Worker(config, voices, sink, manager, metrics)
            background = {asyncio.create_task(voices.load_all(), name="tts-load-voices")}
            if bus is not None:
                background |= bus.start(manager, voices, lambda: worker.health()[1])
            else:
                assert isinstance(sink, IngestSink)
                background.add(asyncio.create_task(sink.run(), name="tts-ingest"))
            stack.push_async_callback(_cancel_and_wait, background)
            stack.push_async_callback(manager.shutdown)  # runs first: tasks end while connected
            yield {"worker": worker}

    async def submit(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _refusal(worker, 400, "bad_request", f"The body is over {MAX_BODY_BYTES} bytes.")
        try:
            task = SubmitTask.model_validate_json(body)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"]) or "body"
            return _refusal(worker, 400, "bad_request", f"{where}: {error['msg']}")
        if not is_canonical_uuid(task.task_id):
            return _refusal(worker, 400, "bad_request", "task_id: must be a canonical uuid.")
        try:
            accepted = await worker.manager.submit(task)
        except Refusal as refusal:
            log.info("task_refused", task_id=task.task_id, code=refusal.code)
            return _json(refusal.status, WorkerRefusal(code=refusal.code, message=refusal.message))
        return _json(202, accepted)

    async def cancel(request: Request) -> Response:
        worker: Worker = request.state.worker
        if (denied := _check_token(request, token, worker)) is not None:
            return denied
        task_id = request.path_params["task_id"]
        # The input handler says whose cancel this is (it is trusted by the token above).
        tenant = request.headers.get(TENANT_HEADER) or None
        if not worker.manager.has(task_id, tenant):
            message = f"No task {task_id} is queued or running here."
            return _json(404, WorkerRefusal(code="task_not_found", message=message))
        cancelled = await worker.manager.cancel(task_id, tenant)
        log.info("task_cancel_requested", task_id=task_id, cancelled=cancelled)
        return JSONResponse({"task_id": task_id, "cancelled": cancelled})

    async def task_events(websocket: WebSocket) -> None:
        worker: Worker = websocket.state.worker
        await websocket.accept()
        given = websocket.headers.get("authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            log.warning("unauthorized", path=TASK_EVENTS_PATH)
            await websocket.close(4401, "a valid internal token is required")
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
        status, body = request.state.worker.health()
        return JSONResponse(body, status_code=status)

    async def voices(request: Request) -> Response:
        worker: Worker = request.state.worker
        return JSONResponse(
            {
                "default": worker.voices.default,
                "voices": [voice.describe() for voice in worker.voices.voices.values()],
            }
        )

    return Starlette(
        routes=[
            Route(TASKS_PATH, submit, methods=["POST"]),
            WebSocketRoute(TASK_EVENTS_PATH, task_events),
            Route(TASKS_PATH + "/{task_id}", cancel, methods=["DELETE"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/voices", voices, methods=["GET"]),
            Route("/metrics", metrics_endpoint(metrics.registry), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _check_token(request: Request, token: str | None, worker: Worker) -> Response | None:
    if not token:
        return None
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    log.warning("unauthorized", path=request.url.path)
    return _refusal(worker, 401, "unauthorized", "A valid internal token is required.")


def _refusal(worker: Worker, status: int, code: str, message: str) -> Response:
    worker.metrics.refusals.labels(code).inc()
    return _json(status, WorkerRefusal(code=code, message=message))


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
