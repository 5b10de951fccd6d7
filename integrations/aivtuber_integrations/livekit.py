"""LiveKit Agents plugin: the gateway's voices as a ``livekit.agents.tts.TTS`` (extra ``livekit``).

    from aivtuber_integrations.livekit import AIVTuberTTS
    session = AgentSession(llm=..., tts=AIVTuberTTS(url="ws://host:8000", voice="heart"))

``stream()`` streams the LLM's text into one streaming task: the first piece opens it
(``speak`` with ``"stream": true``), each further piece is an ``append``, ``flush()`` an
``append`` with ``"flush": true``, ``end_input()`` the ``end``. ``synthesize(text)`` is one
plain ``speak``. Frames come at the voice's own rate (``audio_start`` says it; ``sample_rate``
follows it); word timing rides in each frame's userdata as LiveKit's TimedStrings (in
seconds from the start of the audio, the text sent cut at the words, spaces kept), and the
mouth shapes starting in a frame as ``[(offset_ms, shape), ...]`` under
:data:`USERDATA_VISEMES`. Closing a stream before its audio ended (``aclose()``, which is
what an interruption does) cancels the task on the server.

Errors are :class:`AIVTuberAPIError` (a ``livekit.agents.APIStatusError``) whose ``code`` is
the gateway's error code; a wrong key is ``unauthorized``, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from livekit.agents.voice.io import TimedString

from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import AudioComplete, AudioStart, VoiceInfo

from .client import AIVTuberError, Endpoint, Frame, Gateway, WordPieces, listen

__all__ = ["USERDATA_VISEMES", "AIVTuberAPIError", "AIVTuberTTS"]

USERDATA_VISEMES = "aivtuber.visemes"
"""Key of a frame's mouth shapes in ``rtc.AudioFrame.userdata``: ``[(offset_ms, shape)]``,
offsets from the frame's start, shapes ``a i u e o n`` (empty for voices without timing)."""

T = TypeVar("T")
_NoEvents = Literal["error"]  # the TTS emits no events beyond the base class's

# Until the first audio_start (or prewarm()) says otherwise: the rate of the default voice.
DEFAULT_SAMPLE_RATE = 24000

_STATUS: dict[str, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.UNKNOWN_VOICE: 404,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.TEXT_TOO_LONG: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
}


class AIVTuberAPIError(APIStatusError):
    """The gateway refused or failed: ``code`` is its error code (docs/protocol.md)."""

    def __init__(self, error: AIVTuberError) -> None:
        status = _STATUS.get(error.code, 503 if error.retryable else 500)
        super().__init__(
            str(error),
            status_code=status,
            body={"code": error.code, "message": error.message},
            retryable=error.retryable,
        )
        self.code = error.code


class AIVTuberTTS(tts.TTS[_NoEvents]):
    """The gateway's voice ``voice`` at ``url``, as the tenant of ``api_key`` (or ``ticket``)."""

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        voice: str = "heart",
        api_key: str | None = None,
        ticket: str | None = None,
        sample_rate: int | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=sample_rate or DEFAULT_SAMPLE_RATE,
            num_channels=1,
        )
        self._voice = voice
        self._gateway = Gateway(Endpoint(url, api_key=api_key, ticket=ticket))
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()
        self._prewarm: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return self._voice

    @property
    def provider(self) -> str:
        return "AIVTuber"

    def prewarm(self) -> None:
        """Open the connection now and learn the voice's sample rate from ``list_voices``."""
        if self._prewarm is None or self._prewarm.done():
            self._prewarm = asyncio.create_task(self._learn_rate(), name="aivtuber-prewarm")

    async def voices(self) -> list[VoiceInfo]:
        """The voices the gateway's workers offer."""
        try:
            return await self._gateway.voices()
        except AIVTuberError as exc:
            raise AIVTuberAPIError(exc) from exc

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        if self._prewarm is not None:
            await utils.aio.cancel_and_wait(self._prewarm)
        await self._gateway.aclose()

    async def _learn_rate(self) -> None:
        with contextlib.suppress(AIVTuberError):  # the first synthesis will say why
            for voice in await self._gateway.voices():
                if voice.name == self._voice:
                    self._sample_rate = voice.sample_rate


