"""The framework plugins as an agent runs them, timed for ``bench.plugins``: a LiveKit TTS
stream per reply, and one Pipecat pipeline (started once) fed one LLM turn per reply."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from livekit.agents import APIConnectOptions
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from aivtuber_integrations.livekit import AIVTuberTTS
from aivtuber_integrations.pipecat import AIVTuberTTSService

from .plugins import TURN_TIMEOUT_S, record
from .speech_client import SpeechError, Utterance

__all__ = ["LiveKitDriver", "PipecatDriver"]

START_TIMEOUT_S = 30.0


class LiveKitDriver:
    """``AIVTuberTTS.stream()`` per reply, its connection prewarmed."""

    def __init__(self, url: str, voice: str) -> None:
        self.tts = AIVTuberTTS(url=url, voice=voice)

    async def __aenter__(self) -> LiveKitDriver:
        await self.tts.voices()  # connected, as prewarm() leaves it
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.tts.aclose()

    async def speak(self, parts: list[str]) -> Utterance:
        utterance = Utterance(text="".join(parts))
        stream = self.tts.stream(conn_options=APIConnectOptions(max_retry=0))
        try:
            utterance.sent_at = time.perf_counter()
            for part in parts:
                stream.push_text(part)
            stream.end_input()
            async with asyncio.timeout(TURN_TIMEOUT_S):
                async for event in stream:
                    record(utterance, bytes(event.frame.data), event.frame.sample_rate)
        finally:
            await stream.aclose()
        return utterance


class _Ear(FrameProcessor):
    """After the service: times each TTSAudioRawFrame of the current turn."""

    def __init__(self) -> None:
        super().__init__()
        self.utterance: Utterance | None = None
        self.stopped = asyncio.Event()
        self.errors: list[ErrorFrame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and self.utterance is not None:
            record(self.utterance, frame.audio, frame.sample_rate)
        elif isinstance(frame, TTSStoppedFrame):
            self.stopped.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame)
            self.stopped.set()
        await self.push_frame(frame, direction)


class PipecatDriver:
    """One running pipeline ``[AIVTuberTTSService, ear]``; a reply is one LLM turn."""

    def __init__(self, url: str, voice: str) -> None:
        self.ear = _Ear()
        self.worker = PipelineWorker(
            Pipeline([AIVTuberTTSService(url=url, voice=voice), self.ear]),
            params=PipelineParams(),
            cancel_on_idle_timeout=False,
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self._running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PipecatDriver:
        started = asyncio.Event()

        async def on_started(worker: PipelineWorker, frame: StartFrame) -> None:
            started.set()

        async def on_error(worker: PipelineWorker, frame: ErrorFrame) -> None:
            self.ear.errors.append(frame)
            self.ear.stopped.set()

        self.worker.add_event_handler("on_pipeline_started", on_started)
        self.worker.add_event_handler("on_pipeline_error", on_error)

        await self.runner.add_workers(self.worker)
        self._running = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(started.wait(), START_TIMEOUT_S)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.worker.queue_frame(EndFrame())
        if self._running is not None:
            await asyncio.wait_for(self._running, TURN_TIMEOUT_S)

    async def speak(self, parts: list[str]) -> Utterance:
        utterance = self.ear.utterance = Utterance(text="".join(parts))
        self.ear.stopped.clear()
        await self.worker.queue_frame(LLMFullResponseStartFrame())
        utterance.sent_at = time.perf_counter()
        for part in parts:
            await self.worker.queue_frame(LLMTextFrame(part))
        await self.worker.queue_frame(LLMFullResponseEndFrame())
        await asyncio.wait_for(self.ear.stopped.wait(), TURN_TIMEOUT_S)
        if self.ear.errors:
            raise SpeechError(f"pipecat: {self.ear.errors[0].error}")
        return utterance
