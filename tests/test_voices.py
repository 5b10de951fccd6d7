"""Choosing a voice through the whole stack: list_voices gathered from two workers that load
different voices, unknown_voice, and the viseme track reaching the client (hibari heart)
while an untimed voice (sine) sends no visemes key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from aivtuber_common.config import (
    GatewaySettings,
    HibariVoice,
    InputHandlerSettings,
    OutputHandlerSettings,
    RouteSettings,
    Settings,
    SineVoice,
    TtsWorkerSettings,
)
from aivtuber_common.say import say
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_input.session import InputSession, ListVoicesRequest
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from tests.frontend import ask, frontend, listen, speak
from tests.support import RunningServer, free_port, run_server
from tests.test_end_to_end import wait_ready

FRAME_MS = 40


@dataclass
class VoiceStack:
    url: str  # the gateway


@contextlib.asynccontextmanager
async def two_workers(dead_worker: bool = False) -> AsyncIterator[VoiceStack]:
    """Worker A: sine + heart (hibari); worker B: sine + tone; input handler, gateway."""
    async with contextlib.AsyncExitStack() as stack:
        output = await stack.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings())))
        )
        tables = [
            {
                "sine": SineVoice(sample_rate=16000, ms_per_char=20.0),
                "heart": HibariVoice(),
            },
            {
                "sine": SineVoice(sample_rate=16000, ms_per_char=20.0),
                "tone": SineVoice(sample_rate=22050, language="ja"),
            },
        ]
        workers: list[RunningServer] = []
        for table in tables:
            config = TtsWorkerSettings(
                output_handler_url=output.ws_url,
                voices=table,
                default_voice="sine",
                frame_ms=FRAME_MS,
                warmup=False,
            )
            server = await stack.enter_async_context(
                run_server(worker_app(Settings(tts_worker=config)))
            )
            await wait_ready(server)
            workers.append(server)
        urls = [f"http://127.0.0.1:{free_port()}"] if dead_worker else []
        urls += [server.http_url for server in workers]
        handler = await stack.enter_async_context(
            run_server(input_app(Settings(input_handler=InputHandlerSettings(workers=urls))))
        )
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(path="/ws/output/{task_id}", backends=[output.ws_url]),
        }
        gateway = await stack.enter_async_context(
            run_server(gateway_app(Settings(gateway=GatewaySettings(routes=routes))))
        )
        yield VoiceStack(gateway.ws_url)


async def test_list_voices_gathers_every_workers_voices() -> None:
    async with two_workers(dead_worker=True) as stack, frontend(stack.url) as (ws, _):
        reply = await ask(ws, {"type": "list_voices", "request_id": "v1"})
    assert reply["type"] == "system" and reply["action"] == "voices"
    assert reply["request_id"] == "v1"
    assert reply["voices"] == [
        {
            "name": "heart",
            "language": "en-US",
            "sample_rate": 24000,
            "engine": "hibari",
            "ready": True,
        },
        {"name": "sine", "language": "und", "sample_rate": 16000, "engine": "sine", "ready": True},
        {"name": "tone", "language": "ja", "sample_rate": 22050, "engine": "sine", "ready": True},
    ]


async def test_list_voices_with_no_worker_answering_is_a_clear_error() -> None:
    port = free_port()
    settings = Settings(input_handler=InputHandlerSettings(workers=[f"http://127.0.0.1:{port}"]))
    async with run_server(input_app(settings)) as handler, frontend(handler.ws_url) as (ws, _):
        reply = await ask(ws, {"type": "list_voices"})
    assert reply["type"] == "error" and reply["code"] == "tts_unavailable"
    assert "voice list" in reply["message"]


async def test_an_unknown_voice_is_refused_and_a_voice_of_another_worker_is_found() -> None:
    async with two_workers() as stack, frontend(stack.url) as (ws, _):
        refused = await ask(ws, {"type": "speak", "text": "Hello.", "voice": "nobody"})
        # "tone" is only on worker B; "heart" only on worker A: both are found.
        tone = await speak(ws, "Hello there.", voice="tone")
        heard_tone = await listen(stack.url, tone)
    assert refused["type"] == "error" and refused["code"] == "unknown_voice"
    assert "nobody" in refused["message"]
    assert heard_tone.end is not None and heard_tone.end["type"] == "audio_complete"


@pytest.mark.parametrize("voice", ["heart", "sine"])
async def test_the_viseme_track_reaches_the_client_for_timed_voices_only(voice: str) -> None:
    async with two_workers() as stack, frontend(stack.url) as (ws, _):
        task_id = await speak(ws, "Hi chat! Welcome back to the stream.", voice=voice)
        heard = await listen(stack.url, task_id)
    assert heard.end is not None and heard.end["type"] == "audio_complete"
    assert heard.chunks
    if voice == "sine":
        assert all("visemes" not in chunk for chunk in heard.chunks)
        return
    rate = heard.start["sample_rate"] if heard.start else 0
    shapes = []
    for chunk in heard.chunks:
        frame_ms = chunk["samples"] * 1000 / rate
        for offset, shape in chunk["visemes"]:
            assert 0 <= offset < frame_ms and shape in "aiueon"
            shapes.append(shape)
    assert heard.chunks[0]["visemes"][0] == [0, "n"]
    assert {"a", "e", "i"} <= set(shapes)


async def test_say_speaks_with_the_heart_voice() -> None:
    async with two_workers() as stack:
        result = await say("Hello chat!", stack.url, "heart")
    assert (result.voice, result.engine, result.sample_rate) == ("heart", "hibari", 24000)
    assert len(result.pcm) > 24000  # over half a second of speech


def test_the_input_session_turns_list_voices_into_a_request() -> None:
    session = InputSession(max_text_chars=100, max_message_bytes=4096)
    assert session.receive_text('{"type":"list_voices","request_id":"a"}') == [
        ListVoicesRequest("a")
    ]
