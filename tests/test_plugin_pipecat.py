"""The Pipecat plugin (aivtuber_integrations.pipecat) in Pipecat's own test runner
(``pipecat.tests.utils.run_test``) against the real stack on ephemeral ports: pipecat-ai
from PyPI, an LLM's reply streamed in as tokens, audio frames and word frames out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import run_test

from aivtuber_common.codes import ErrorCode
from aivtuber_integrations.pipecat import (
    METADATA_TASK_ID,
    METADATA_VISEMES,
    AIVTuberErrorFrame,
    AIVTuberTTSService,
)
from tests.frontend import listen
from tests.plugin_stack import HEART_RATE, HOLD, KEY, Relay, plugin_stack

RUN_S = 60.0
REPLY = ["Hello ", "every", "one! Welcome ", "back to ", "the stream."]


def reply_frames(pieces: Sequence[str]) -> list[Frame]:
    """An LLM's reply as Pipecat's LLM services push it: start, tokens, end."""
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
    ]


async def run(service: FrameProcessor, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    async with asyncio.timeout(RUN_S):
        down, up = await run_test(service, frames_to_send=frames)
    return list(down), list(up)


def audio_of(frames: Sequence[Frame]) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def errors_of(frames: Sequence[Frame]) -> list[AIVTuberErrorFrame]:
    return [f for f in frames if isinstance(f, AIVTuberErrorFrame)]


async def test_an_llm_reply_streamed_in_comes_out_as_one_task_of_audio_and_word_frames() -> None:
    async with plugin_stack() as s:
        down, up = await run(AIVTuberTTSService(url=s.url, voice="heart"), reply_frames(REPLY))
    audio = audio_of(down)
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    assert {f.sample_rate for f in audio} == {HEART_RATE} and {f.num_channels for f in audio} == {1}
    samples = np.frombuffer(b"".join(f.audio for f in audio), dtype="<i2")
    assert np.abs(samples).max() > 1000 and len(samples) / HEART_RATE > 1.0
    # One turn, one streaming task: one start, one stop around all of its audio.
    assert len({f.metadata[METADATA_TASK_ID] for f in audio}) == 1
    kinds = [type(f) for f in down if isinstance(f, TTSStartedFrame | TTSStoppedFrame)]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]
    shapes = [shape for f in audio for _, shape in f.metadata[METADATA_VISEMES]]
    assert set(shapes) <= set("aiueon") and len(shapes) > 10
    # One word frame per word, in order, stamped with when it is heard (the word timing).
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text.strip() for f in words] == "".join(REPLY).split()
    stamps = [f.pts for f in words]
    assert all(stamps) and stamps == sorted(stamps)


async def test_with_sentence_aggregation_each_sentence_is_flushed_into_the_one_task() -> None:
    async with plugin_stack() as s:
        service = AIVTuberTTSService(
            url=s.url, voice="heart", text_aggregation_mode=TextAggregationMode.SENTENCE
        )
        down, up = await run(service, reply_frames(REPLY))
    audio = audio_of(down)
    assert not errors_of(up) and audio
    assert len({f.metadata[METADATA_TASK_ID] for f in audio}) == 1
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == "".join(REPLY).split()


async def test_an_unknown_voice_is_an_error_frame_with_its_code() -> None:
    async with plugin_stack() as s:
        down, up = await run(
            AIVTuberTTSService(url=s.url, voice="nobody"), [TTSSpeakFrame("Hello there.")]
        )
    (error,) = errors_of(up)
    assert error.code == ErrorCode.UNKNOWN_VOICE and "nobody" in error.error
    assert not audio_of(down)


async def test_a_wrong_key_is_an_unauthorized_error_frame_and_the_right_key_speaks() -> None:
    async with plugin_stack(keyed=True) as s:
        _, wrong_up = await run(
            AIVTuberTTSService(url=s.url, voice="sine", api_key="not-the-key-0123456"),
            [TTSSpeakFrame("Hello there.")],
        )
        right_down, right_up = await run(
            AIVTuberTTSService(url=s.url, voice="sine", api_key=KEY),
            [TTSSpeakFrame("Hello there.")],
        )
    assert ErrorCode.UNAUTHORIZED in {e.code for e in errors_of(wrong_up)}, wrong_up
    assert not errors_of(right_up) and audio_of(right_down)


class InterruptOnFirstAudio(FrameProcessor):
    """Plays the user barging in: an interruption as soon as the bot's first audio passes."""

    def __init__(self) -> None:
        super().__init__()
        self.task_id: str | None = None
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and self.task_id is None:
            self.task_id = frame.metadata[METADATA_TASK_ID]
            await self.broadcast_interruption()
            self.done.set()


