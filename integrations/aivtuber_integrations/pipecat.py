"""Pipecat plugin: the gateway's voices as a websocket TTS service (extra ``pipecat``).

    from aivtuber_integrations.pipecat import AIVTuberTTSService
    tts = AIVTuberTTSService(url="ws://host:8000", voice="heart", api_key=KEY)
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), ...])

Built on Pipecat's ``WebsocketTTSService`` (word timestamps are part of every TTS service since
Pipecat 0.0.105): its websocket is the gateway's ``/ws/input``, reconnected by Pipecat's own
receive loop (backoff, quick-failure detection) when it drops. Each Pipecat audio context (an
LLM turn, or a ``TTSSpeakFrame``) is one streaming task: its first text opens it (``speak``
with ``"stream": true``), later text is ``append``ed as it comes (tokens by default: the
gateway cuts clauses itself; with sentence aggregation each sentence is flushed), the end of
the turn sends ``end``. The task's audio is read from ``/ws/output/{task_id}`` and pushed as
``TTSAudioRawFrame``s at the voice's own rate (or resampled to ``sample_rate`` when one is
given); its word timing goes to ``add_word_timestamps``, so ``TTSTextFrame``s follow what is
heard. An interruption sends ``cancel`` for the contexts it drops.

Each ``TTSAudioRawFrame`` carries in ``metadata``: :data:`METADATA_VISEMES`, the mouth shapes
starting in it as ``[(offset_ms, shape), ...]`` (shapes ``a i u e o n``; empty for voices
without timing), and :data:`METADATA_TASK_ID`, the gateway's task id. A processor placed right
after this service sees them (the output transport re-cuts audio into its own frames).

Errors reach the pipeline as :class:`AIVTuberErrorFrame` (an ``ErrorFrame`` whose ``code`` is
the gateway's error code): a wrong key (``unauthorized``) or an unknown voice leaves the
service unusable, as Pipecat does with permanent errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.utils.errors import ErrorCategory
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import Append, AudioComplete, AudioStart, Cancel, End, Speak

from .client import (
    ANSWER_TIMEOUT_S,
    CONNECT_ERRORS,
    OPEN_TIMEOUT_S,
    AIVTuberError,
    ControlSession,
    Endpoint,
    TaskError,
    closed_error,
    connect_error,
    encode,
    listen,
)
from .client import Frame as GatewayFrame

__all__ = ["METADATA_TASK_ID", "METADATA_VISEMES", "AIVTuberErrorFrame", "AIVTuberTTSService"]

METADATA_VISEMES = "aivtuber_visemes"
"""Key of a ``TTSAudioRawFrame``'s mouth shapes in its ``metadata``: ``[(offset_ms, shape)]``,
offsets from the frame's start."""
METADATA_TASK_ID = "aivtuber_task_id"
"""Key of the gateway's task id in a ``TTSAudioRawFrame``'s ``metadata``."""


@dataclass
class AIVTuberErrorFrame(ErrorFrame):
    """An ErrorFrame from the gateway: ``code`` is its error code (docs/protocol.md)."""

    code: str = ""


_CATEGORIES: dict[str, ErrorCategory] = {
    ErrorCode.UNAUTHORIZED: ErrorCategory.AUTHENTICATION,
    ErrorCode.ORIGIN_NOT_ALLOWED: ErrorCategory.AUTHORIZATION,
    ErrorCode.UNKNOWN_VOICE: ErrorCategory.INVALID_REQUEST,
    ErrorCode.RATE_LIMITED: ErrorCategory.RATE_LIMIT,
    ErrorCode.TOO_MANY_CONNECTIONS: ErrorCategory.RATE_LIMIT,
    ErrorCode.CONNECTION_LOST: ErrorCategory.CONNECTIVITY,
    # The text of one reply: not the service's fault, and the next reply may be fine.
    ErrorCode.INVALID_TEXT: ErrorCategory.APPLICATION,
    ErrorCode.EMPTY_TEXT: ErrorCategory.APPLICATION,
    ErrorCode.TEXT_TOO_LONG: ErrorCategory.APPLICATION,
}


def category(code: str) -> ErrorCategory:
    """Pipecat's category of a gateway error code (permanent ones retire the service)."""
    return _CATEGORIES.get(code, ErrorCategory.SERVER)


@dataclass
class _Task:
    """The gateway task behind one audio context."""

    task_id: str | None = None
    listener: asyncio.Task[None] | None = None
    ended: bool = False  # `end` sent
    complete: bool = False  # audio_complete received
    failed: bool = False


