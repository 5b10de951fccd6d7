"""The output handler's app on the Redis bus: the same subscriber endpoint and HTTP routes
as the direct app, over :class:`~aivtuber_output.redis_source.RedisFrameSource`.

There is no ``/internal/ingest`` here (workers write to Redis), and nothing to lose on a
restart: any replica serves any task. ``/health`` is 503 while Redis cannot be reached;
subscribers are then closed at once with ``tts_unavailable`` and may resume with
``from_chunk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from aivtuber_common.audio import wav_bytes
from aivtuber_common.bus import BusUnavailable, RedisLink
from aivtuber_common.config import RedisBusSettings, Settings
from aivtuber_common.internal_auth import internal_middleware
from aivtuber_common.metrics import metrics_endpoint

from .app import _check_id, _error, _not_found
from .metrics import OutputMetrics
from .redis_source import RedisFrameSource
from .stream import OutputEndpoint

__all__ = ["create_redis_app"]


class RedisOutputState(TypedDict):
    """The lifespan state (``request.state``), as the direct app's OutputState."""

    source: RedisFrameSource


def create_redis_app(settings: Settings) -> Starlette:
    assert isinstance(settings.bus, RedisBusSettings)
    config = settings.output_handler
    metrics = OutputMetrics()
    link = RedisLink(settings.bus)
    source = RedisFrameSource(
        link, task_wait_s=config.task_wait_s, task_timeout_s=config.task_timeout_s
    )
    started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[RedisOutputState]:
        probe = asyncio.create_task(link.run(), name="bus-link")
        try:
            yield {"source": source}
        finally:
            probe.cancel()
            await asyncio.wait({probe})
            await source.aclose()
            await link.aclose()

    async def task_audio(request: Request) -> Response:
        source: RedisFrameSource = request.state.source
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        try:
            found = await source.audio(task_id)
        except BusUnavailable as exc:
            return _error(503, task_id, exc.code, str(exc))
        if found is None or found[0] is None:
            return _not_found(task_id)
        opened, end, pcm = found
        assert opened is not None
        if end is None:
            return _error(409, task_id, "task_not_finished", "The task is still being spoken.")
        if end.status == "failed":
            return _error(
                409, task_id, "task_failed", f"The task failed ({end.code}): {end.message}"
            )
        return Response(
            wav_bytes(opened.sample_rate, pcm),
            media_type="audio/wav",
            headers={"Content-Disposition": f'inline; filename="{task_id}.wav"'},
        )

    async def task_status(request: Request) -> Response:
        source: RedisFrameSource = request.state.source
        task_id = request.path_params["task_id"]
        if (bad := _check_id(task_id)) is not None:
            return bad
        try:
            state, chunks, code = await source.status(task_id)
        except BusUnavailable as exc:
            return _error(503, task_id, exc.code, str(exc))
        body: dict[str, object] = {
            "task_id": task_id,
            "status": state,
            "connected": source.subscribers[task_id] > 0,  # on this replica
            "chunks": chunks,
        }
        if code:
            body["code"] = code
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        source: RedisFrameSource = request.state.source
        body = {
            "status": "ok" if link.up else "unavailable",
            "service": "output_handler",
            "uptime_s": round(time.monotonic() - started, 1),
            "subscribers": source.subscriber_count,
            "bus": {"kind": "redis", "url": link.url, "connected": link.up, "error": link.error},
        }
        return JSONResponse(body, status_code=200 if link.up else 503)

    routes = [
        WebSocketRoute(
            "/ws/output/{task_id}", OutputEndpoint(source, metrics, settings.internal_token).handle
        ),
        Route("/tasks/{task_id}/audio.wav", task_audio),
        Route("/status/{task_id}", task_status),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(metrics.registry)),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=internal_middleware(settings.internal_token)
    )