class _Speech:
    """One task's audio into an AudioEmitter: initialised at the voice's rate by
    ``audio_start``; words go in as TimedStrings ahead of their PCM; visemes wait in a
    timeline until the frame that carries them comes out of the emitter."""

    def __init__(self, owner: AIVTuberTTS, emitter: tts.AudioEmitter) -> None:
        self.owner = owner
        self.emitter = emitter
        self.request_id = utils.shortuuid()  # the speak's, to match the gateway's answer
        self.words = WordPieces()
        self.visemes: deque[tuple[float, str]] = deque()  # (ms from the audio's start, shape)
        self.complete = False
        self.cancelling = False
        self._started = False

    def start(self, sample_rate: int, streaming: bool, task_id: str) -> None:
        # The frames' request_id (and a stream's segment_id) is the gateway's task id: what
        # /v1/tasks/{task_id}/... and a second subscriber need.
        self.emitter.initialize(
            request_id=task_id,
            sample_rate=sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=streaming,
        )
        if streaming:
            self.emitter.start_segment(segment_id=task_id)
        self._started = True

    def start_silent(self) -> None:
        """No text came: the emitter still has to be started for the framework to end it."""
        if not self._started:
            self.start(self.owner.sample_rate, streaming=True, task_id=self.request_id)

    async def play(self, endpoint: Endpoint, task_id: str, streaming: bool) -> None:
        async with contextlib.aclosing(listen(endpoint, task_id)) as events:
            async for event in events:
                match event:
                    case AudioStart():
                        self.owner._sample_rate = event.sample_rate
                        self.start(event.sample_rate, streaming, task_id)
                    case Frame():
                        self._frame(event)
                    case AudioComplete():
                        self._complete(event, streaming)

    def _frame(self, frame: Frame) -> None:
        start_ms = frame.start_s * 1000
        for offset_ms, shape in frame.chunk.visemes or ():
            self.visemes.append((start_ms + offset_ms, shape))
        for offset_ms, duration_ms, word in frame.chunk.words or ():
            begin = frame.start_s + offset_ms / 1000
            self.emitter.push_timed_transcript(
                TimedString(self.words.piece(word), begin, begin + duration_ms / 1000)
            )
        self.emitter.push(frame.pcm)

    def _complete(self, complete: AudioComplete, streaming: bool) -> None:
        if complete.cancelled and not self.cancelling:
            raise AIVTuberError(ErrorCode.TASK_FAILED, "the task was cancelled on the server")
        self.complete = True
        if rest := self.words.rest():
            end_s = complete.duration_ms / 1000
            self.emitter.push_timed_transcript(TimedString(rest, end_s, end_s))
        self.emitter.flush()
        if streaming:
            self.emitter.end_segment()

    def take_visemes(self, frame: rtc.AudioFrame, position_ms: float) -> list[tuple[int, str]]:
        """The shapes starting inside ``frame``, which starts at ``position_ms``."""
        end_ms = position_ms + frame.duration * 1000
        taken: list[tuple[int, str]] = []
        while self.visemes and self.visemes[0][0] < end_ms:
            at_ms, shape = self.visemes.popleft()
            taken.append((max(0, round(at_ms - position_ms)), shape))
        return taken


class _Visemes:
    """Tags the frames a stream yields with their visemes (the emitter re-cuts the audio, so
    shapes are placed by time, not by the frame they came in)."""

    def __init__(self) -> None:
        self.speech: _Speech | None = None
        self._position_ms = 0.0

    def reset(self, speech: _Speech) -> None:
        self.speech = speech
        self._position_ms = 0.0

    def tag(self, event: tts.SynthesizedAudio) -> tts.SynthesizedAudio:
        frame = event.frame
        shapes = (
            self.speech.take_visemes(frame, self._position_ms) if self.speech is not None else []
        )
        frame.userdata[USERDATA_VISEMES] = shapes
        self._position_ms += frame.duration * 1000
        return event


