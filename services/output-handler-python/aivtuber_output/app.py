"""The output handler's app: frontend stream, internal ingest, and its HTTP endpoints.

Routes::

    WS   /ws/output/{task_id}[?from_chunk=N]   frontend stream (proxied by the gateway)
    WS   /internal/ingest                      workers push frames (never proxied)
    GET  /tasks/{task_id}/audio.wav            a finished task's whole audio
    GET  /status/{task_id}                     {"task_id","status","connected","chunks"}
    GET  /health                               liveness and counts
    GET  /metrics                              Prometheus text
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from aivtuber_common.audio import wav_bytes
from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.internal import INGEST_PATH, TaskEnd
from aivtuber_common.internal_auth import internal_middleware
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import is_canonical_uuid

from .ingest import IngestEndpoint
from .keepalive import ping_settings
from .metrics import OutputMetrics
from .store import TaskState, TaskStore
from .stream import OutputEndpoint

__all__ = ["create_app"]


class OutputState(TypedDict):
    """The lifespan state: what every request of the app sees (``request.state``)."""

    store: TaskStore


def create_app(settings: Settings) -> Starlette:
    if isinstance(settings.bus, RedisBusSettings):  # bus seam: every task read from Redis
        from .redis_app import create_redis_app  # imports this module's helpers

        return create_redis_app(settings)
    config = settings.output_handler
    metrics = OutputMetrics()

    def count_finish(end: TaskEnd) -> None:
        metrics.tasks_finished.labels(end.status, end.code or "").inc()

    store = TaskStore(
        task_wait_s=config.task_wait_s,
        task_ttl_s=config.task_ttl_s,
        task_timeout_s=config.task_timeout_s,
        max_buffered_bytes=config.max_buffered_bytes,
        on_finish=count_finish,
    )
    started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[OutputState]:
        try:
            yield {"store": store}
        finally:
            store.close()  # TTL and watchdog timers

    async def task_audio(request: Request) -> Response:
        store: TaskStore = request.state.store
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        found = store.audio(task_id)
        if found is None:
            return _not_found(task_id)
        snapshot, pcm = found
        if snapshot.sample_rate is None:  # only a subscriber's placeholder so far
            return _not_found(task_id)
        if snapshot.state in (TaskState.WAITING, TaskState.STREAMING):
            return _error(409, task_id, "task_not_finished", "The task is still being spoken.")
        if snapshot.state is TaskState.FAILED:
            return _error(
                409,
                task_id,
                "task_failed",
                f"The task failed ({snapshot.code}): {snapshot.message}",
            )
        return Response(
            wav_bytes(snapshot.sample_rate, pcm),
            media_type="audio/wav",
            headers={"Content-Disposition": f'inline; filename="{task_id}.wav"'},
        )

    async def task_status(request: Request) -> Response:
        store: TaskStore = request.state.store
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        snapshot = store.snapshot(task_id)
        body: dict[str, object] = {
            "task_id": task_id,
            "status": snapshot.state.value if snapshot else "not_found",
            "connected": bool(snapshot and snapshot.subscribers),
            "chunks": snapshot.chunks if snapshot else 0,
        }
        if snapshot and snapshot.code:
            body["code"] = snapshot.code
        # 200 either way: "not_found" is an answer to "what is the status of X?".
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        store: TaskStore = request.state.store
        states = {state.value: 0 for state in TaskState}
        for snapshot in store.snapshots():
            states[snapshot.state.value] += 1
        return JSONResponse(
            {
                "status": "ok",
                "service": "output_handler",
                "uptime_s": round(time.monotonic() - started, 1),
                "tasks": states,
                "subscribers": store.subscriber_count,
                "ingest_connections": ingest.connections,
                "buffered_bytes": store.buffered_bytes,
            }
        )

    _, ping_timeout_s = ping_settings(config)
    ingest = IngestEndpoint(store, metrics, settings.internal_token, stall_s=ping_timeout_s)
    routes = [
        WebSocketRoute(
            "/ws/output/{task_id}",
            OutputEndpoint(store, metrics, settings.internal_token).handle,
        ),
        WebSocketRoute(INGEST_PATH, ingest.handle),
        Route("/tasks/{task_id}/audio.wav", task_audio),
        Route("/status/{task_id}", task_status),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=internal_middleware(settings.internal_token)
    )


def _check_id(task_id: str) -> Response | None:
    if is_canonical_uuid(task_id):
        return None
    return _error(400, task_id, "invalid_task_id", "The task id must be a canonical UUID.")


def _not_found(task_id: str) -> Response:
    return _error(404, task_id, "task_not_found", f"No task {task_id} is known here.")


def _error(status: int, task_id: str, code: str, message: str) -> Response:
    return JSONResponse(
        {"type": "error", "status": "error", "task_id": task_id, "code": code, "error": message},
        status_code=status,
    )
