"""The OpenAI-compatible speech API of the input handler (reached through the gateway).

Routes::

    POST /v1/audio/speech    text -> audio streamed as it is made (pcm, wav, mp3; or SSE)
    GET  /v1/audio/voices    our voices and the OpenAI names mapped onto them
    GET  /v1/models          the model names of config (any name is accepted in a request)
    GET  /v1/models/{model}

A speech request is a ``speak`` by other means: the same task ids, the same worker
submission (failover, busy workers, unknown voices), the caller's tenant from the gateway's
identity headers (:func:`aivtuber_common.identity.read_identity`) on the task, and the
audio read from the output handler's ``/ws/output/{task_id}`` like a frontend reads it. So a
task started here is also visible to ``/status`` and ``/ws/output`` subscribers.

The response starts with the first frame (never earlier: a failure before any audio is an
HTTP error in OpenAI's shape, with its status), then each frame is encoded and sent the
moment it arrives. When the client hangs up, the task is cancelled on its worker. A failure
after the first frame ends an SSE stream with an ``error`` event and cuts a raw audio body
short (the client sees an incomplete chunked body, not a complete file).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.identity import Identity, identity_headers, read_identity
from aivtuber_common.internal import SubmitAccepted, SubmitTask
from aivtuber_common.protocol import VoiceInfo, new_task_id
from aivtuber_common.transport import SubmitRefused, TaskSubmitter, TransportError

from .activity import ActiveTasks
from .audio_formats import CONTENT_TYPES, make_encoder
from .limits import SpeakLimiter
from .metrics import InputMetrics
from .openai_api import (
    ApiError,
    SpeechRequest,
    error_for_code,
    parse_speech_request,
    resolve_voice,
    sse_delta,
    sse_done,
    sse_error,
)
from .output_client import (
    Failed,
    Finished,
    OutputEvent,
    OutputUnavailable,
    Pcm,
    Started,
    subscribe,
)

__all__ = ["SpeechApi"]

log = structlog.get_logger("aivtuber_input.speech")

# A JSON body holds at most 4 UTF-8 bytes (12 as a \\u escape pair) per character of input,
# plus the other fields: anything larger is refused before it is parsed.
BODY_OVERHEAD_BYTES = 16 * 1024
OWNER = "aivtuber"


class SpeechApi:
    """Holds what the routes need; ``submitter`` is set by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        metrics: InputMetrics,
        limiter: SpeakLimiter | None = None,
        active: ActiveTasks | None = None,
    ) -> None:
        self.settings = settings
        # The WebSocket path's limiter and active-task count: one set of limits per tenant
        # whichever way it speaks.
        self.active = active if active is not None else ActiveTasks()
        self.limiter = limiter if limiter is not None else SpeakLimiter(self.active)
        self.config = settings.input_handler
        self.openai = settings.input_handler.openai
        self.metrics = metrics
        self.max_chars = min(self.openai.max_input_chars, self.config.max_text_chars)
        self.max_body = self.max_chars * 12 + BODY_OVERHEAD_BYTES
        self.submitter: TaskSubmitter | None = None
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        return [
            Route("/v1/audio/speech", _AsgiEndpoint(self.speech), methods=["POST"]),
            Route("/v1/audio/voices", self.voices, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
        ]

    # --- discovery --------------------------------------------------------------------------

    async def models(self, _: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [self._model(m) for m in self.openai.models]}
        )

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["model"]
        if name not in self.openai.models:
            return ApiError(
                404, f"The model '{name}' does not exist.", ErrorCode.MODEL_NOT_FOUND, "model"
            ).response()
        return JSONResponse(self._model(name))

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": OWNER}

    async def voices(self, _: Request) -> JSONResponse:
        """Kokoro-FastAPI's shape (``{"voices": [ids]}``) plus where each alias leads."""
        found: list[VoiceInfo] = []
        default: str | None = None
        submitter = self.submitter
        if submitter is not None:
            try:
                found = await submitter.voices()
            except TransportError as exc:
                log.info("voices_unavailable", code=exc.code)
            default = submitter.default_voice
        aliases = {name: target or default for name, target in self.openai.voice_aliases.items()}
        return JSONResponse(
            {
                "voices": [voice.name for voice in found],
                "default": default,
                "aliases": aliases,
                "details": [
                    {
                        "id": voice.name,
                        "engine": voice.engine,
                        "sample_rate": voice.sample_rate,
                        "ready": voice.ready,
                    }
                    for voice in found
                ],
            }
        )

    # --- speech -----------------------------------------------------------------------------

    async def speech(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await _read_body(request, self.max_body)
            speech = parse_speech_request(body, self.max_chars)
        except ApiError as exc:
            self.metrics.errors.labels(exc.code).inc()
            await exc.response()(scope, receive, send)
            return
        except ClientDisconnect:
            return  # left while sending the request: nothing was started
        identity = read_identity(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            request.client.host if request.client else None,
            self.settings.internal_token,
        )
        # Two pumps: the answer, and a watch for the client hanging up (which cancels it).
        answer = asyncio.create_task(self._answer(speech, identity, scope, receive, send))
        hangup = asyncio.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait((answer, hangup), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, hangup):
                task.cancel()
            await asyncio.gather(answer, hangup, return_exceptions=True)
        if not answer.cancelled() and answer.exception() is not None:
            raise answer.exception()  # type: ignore[misc]  # a bug: uvicorn logs it

    async def _answer(
        self, speech: SpeechRequest, identity: Identity, scope: Scope, receive: Receive, send: Send
    ) -> None:
        task = SubmitTask(
            task_id=new_task_id(),
            text=speech.input,
            voice=resolve_voice(speech.voice_name, self.openai),
            tenant=identity.tenant,
        )
        started_at = time.perf_counter()
        submitted = finished = False
        try:
            async with subscribe(
                self.config.output_handler_url,
                task.task_id,
                identity_headers(identity, self.settings.internal_token),
                self.config.worker_timeout_s,
            ) as subscription:
                await self._submit(task, identity)
                submitted = True
                events = await subscription()
                started, first = await _first_audio(events)
                await _start_response(send, speech, started.sample_rate)
                ttfb_ms = (time.perf_counter() - started_at) * 1000
                end = await self._stream(send, speech, started, first, events)
                finished = True  # completed, cancelled elsewhere or failed: nothing to stop
                log.info(
                    "speech_streamed",
                    task_id=task.task_id,
                    voice=started.voice,
                    format=speech.response_format,
                    sse=speech.stream_format == "sse",
                    chars=len(speech.input),
                    first_byte_ms=round(ttfb_ms, 1),
                    end=end,
                )
        except OutputUnavailable as exc:
            await self._refuse(error_for_code(exc.code, str(exc)), scope, receive, send)
        except ApiError as exc:
            finished = True  # refused or failed before any audio: nothing left to stop
            await self._refuse(exc, scope, receive, send)
        finally:
            if submitted and not finished:
                await self._cancel(task.task_id, identity.tenant)

    async def _refuse(self, exc: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.errors.labels(exc.code).inc()
        log.info("speech_refused", code=exc.code, status=exc.status)
        await exc.response()(scope, receive, send)

    async def _submit(self, task: SubmitTask, identity: Identity) -> SubmitAccepted:
        submitter = self.submitter
        if submitter is None:
            raise error_for_code(ErrorCode.TTS_UNAVAILABLE, "The input handler is shutting down.")
        key = identity.limits_key
        limits = self.settings.limits_for(identity.tenant)
        limited = await self.limiter.admit(key, limits, len(task.text), task.task_id)
        if limited is not None:
            self.metrics.submissions.labels(limited.code).inc()
            log.info("task_limited", tenant=identity.tenant, code=limited.code)
            refusal = error_for_code(limited.code, limited.message)
            if limited.retry_after_ms is not None:
                refusal.retry_after_s = math.ceil(limited.retry_after_ms / 1000)
            raise refusal
        self.active.admitted(task.task_id, key, len(task.text))
        started = time.perf_counter()
        try:
            accepted = await submitter.submit(task)
        except TransportError as exc:
            self.active.refused(task.task_id)
            self.metrics.submissions.labels(exc.code).inc()
            refused = isinstance(exc, SubmitRefused)
            raise error_for_code(exc.code, str(exc), refused_by_worker=refused) from exc
        except BaseException:
            # Cancelled, or a bug: never a task counted as active that nothing will end.
            self.active.abandoned(task.task_id)
            raise
        self.metrics.submissions.labels("queued").inc()
        self.metrics.submit_seconds.observe(time.perf_counter() - started)
        log.info("task_queued", task_id=task.task_id, voice=accepted.voice, chars=len(task.text))
        return accepted

    async def _cancel(self, task_id: str, tenant: str | None) -> None:
        submitter = self.submitter
        if submitter is None:
            return
        try:
            async with asyncio.timeout(self.config.worker_timeout_s):
                stopped = await submitter.cancel(task_id, tenant)
        except (TransportError, TimeoutError) as exc:
            log.warning("speech_cancel_failed", task_id=task_id, error=type(exc).__name__)
            return
        self.metrics.cancels.labels(str(stopped).lower()).inc()
        log.info("speech_client_left", task_id=task_id, stopped=stopped)

    async def _stream(
        self,
        send: Send,
        speech: SpeechRequest,
        started: Started,
        first: Pcm | Finished,
        events: AsyncIterator[OutputEvent],
    ) -> str:
        """Send every frame as it comes; how the task ended (completed, cancelled, a code)."""
        encoder = make_encoder(speech.response_format, started.sample_rate)
        sse = speech.stream_format == "sse"

        async def out(data: bytes) -> None:
            if data:
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse_delta(data) if sse else data,
                        "more_body": True,
                    }
                )

        head = encoder.start()
        if isinstance(first, Pcm):
            await out(head + encoder.encode(first.data))
            end: OutputEvent = first
            async for end in events:
                if not isinstance(end, Pcm):
                    break
                await out(encoder.encode(end.data))
        else:
            await out(head)
            end = first
        if isinstance(end, Failed):
            log.warning("speech_failed_mid_stream", code=end.code)
            if sse:
                error = error_for_code(end.code, end.message)
                await send({"type": "http.response.body", "body": sse_error(error)})
            # A raw body is left incomplete on purpose (uvicorn closes the connection): the
            # client must not take a cut-off stream for a whole file.
            return end.code
        await out(encoder.finish())
        tail = sse_done(len(speech.input)) if sse else b""
        await send({"type": "http.response.body", "body": tail})
        return "cancelled" if isinstance(end, Finished) and end.cancelled else "completed"