async def test_an_interruption_cancels_the_task_on_the_server() -> None:
    text = f"This starts at once. Then it would {HOLD} for a long while. And never ends."
    barge_in = InterruptOnFirstAudio()
    # The pipeline's end waits for the barge-in: a session does not end mid-sentence.
    end_later = HoldUntil(barge_in.done, lambda frame: isinstance(frame, EndFrame))
    async with plugin_stack() as s:
        service = AIVTuberTTSService(url=s.url, voice="sine")
        down, up = await run(Pipeline([end_later, service, barge_in]), [TTSSpeakFrame(text)])
        assert barge_in.task_id is not None
        heard = await asyncio.wait_for(listen(s.direct_url, barge_in.task_id), 10)
    assert heard.end is not None and heard.end["cancelled"] is True, heard.end
    assert not errors_of(up), up
    assert any(isinstance(f, InterruptionFrame) for f in down)


class Dropper(FrameProcessor):
    """After the service: cuts every connection through the relay at the first audio."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        self.dropped = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and not self.dropped.is_set():
            self.relay.cut()
            self.dropped.set()


class HoldUntil(FrameProcessor):
    """Before the service: holds the first frame ``hold`` picks until ``event`` is set (the
    frames behind it wait too, as in any Pipecat processor)."""

    def __init__(self, event: asyncio.Event, hold: Callable[[Frame], bool]) -> None:
        super().__init__()
        self.event = event
        self.hold = hold
        self.held = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not self.held and self.hold(frame):
            self.held = True
            await asyncio.wait_for(self.event.wait(), RUN_S / 2)
        await self.push_frame(frame, direction)


def second_speak() -> Callable[[Frame], bool]:
    seen = 0

    def pick(frame: Frame) -> bool:
        nonlocal seen
        seen += isinstance(frame, TTSSpeakFrame)
        return seen == 2 and isinstance(frame, TTSSpeakFrame)

    return pick


async def test_a_dropped_connection_ends_the_turn_with_an_error_then_reconnects() -> None:
    text = f"This starts at once. Then it would {HOLD} for a long while. And never ends."
    reconnected = asyncio.Event()
    async with plugin_stack() as s:
        service = AIVTuberTTSService(url=s.url, voice="sine", reconnect_backoff_min_wait=0.1)
        dropper = Dropper(s.relay)

        @service.event_handler("on_connected")
        async def on_connected(_: AIVTuberTTSService) -> None:
            if dropper.dropped.is_set():
                reconnected.set()

        down, up = await run(
            Pipeline([HoldUntil(reconnected, second_speak()), service, dropper]),
            [TTSSpeakFrame(text), TTSSpeakFrame("Back again.")],
        )
    assert ErrorCode.CONNECTION_LOST in {e.code for e in errors_of(up)}, up
    task_ids = [f.metadata[METADATA_TASK_ID] for f in audio_of(down)]
    assert len(set(task_ids)) == 2, task_ids  # the held line, cut; then the next one, whole
    kinds = [type(f) for f in down if isinstance(f, TTSStartedFrame | TTSStoppedFrame)]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame] * 2
