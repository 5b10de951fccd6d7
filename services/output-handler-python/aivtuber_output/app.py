"""The output handler's app: frontend stream and its HTTP endpoints, on either bus.

Routes::

    WS   /ws/output/{task_id}[?from_chunk=N]   frontend stream (proxied by the gateway)
    WS   /internal/ingest                      workers push frames (direct bus only; never
                                               proxied)
    GET  /tasks/{task_id}/audio.wav            a finished task's whole audio
    GET  /v1/tasks/{task_id}/captions.vtt      captions and audio for the frontend, through
    GET  /v1/tasks/{task_id}/audio.wav         the gateway (see captions.py)
    GET  /status/{task_id}                     {"task_id","status","connected","chunks"}
    GET  /health                               liveness and counts
    GET  /metrics                              Prometheus text

The bus (:mod:`.bus`) gives the :class:`~aivtuber_common.transport.FrameSource` every route
reads. On Redis there is nothing to lose on a restart (any replica serves any task);
``/health`` is 503 while Redis cannot be reached, and subscribers are then closed at once
with ``tts_unavailable`` and may resume with ``from_chunk``.
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
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.internal_auth import internal_middleware
from aivtuber_common.metrics import metrics_endpoint
from aivtuber_common.protocol import is_canonical_uuid
from aivtuber_common.transport import FrameSource, TransportError

from .bus import open_bus
from .captions import task_file_routes
from .keepalive import ping_settings
from .metrics import OutputMetrics
from .stream import OutputEndpoint

__all__ = ["create_app"]


class OutputState(TypedDict):
    """The lifespan state: what every request of the app sees (``request.state``)."""

    source: FrameSource


def create_app(settings: Settings) -> Starlette:
    metrics = OutputMetrics()
    bus = open_bus(settings, metrics)
    started = time.monotonic()
    # A send stuck this long: uvicorn's keepalive has given the subscriber up (stream.py).
    send_timeout_s = sum(ping_settings(settings.output_handler))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[OutputState]:
        async with bus.running():
            yield {"source": bus.source}

    async def task_audio(request: Request) -> Response:
        source: FrameSource = request.state.source
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        try:
            found = await source.audio(task_id)
        except TransportError as exc:
            return _error(503, task_id, exc.code, str(exc))
        if found is None:
            return _not_found(task_id)
        if found.end is None:
            return _error(
                409, task_id, ErrorCode.TASK_NOT_FINISHED, "The task is still being spoken."
            )
        if found.end.status == "failed":
            message = f"The task failed ({found.end.code}): {found.end.message}"
            return _error(409, task_id, ErrorCode.TASK_FAILED, message)
        return Response(
            wav_bytes(found.opened.sample_rate, found.pcm),
            media_type="audio/wav",
            headers={"Content-Disposition": f'inline; filename="{task_id}.wav"'},
        )

    async def task_status(request: Request) -> Response:
        source: FrameSource = request.state.source
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        try:
            status = await source.status(task_id)
        except TransportError as exc:
            return _error(503, task_id, exc.code, str(exc))
        # 200 either way: "not_found" is an answer to "what is the status of X?".
        return _json(200, status.model_dump_json(exclude_none=True))

    async def health(request: Request) -> Response:
        source: FrameSource = request.state.source
        body = source.health().model_copy(update={"uptime_s": round(time.monotonic() - started, 1)})
        return _json(200 if body.status == "ok" else 503, body.model_dump_json(exclude_none=True))

    routes = [
        WebSocketRoute(
            "/ws/output/{task_id}",
            OutputEndpoint(bus.source, metrics, settings.internal_token, send_timeout_s).handle,
        ),
        *bus.routes,
        Route("/tasks/{task_id}/audio.wav", task_audio),
        Route("/status/{task_id}", task_status),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
        *task_file_routes(bus.source, settings.internal_token),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=internal_middleware(settings.internal_token)
    )


def _check_id(task_id: str) -> Response | None:
    if is_canonical_uuid(task_id):
        return None
    return _error(400, task_id, ErrorCode.INVALID_TASK_ID, "The task id must be a canonical UUID.")


def _not_found(task_id: str) -> Response:
    return _error(404, task_id, ErrorCode.TASK_NOT_FOUND, f"No task {task_id} is known here.")


def _error(status: int, task_id: str, code: str, message: str) -> Response:
    return JSONResponse(
        {"type": "error", "status": "error", "task_id": task_id, "code": code, "error": message},
        status_code=status,
    )


def _json(status: int, body: str) -> Response:
    return Response(body, status_code=status, media_type="application/json")