class AIVTuberTTSService(WebsocketTTSService):
    """The gateway's voice ``voice`` at ``url``, as the tenant of ``api_key`` (or ``ticket``)."""

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        voice: str = "heart",
        api_key: str | None = None,
        ticket: str | None = None,
        sample_rate: int | None = None,
        text_aggregation_mode: TextAggregationMode | None = TextAggregationMode.TOKEN,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            push_text_frames=False,  # TTSTextFrames come from the word timing, as heard
            push_start_frame=True,
            # A context that ends without audio_complete (a reconnect dropped it) still
            # gets its TTSStoppedFrame from the base class.
            push_stop_frames=True,
            pause_frame_processing=False,
            sample_rate=sample_rate,
            settings=TTSSettings(model=None, voice=voice, language=None),
            **kwargs,
        )
        self._endpoint = Endpoint(url, api_key=api_key, ticket=ticket)
        self._session = ControlSession()
        self._tasks: dict[str, _Task] = {}  # by audio context id
        self._receive_task: asyncio.Task[None] | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        await self._connect()

    # --- the connection (Pipecat's WebsocketService hooks) ------------------------------

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        await self._connect_websocket()
        if self._websocket and not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()  # type: ignore[no-untyped-call]
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        for state in list(self._tasks.values()):
            if state.listener is not None:
                await self.cancel_task(state.listener)
        self._tasks.clear()
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._websocket and self._websocket.state is State.OPEN:
            return
        try:
            self._websocket = await self._websocket_connect(
                self._endpoint.input_url(),
                additional_headers=self._endpoint.headers(),
                open_timeout=OPEN_TIMEOUT_S,
                compression=None,
            )
        except CONNECT_ERRORS as exc:
            error = connect_error(self._endpoint, exc)
            self._websocket = None
            await self._report(error)
            await self._call_event_handler("on_connection_error", str(error))
            return
        await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self) -> None:
        websocket, self._websocket = self._websocket, None
        try:
            if websocket is not None:
                await websocket.close()
        finally:
            self._session.fail_all(
                AIVTuberError(ErrorCode.CONNECTION_LOST, "disconnected from the gateway")
            )
            await self._call_event_handler("on_disconnected")

    async def _receive_messages(self) -> None:
        websocket = self._websocket
        if websocket is None:
            raise ConnectionError("not connected to the gateway")
        ended = AIVTuberError(ErrorCode.CONNECTION_LOST, "the gateway closed the connection")
        try:
            async for message in websocket:
                try:
                    failure = self._session.receive(message)
                except AIVTuberError as exc:  # a malformed message: said, then skipped
                    await self._report(exc)
                    continue
                if failure is not None:
                    await self._task_failed(failure)
        except ConnectionClosed as exc:
            ended = closed_error(exc)
            if ended.code != ErrorCode.CONNECTION_LOST:
                # The gateway refused the connection (a wrong key, an origin, too many):
                # Pipecat's loop would only see a closed socket.
                await self._report(ended)
            raise
        finally:
            self._session.fail_all(ended)

    # --- synthesis ------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Open the context's task with its first text, append the rest."""
        state = self._tasks.get(context_id)
        try:
            if state is None:
                if not self._websocket or self._websocket.state is State.CLOSED:
                    await self._connect()
                state = self._tasks[context_id] = _Task()
                task_id = await self._open(text, context_id)
                state.task_id = task_id
                state.listener = self.create_task(
                    self._play(context_id, task_id), name=f"aivtuber-{task_id[:8]}"
                )
                # Let the listener start its handshake now: tokens queued behind this one
                # would otherwise all be sent before it runs (a burst never yields).
                await asyncio.sleep(0)
                if not self._is_streaming_tokens:
                    await self._send(Append(type="append", task_id=task_id, text="", flush=True))
            elif state.task_id is not None and not state.failed and not state.ended:
                await self._send(
                    Append(
                        type="append",
                        task_id=state.task_id,
                        text=text,
                        flush=not self._is_streaming_tokens,
                    )
                )
            await self.start_tts_usage_metrics(text)
        except AIVTuberError as exc:
            await self._fail_context(context_id, exc)
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is complete: ``end`` its task (the rest is spoken, then done)."""
        flush_id = context_id or self.get_active_audio_context_id()
        state = self._tasks.get(flush_id) if flush_id else None
        if state is None or state.task_id is None or state.ended or state.failed:
            return
        state.ended = True
        try:
            await self._send(End(type="end", task_id=state.task_id))
        except AIVTuberError as exc:
            await self._report(exc)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Cancel the interrupted context's task on the server."""
        state = self._tasks.pop(context_id, None)
        if state is not None:
            if state.task_id is not None and not state.complete:
                with contextlib.suppress(AIVTuberError):  # no connection: cancelled already
                    await self._send(Cancel(type="cancel", task_id=state.task_id))
            if state.listener is not None:
                await self.cancel_task(state.listener)
        await super().on_audio_context_interrupted(context_id)

    async def _open(self, text: str, context_id: str) -> str:
        """``speak`` a streaming task (the context id is its request id); its task id."""
        future = self._session.expect(context_id)
        orphaned = False
        try:
            await self._send(
                Speak(
                    type="speak",
                    text=text,
                    stream=True,
                    voice=str(self._settings.voice) if self._settings.voice else None,
                    request_id=context_id,
                )
            )
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return str(await future)
        except asyncio.CancelledError:
            # Interrupted while the gateway was accepting the task: cancel it once accepted.
            orphaned = True
            future.add_done_callback(self._cancel_orphan)
            raise
        except TimeoutError as exc:
            raise AIVTuberError(ErrorCode.TIMEOUT, "the gateway did not answer the speak") from exc
        finally:
            if not orphaned:
                self._session.forget(context_id)

    def _cancel_orphan(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        # (the session still holds the answered request: the answer came, nothing waits)
        self.create_task(self._send_quietly(Cancel(type="cancel", task_id=str(future.result()))))

    async def _send_quietly(self, message: BaseModel) -> None:
        with contextlib.suppress(AIVTuberError):
            await self._send(message)

    async def _play(self, context_id: str, task_id: str) -> None:
        """The task's audio, words and visemes into its audio context."""
        state = self._tasks.get(context_id)
        rate = self.sample_rate
        try:
            async with contextlib.aclosing(listen(self._endpoint, task_id)) as events:
                async for event in events:
                    match event:
                        case AudioStart():
                            rate = event.sample_rate
                            if self._init_sample_rate is None:
                                self._sample_rate = rate  # frames come at the voice's rate
                        case GatewayFrame():
                            await self._push_audio(context_id, task_id, event, rate)
                        case AudioComplete():
                            if state is not None:
                                state.complete = True
                            await self.append_to_audio_context(
                                context_id, TTSStoppedFrame(context_id=context_id)
                            )
                            await self.remove_audio_context(context_id)
        except AIVTuberError as exc:
            await self._fail_context(context_id, exc)

    async def _push_audio(
        self, context_id: str, task_id: str, frame: GatewayFrame, rate: int
    ) -> None:
        audio = frame.pcm
        if rate != self.sample_rate:
            audio = await self._resampler.resample(audio, rate, self.sample_rate)
        out = TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id)
        out.metadata[METADATA_VISEMES] = list(frame.chunk.visemes or ())
        out.metadata[METADATA_TASK_ID] = task_id
        await self.append_to_audio_context(context_id, out)
        if frame.chunk.words:
            start_s = frame.start_s
            timed = [(word, start_s + offset_ms / 1000) for offset_ms, _, word in frame.chunk.words]
            await self.add_word_timestamps(timed, context_id)

    # --- errors ---------------------------------------------------------------------------

    async def _send(self, message: BaseModel) -> None:
        websocket = self._websocket
        if websocket is None:
            raise AIVTuberError(ErrorCode.CONNECTION_LOST, "not connected to the gateway")
        try:
            await websocket.send(encode(message))
        except ConnectionClosed as exc:
            raise closed_error(exc) from exc

    async def _task_failed(self, failure: TaskError) -> None:
        """An error ``/ws/input`` reported for a task (or for the connection)."""
        for context_id, state in list(self._tasks.items()):
            if failure.task_id is not None and state.task_id == failure.task_id:
                await self._fail_context(context_id, failure.error)
                return
        await self._report(failure.error)

    async def _fail_context(self, context_id: str, error: AIVTuberError) -> None:
        """Report the error once and end the context, so the turn goes on without it."""
        state = self._tasks.get(context_id)
        if state is not None:
            if state.failed:
                return
            state.failed = True
        if error.close_code is None:  # a closing connection's error is said by its loop
            await self._report(error)
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def _report(self, error: AIVTuberError) -> None:
        logger.warning(f"{self}: {error}")
        await self.push_error_frame(
            AIVTuberErrorFrame(
                error=str(error), exception=error, category=category(error.code), code=error.code
            )
        )