async def _first_audio(events: AsyncIterator[OutputEvent]) -> tuple[Started, Pcm | Finished]:
    """Wait for ``audio_start`` and the first frame; a failure before them raises ApiError."""
    started: Started | None = None
    async for event in events:
        match event:
            case Started():
                started = event
            case Pcm() | Finished() if started is not None:
                return started, event
            case Failed(code, message):
                raise error_for_code(code, message)
    raise error_for_code(ErrorCode.WORKER_LOST, "The audio stream ended before it began.")


async def _start_response(send: Send, speech: SpeechRequest, sample_rate: int) -> None:
    sse = speech.stream_format == "sse"
    media = "text/event-stream" if sse else CONTENT_TYPES[speech.response_format]
    headers = [
        (b"content-type", media.encode()),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),  # a reverse proxy in front must not buffer the stream
        (b"x-sample-rate", str(sample_rate).encode()),
        (b"x-audio-channels", b"1"),
        (b"x-audio-format", speech.response_format.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_big(limit)
    return bytes(body)


def _too_big(limit: int) -> ApiError:
    return ApiError(
        413, f"The request body is larger than {limit} bytes.", ErrorCode.BODY_TOO_LARGE
    )


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _AsgiEndpoint:
    """Lets a Starlette Route call a raw ASGI method (Starlette calls non-functions as apps)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)
