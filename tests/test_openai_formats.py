"""``response_format`` opus, aac and flac on ``POST /v1/audio/speech``, driven by the official
``openai`` client through the gateway (the stack of tests/test_openai_api.py), the answers
decoded with PyAV: the whole audio is there (no lost tail), and Opus streams as it is made."""

from __future__ import annotations

import io
from typing import Literal

import av
import numpy as np
import pytest

from aivtuber_input.audio_formats import make_encoder
from tests.test_end_to_end import HOLD
from tests.test_openai_api import RATE, TEXT, sine_pcm, stack

Format = Literal["opus", "aac", "flac"]
# AAC in ADTS cannot say how many priming samples the encoder put first (1024 for FFmpeg's
# AAC) nor how much of the last frame is padding: a decoder gives up to two frames more.
AAC_FRAME = 1024
EXTRA_SAMPLES: dict[Format, int] = {"opus": 0, "aac": 2 * AAC_FRAME, "flac": 0}
CONTENT_TYPES: dict[Format, str] = {"opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac"}
MAGIC: dict[Format, bytes] = {"opus": b"OggS", "aac": b"\xff", "flac": b"fLaC"}


def decoded(body: bytes) -> tuple[np.ndarray, int]:
    """The samples (float, mono) and rate a decoder gets from ``body``."""
    with av.open(io.BytesIO(body)) as container:
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    samples = np.concatenate([frame.to_ndarray().astype(np.float64).ravel() for frame in frames])
    return samples, rate


def frame_of(response_format: Format, rate: int) -> int:
    """One codec frame in samples at the decoded rate (Opus: 20 ms packets)."""
    return rate // 50 if response_format == "opus" else AAC_FRAME if response_format == "aac" else 1


@pytest.mark.parametrize("response_format", ["opus", "aac", "flac"])
async def test_the_whole_audio_is_in_the_encoded_stream(response_format: Format) -> None:
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="sine", input=TEXT, response_format=response_format
        ) as response:
            body = b"".join([chunk async for chunk in response.iter_bytes()])
            headers = response.headers
    assert headers["content-type"] == CONTENT_TYPES[response_format]
    assert body.startswith(MAGIC[response_format])
    samples, rate = decoded(body)
    assert rate == (48000 if response_format == "opus" else RATE)
    expected = len(sine_pcm(TEXT)) / 2 / RATE * rate
    frame = frame_of(response_format, rate)
    assert expected - frame <= len(samples) <= expected + frame + EXTRA_SAMPLES[response_format]
    # The tail is sound, not silence or a cut: the last 20 ms of the tone are still loud.
    tail = samples[-rate // 50 - EXTRA_SAMPLES[response_format] :]
    assert np.sqrt(np.mean(tail**2)) > 0.05


async def test_opus_pages_arrive_while_the_rest_of_the_text_is_still_being_made() -> None:
    text = "Hello there, everyone. " + " ".join(["This part waits for the test."] * 3) + f" {HOLD}."
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="sine", input=text, response_format="opus"
        ) as response:
            chunks = response.iter_bytes()
            first = await anext(chunks)
            held = not s.gate.event.is_set()  # the HOLD sentence is not synthesised yet
            s.gate.release()
            rest = b"".join([chunk async for chunk in chunks])
    assert held and first.startswith(b"OggS")
    samples, rate = decoded(first + rest)
    expected = len(sine_pcm(text)) / 2 / RATE * rate
    assert abs(len(samples) - expected) <= frame_of("opus", rate)


def test_a_task_without_audio_still_gets_the_containers_headers() -> None:
    encoder = make_encoder("opus", RATE)
    head = encoder.start()
    body = head + encoder.encode(b"") + encoder.finish()
    assert head.startswith(b"OggS") and b"OpusHead" in head and b"OpusTags" in body