class ChunkedStream(tts.ChunkedStream):
    """``synthesize(text)``: one plain ``speak``."""

    def __init__(self, *, tts: AIVTuberTTS, input_text: str, conn_options: APIConnectOptions):
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: AIVTuberTTS = tts
        self._visemes = _Visemes()

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        speech = _Speech(self._tts, output_emitter)
        self._visemes.reset(speech)
        speech.words.add(self._input_text)
        gateway = self._tts._gateway
        task_id: str | None = None
        try:
            task_id = await gateway.speak(
                self._input_text, voice=self._tts._voice, request_id=speech.request_id
            )
            failed = _watch(gateway, task_id)
            await _first_of(speech.play(gateway.endpoint, task_id, streaming=False), failed)
        except AIVTuberError as exc:
            raise AIVTuberAPIError(exc) from exc
        finally:
            await _settle(gateway, task_id, speech)

    async def __anext__(self) -> tts.SynthesizedAudio:
        return self._visemes.tag(await super().__anext__())


class SynthesizeStream(tts.SynthesizeStream):
    """``stream()``: one streaming task fed piece by piece."""

    def __init__(self, *, tts: AIVTuberTTS, conn_options: APIConnectOptions):
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: AIVTuberTTS = tts
        self._visemes = _Visemes()

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        speech = _Speech(self._tts, output_emitter)
        self._visemes.reset(speech)
        gateway = self._tts._gateway
        opened: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        sender = asyncio.create_task(self._send(gateway, speech, opened))
        try:
            task_id = await _first_of(opened, sender)
            if task_id is None:
                await sender
                speech.start_silent()
                return
            failed = _watch(gateway, task_id)
            await _first_of(speech.play(gateway.endpoint, task_id, streaming=True), sender, failed)
        except AIVTuberError as exc:
            raise AIVTuberAPIError(exc) from exc
        finally:
            await utils.aio.cancel_and_wait(sender)
            task_id = opened.result() if opened.done() and not opened.cancelled() else None
            await _settle(gateway, task_id, speech)

    async def _send(
        self, gateway: Gateway, speech: _Speech, opened: asyncio.Future[str | None]
    ) -> None:
        """The pieces, as they are pushed: the first opens the task, the rest append."""
        task_id: str | None = None
        try:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    if task_id is not None:
                        await gateway.append(task_id, "", flush=True)
                    continue
                speech.words.add(data)
                if task_id is None:
                    self._mark_started()
                    task_id = await gateway.speak(
                        data, voice=self._tts._voice, stream=True, request_id=speech.request_id
                    )
                    opened.set_result(task_id)
                    # The player may start listening now, before the queued pieces are sent.
                    await asyncio.sleep(0)
                else:
                    await gateway.append(task_id, data)
            if task_id is not None:
                await gateway.end(task_id)
        finally:
            if not opened.done():
                opened.set_result(None)

    async def __anext__(self) -> tts.SynthesizedAudio:
        return self._visemes.tag(await super().__anext__())


def _watch(gateway: Gateway, task_id: str) -> asyncio.Future[None]:
    """A future that fails with the first error ``/ws/input`` reports for the task."""
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_error(error: AIVTuberError) -> None:
        if not failed.done():
            failed.set_exception(error)

    gateway.watch(task_id, on_error)
    return failed


async def _first_of(main: Awaitable[T], *others: asyncio.Future[Any]) -> T:
    """``main``'s result, unless one of ``others`` fails first (then that error); an other
    that ends without error is simply no longer watched."""
    runner = asyncio.ensure_future(main)
    watched = set(others)
    try:
        while True:
            done, _ = await asyncio.wait({runner, *watched}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                return runner.result()
            for other in done:
                error = other.exception()
                if error is not None:
                    raise error
            watched -= done
    finally:
        for other in others:  # a failure that lost the race is seen, not reported at exit
            if other.done() and not other.cancelled():
                other.exception()
        if not runner.done():
            await utils.aio.cancel_and_wait(runner)


async def _settle(gateway: Gateway, task_id: str | None, speech: _Speech) -> None:
    """After a run: a task that did not finish is cancelled on the server."""
    if task_id is None:
        return
    gateway.unwatch(task_id)
    if not speech.complete:
        speech.cancelling = True
        with contextlib.suppress(AIVTuberError):  # gone with the connection: already cancelled
            await gateway.cancel(task_id)
