"""The LiveKit Agents plugin (aivtuber_integrations.livekit) used standalone, as an agent's
pipeline uses its TTS, against the real stack on ephemeral ports: livekit-agents from PyPI."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from livekit.agents import APIConnectOptions, tts
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.voice.io import TimedString

from aivtuber_common.codes import ErrorCode
from aivtuber_integrations.livekit import USERDATA_VISEMES, AIVTuberAPIError, AIVTuberTTS
from tests.frontend import listen
from tests.plugin_stack import HEART_RATE, HOLD, KEY, SINE_RATE, plugin_stack
from tests.support import wait_until

NO_RETRY = APIConnectOptions(max_retry=0, timeout=10)
LINE = "Hello everyone! Welcome back to the stream."


async def collect(stream: tts.ChunkedStream | tts.SynthesizeStream) -> list[tts.SynthesizedAudio]:
    async with asyncio.timeout(30):
        return [event async for event in stream]


def pcm_of(events: list[tts.SynthesizedAudio]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes(e.frame.data) for e in events), dtype="<i2")


async def test_synthesize_speaks_heart_at_its_own_rate_with_visemes_in_the_frames() -> None:
    async with plugin_stack() as s:
        voice = AIVTuberTTS(url=s.url, voice="heart")
        async with voice:
            events = await collect(voice.synthesize(LINE))
    assert voice.capabilities.streaming and voice.capabilities.aligned_transcript
    assert {e.frame.sample_rate for e in events} == {HEART_RATE} == {voice.sample_rate}
    assert {e.frame.num_channels for e in events} == {1}
    samples = pcm_of(events)
    assert np.abs(samples).max() > 1000 and len(samples) / HEART_RATE > 1.0
    assert events[-1].is_final and not any(e.is_final for e in events[:-1])
    # The request id is the gateway's task id, the same for every frame.
    assert len({e.request_id for e in events}) == 1
    shapes = [shape for e in events for _, shape in e.frame.userdata[USERDATA_VISEMES]]
    assert set(shapes) <= set("aiueon") and len(shapes) > 10
    for e in events:  # every shape starts inside the frame that carries it
        for offset_ms, _ in e.frame.userdata[USERDATA_VISEMES]:
            assert 0 <= offset_ms <= e.frame.duration * 1000


async def test_the_sample_rate_is_the_voices_own_learned_by_prewarm() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="sine") as voice:
        assert voice.sample_rate == 24000  # not known yet: the default voice's
        voice.prewarm()
        await wait_until(lambda: voice.sample_rate == SINE_RATE)
        events = await collect(voice.synthesize("A tone."))
    assert {e.frame.sample_rate for e in events} == {SINE_RATE}
    assert [e.frame.userdata[USERDATA_VISEMES] for e in events] == [[]] * len(events)


async def test_an_unknown_voice_raises_unknown_voice_without_retrying() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="nobody") as voice:
        with pytest.raises(AIVTuberAPIError) as raised:
            await collect(voice.synthesize(LINE))
    assert raised.value.code == ErrorCode.UNKNOWN_VOICE
    assert raised.value.status_code == 404 and not raised.value.retryable
    assert "nobody" in raised.value.message


async def test_a_wrong_key_is_unauthorized_and_the_right_one_speaks() -> None:
    async with plugin_stack(keyed=True) as s:
        async with AIVTuberTTS(url=s.url, voice="sine", api_key="not-the-key-0123456") as wrong:
            with pytest.raises(AIVTuberAPIError) as raised:
                await collect(wrong.synthesize(LINE, conn_options=NO_RETRY))
        async with AIVTuberTTS(url=s.url, voice="sine", api_key=KEY) as right:
            events = await collect(right.synthesize("Keyed."))
    assert raised.value.code == ErrorCode.UNAUTHORIZED
    assert raised.value.status_code == 401 and not raised.value.retryable
    assert pcm_of(events).size > 0


async def test_a_ticket_minted_with_the_key_speaks_as_the_tenant() -> None:
    async with plugin_stack(keyed=True) as s:
        async with httpx.AsyncClient(base_url=s.gateway.http_url) as http:
            minted = await http.post("/v1/tickets", headers={"Authorization": f"Bearer {KEY}"})
        ticket = minted.raise_for_status().json()["ticket"]
        async with AIVTuberTTS(url=s.url, voice="sine", ticket=ticket) as voice:
            events = await collect(voice.synthesize("With a ticket."))
    assert pcm_of(events).size > 0


async def test_closing_a_synthesis_midway_cancels_the_task_on_the_server() -> None:
    text = f"This starts at once. Then it would {HOLD} for a long while. And never ends."
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="sine") as voice:
        stream = voice.synthesize(text)
        async with asyncio.timeout(10):
            first = await stream.__anext__()
        await stream.aclose()
        heard = await asyncio.wait_for(listen(s.direct_url, first.request_id), 10)
    assert heard.end is not None and heard.end["cancelled"] is True, heard.end


async def test_a_dropped_connection_is_a_retryable_connection_lost() -> None:
    text = f"This starts at once. Then it would {HOLD} for a long while. And never ends."
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="sine") as voice:
        stream = voice.synthesize(text, conn_options=NO_RETRY)
        async with asyncio.timeout(10):
            await stream.__anext__()
        s.relay.cut()
        with pytest.raises(AIVTuberAPIError) as raised:
            await collect(stream)
        # The next synthesis connects again.
        events = await collect(voice.synthesize("Back again."))
    assert raised.value.code == ErrorCode.CONNECTION_LOST and raised.value.retryable
    assert pcm_of(events).size > 0


# --- stream(): text pushed piece by piece into one streaming task -------------------------

PIECES = ["Hel", "lo every", "one! Wel", "come back ", "to the str", "eam, chat."]


async def test_stream_speaks_the_pieces_as_one_task_with_timed_words() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="heart") as voice:
        stream = voice.stream()
        for piece in PIECES:
            stream.push_text(piece)
        stream.end_input()
        events = await collect(stream)
    text = "".join(PIECES)
    assert {e.frame.sample_rate for e in events} == {HEART_RATE}
    assert len({e.request_id for e in events}) == 1 and events[0].segment_id == events[0].request_id
    assert events[-1].is_final
    timed = [t for e in events for t in e.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    assert all(isinstance(t, TimedString) for t in timed)
    # The transcript is the text pushed, cut at the words, spaces and punctuation kept.
    assert "".join(timed) == text
    assert [t.strip(" ,.!") for t in timed if t.strip(" ,.!")] == text.replace(",", "").replace(
        "!", ""
    ).replace(".", "").split()
    starts = [t.start_time for t in timed if isinstance(t.start_time, float)]
    assert starts == sorted(starts) and len(starts) >= len(text.split())
    duration_s = len(pcm_of(events)) / HEART_RATE
    assert all(0 <= t.start_time <= t.end_time <= duration_s + 0.05 for t in timed)  # type: ignore[operator]
    assert any(e.frame.userdata[USERDATA_VISEMES] for e in events)


async def test_flush_speaks_text_without_a_boundary_before_the_input_ends() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="heart") as voice:
        stream = voice.stream()
        stream.push_text("Hello there my friend")  # no clause boundary yet
        stream.flush()
        async with asyncio.timeout(10):
            first = await stream.__anext__()  # heard before end_input()
        stream.end_input()
        rest = await collect(stream)
    assert first.frame.samples_per_channel > 0 and {e.request_id for e in rest} <= {
        first.request_id
    }


async def test_a_stream_without_text_ends_quietly() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="heart") as voice:
        stream = voice.stream()
        stream.end_input()
        assert await collect(stream) == []


async def test_closing_a_stream_midway_cancels_the_task_on_the_server() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="sine") as voice:
        stream = voice.stream()
        stream.push_text("This starts at once. Then it would ")
        stream.push_text(f"{HOLD} for a long while")  # the input stays open: an LLM still talking
        async with asyncio.timeout(10):
            first = await stream.__anext__()
        await stream.aclose()  # what an interruption does
        heard = await asyncio.wait_for(listen(s.direct_url, first.request_id), 10)
    assert heard.end is not None and heard.end["cancelled"] is True, heard.end
    assert heard.start is not None and heard.start["sample_rate"] == SINE_RATE


async def test_a_stream_to_an_unknown_voice_raises_unknown_voice() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="nobody") as voice:
        stream = voice.stream()
        stream.push_text("Hello.")
        stream.end_input()
        with pytest.raises(AIVTuberAPIError) as raised:
            await collect(stream)
    assert raised.value.code == ErrorCode.UNKNOWN_VOICE


async def test_a_stream_whose_connection_drops_raises_connection_lost() -> None:
    async with plugin_stack() as s, AIVTuberTTS(url=s.url, voice="sine") as voice:
        stream = voice.stream(conn_options=NO_RETRY)
        stream.push_text(f"This starts at once. Then it would {HOLD} for a while.")
        async with asyncio.timeout(10):
            await stream.__anext__()
        s.relay.cut()
        with pytest.raises(AIVTuberAPIError) as raised:
            await collect(stream)
    assert raised.value.code == ErrorCode.CONNECTION_LOST
