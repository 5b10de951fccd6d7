"""The whole stack through the gateway, as a frontend uses it: gateway, input handler,
output handler and TTS worker(s), each a real server on an ephemeral port in this process.

The ``sine`` voice is wrapped so a test can hold synthesis at a chosen sentence (any piece
containing ``HOLD``) until it lets go: a task is then reliably mid-stream for cancel and
worker-loss tests, with no sleeps. One test runs the real Piper voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aivtuber_common.config import (
    BusSettings,
    DirectBusSettings,
    GatewaySettings,
    HibariVoice,
    InputHandlerSettings,
    LimitsSettings,
    OutputHandlerSettings,
    PiperVoice,
    RedisBusSettings,
    RouteSettings,
    Settings,
    SineVoice,
    TtsWorkerSettings,
    VoiceSettings,
)
from aivtuber_common.say import say
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from aivtuber_tts.engines import Engine, SineEngine, build_engine
from tests.frontend import Heard, ask, frontend, listen, speak
from tests.support import RunningServer, eventually, free_port, run_server

HOLD = "HOLD"
DIRECT = DirectBusSettings()
SINE_RATE = 16000
MS_PER_CHAR = 20.0
FRAME_MS = 40
READY_TIMEOUT_S = 30.0
TASK_WAIT_S = 3.0  # how long an early subscriber waits; also the unknown-id test's wait


class Gate:
    """Holds every piece containing HOLD until :meth:`release`; remembers what it made."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.pieces: list[str] = []

    def release(self) -> None:
        self.event.set()


class HeldSine(SineEngine):
    def __init__(self, gate: Gate, *args: Any) -> None:
        super().__init__(*args)
        self.gate = gate

    def synthesize_piece(self, piece: str) -> bytes:
        self.gate.pieces.append(piece)
        if HOLD in piece:
            self.gate.event.wait(READY_TIMEOUT_S)  # released by the test or its teardown
        return super().synthesize_piece(piece)


def held_factory(gate: Gate) -> Any:
    def factory(
        voice_id: str,
        voice: VoiceSettings,
        max_concurrent: int = 1,
        client: httpx.AsyncClient | None = None,
        warmup: bool = True,
    ) -> Engine:
        if voice.engine == "sine":
            return HeldSine(gate, voice.sample_rate, voice.frequency_hz, voice.ms_per_char)
        return build_engine(voice_id, voice, max_concurrent, client, warmup)

    return factory


@dataclass
class Stack:
    gateway: RunningServer
    output: RunningServer
    input: RunningServer
    workers: list[RunningServer]
    gates: list[Gate]
    stops: list[contextlib.AsyncExitStack] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.ws_url

    async def stop_worker(self, index: int) -> None:
        await self.stops[index].aclose()


def voices(piper: bool, heart: bool = False) -> dict[str, VoiceSettings]:
    table: dict[str, VoiceSettings] = {
        "sine": SineVoice(sample_rate=SINE_RATE, ms_per_char=MS_PER_CHAR)
    }
    if piper:
        table["joe"] = PiperVoice(device="cpu")
    if heart:  # hibari: timed (visemes, words) and fast
        table["heart"] = HibariVoice()
    return table


async def wait_ready(server: RunningServer) -> None:
    async def ready() -> bool:
        return (await http.get(f"{server.http_url}/health")).status_code == 200

    async with httpx.AsyncClient() as http, asyncio.timeout(READY_TIMEOUT_S):
        await eventually(ready, every=0.02)


@contextlib.asynccontextmanager
async def stack(
    bus: BusSettings = DIRECT,  # the bus fixture's; direct for the browser and page tests
    workers: int = 1,
    piper: bool = False,
    heart: bool = False,
    dead_workers: int = 0,
    limits: LimitsSettings | None = None,
    audio_metrics: bool = False,
    worker_options: dict[str, Any] | None = None,
    **input_options: Any,
) -> AsyncIterator[Stack]:
    """Output handler, worker(s), input handler, gateway: started in the order each needs,
    on the ``bus`` fixture's bus (dead workers are unreachable URLs: direct bus only)."""
    async with contextlib.AsyncExitStack() as outer:
        output = await outer.enter_async_context(
            run_server(
                output_app(
                    Settings(bus=bus, output_handler=OutputHandlerSettings(task_wait_s=TASK_WAIT_S))
                )
            )
        )
        gates: list[Gate] = []
        running: list[RunningServer] = []
        stops: list[contextlib.AsyncExitStack] = []
        for _ in range(workers):
            gate = Gate()
            config = TtsWorkerSettings(
                output_handler_url=output.ws_url,
                voices=voices(piper, heart),
                default_voice="joe" if piper else "sine",
                frame_ms=FRAME_MS,
                max_concurrent=2,
                **(worker_options or {}),
            )
            app = worker_app(
                Settings(bus=bus, tts_worker=config), engine_factory=held_factory(gate)
            )
            own = contextlib.AsyncExitStack()
            server = await own.enter_async_context(run_server(app))
            outer.push_async_callback(own.aclose)
            outer.callback(gate.release)  # first: never leave an engine thread waiting
            await wait_ready(server)
            gates.append(gate)
            running.append(server)
            stops.append(own)
        urls = [server.http_url for server in running]
        urls += [f"http://127.0.0.1:{free_port()}" for _ in range(dead_workers)]
        handler = await outer.enter_async_context(
            run_server(
                input_app(
                    Settings(
                        bus=bus,
                        limits=limits or LimitsSettings(),
                        input_handler=InputHandlerSettings(workers=urls, **input_options),
                    )
                )
            )
        )
        if isinstance(bus, RedisBusSettings):
            await wait_workers_seen(handler, workers)
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(
                path="/ws/output/{task_id}", backends=[output.ws_url], audio_metrics=audio_metrics
            ),
        }
        gateway = await outer.enter_async_context(
            run_server(gateway_app(Settings(gateway=GatewaySettings(routes=routes))))
        )
        yield Stack(gateway, output, handler, running, gates, stops)


async def wait_workers_seen(handler: RunningServer, count: int) -> None:
    """Until the input handler has seen ``count`` workers' heartbeats (the Redis bus)."""

    async def seen() -> bool:
        available: int = (await http.get(f"{handler.http_url}/health")).json()["workers_available"]
        return available >= count

    async with httpx.AsyncClient() as http, asyncio.timeout(READY_TIMEOUT_S):
        await eventually(seen, every=0.02)


def assert_complete(heard: Heard, text: str, rate: int = SINE_RATE) -> None:
    """In order, contiguous, lengths as announced, not silent, duration plausible."""
    assert heard.start is not None and heard.start["content"] == text
    assert heard.start["sample_rate"] == rate and heard.start["format"] == "pcm_s16le"
    assert [c["chunk_id"] for c in heard.chunks] == list(range(len(heard.chunks)))
    assert [c["samples"] * 2 for c in heard.chunks] == [len(pcm) for pcm in heard.pcm]
    assert heard.end is not None and heard.end["type"] == "audio_complete", heard.end
    assert heard.end["chunks"] == len(heard.chunks) and heard.end["cancelled"] is False
    assert heard.close_code == 1000
    samples = np.frombuffer(heard.audio, dtype="<i2")
    assert np.abs(samples).max() > 1000, "silent audio"
    assert heard.end["duration_ms"] == pytest.approx(len(samples) * 1000 / rate, abs=0.1)
    assert any(c["level"] > 0.05 for c in heard.chunks)


def sine_duration_ms(text: str) -> float:
    return len(text.replace(" ", "")) * MS_PER_CHAR  # a lower bound: spaces may be split off


# --- tests ---------------------------------------------------------------------------------


async def test_speak_streams_the_sine_voice_frames_in_order_through_the_gateway(
    bus: BusSettings,
) -> None:
    text = "Hello everyone! Welcome back to the stream."
    async with stack(bus) as s, frontend(s.url) as (ws, assigned):
        task_id = await speak(ws, text)
        heard = await listen(s.url, task_id)
    assert task_id == assigned
    assert_complete(heard, text)
    assert heard.start is not None and heard.start["engine"] == "sine"
    assert heard.end is not None
    assert sine_duration_ms(text) <= heard.end["duration_ms"] <= len(text) * MS_PER_CHAR + 100
    full_frame = SINE_RATE * FRAME_MS // 1000
    assert all(c["samples"] <= full_frame for c in heard.chunks)


async def test_the_compat_chunked_upload_is_spoken(bus: BusSettings) -> None:
    text = "Chunked upload, the way the original frontends send it."
    data = text.encode()
    async with stack(bus) as s, frontend(s.url) as (ws, assigned):
        for chunk_id, start in enumerate(range(0, len(data), 10)):
            await ws.send(
                json.dumps({"type": "text", "chunk_id": chunk_id, "action": "data_chunk"})
            )
            await ws.send(data[start : start + 10])
        reply = await ask(ws, {"action": "upload_complete"})
        assert reply["action"] == "upload_processed" and reply["task_id"] == assigned
        heard = await listen(s.url, assigned)
    assert_complete(heard, text)


async def test_several_speaks_on_one_connection_each_stream_their_own_audio(
    bus: BusSettings,
) -> None:
    lines = ["First line.", "The second line is longer than the first.", "Third."]
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        task_ids = [await speak(ws, line) for line in lines]
        heard = await asyncio.gather(*(listen(s.url, task_id) for task_id in task_ids))
    assert len(set(task_ids)) == 3
    for line, got in zip(lines, heard, strict=True):
        assert_complete(got, line)
    assert len(heard[1].audio) > len(heard[0].audio) > len(heard[2].audio)


async def test_early_late_and_parallel_subscribers_get_identical_bytes(bus: BusSettings) -> None:
    text = "Everyone listening gets the very same bytes."
    async with stack(bus) as s, frontend(s.url) as (ws, assigned):
        early = asyncio.create_task(listen(s.url, assigned))  # before the task exists
        await wait_connected(s, assigned)
        await speak(ws, text)
        twins = await asyncio.gather(listen(s.url, assigned), listen(s.url, assigned))
        late = await listen(s.url, assigned)  # after it finished
        resumed = await listen(s.url, assigned, query="?from_chunk=3")
        heard = [await early, *twins, late]
    for got in heard:
        assert_complete(got, text)
        assert got.audio == heard[0].audio
    assert [c["chunk_id"] for c in resumed.chunks][0] == 3
    assert resumed.audio == b"".join(heard[0].pcm[3:])


async def wait_connected(s: Stack, task_id: str) -> None:
    async def connected() -> bool:
        return bool((await http.get(f"{s.output.http_url}/status/{task_id}")).json()["connected"])

    async with httpx.AsyncClient() as http, asyncio.timeout(10):
        await eventually(connected)


async def test_cancel_mid_stream_ends_the_stream_with_cancelled_true(bus: BusSettings) -> None:
    text = f"This starts at once. Then it would {HOLD} for a long while. And never ends."
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        task_id = await speak(ws, text)
        heard = Heard()
        listening = asyncio.create_task(listen(s.url, task_id, heard))
        await asyncio.wait_for(heard.first_frame.wait(), 10)
        reply = await ask(ws, {"type": "cancel", "task_id": task_id})
        assert reply == {"type": "system", "action": "cancelled", "task_id": task_id}
        await listening
        # The connection keeps working after the cancel.
        assert_complete(await listen(s.url, await speak(ws, "Next one.")), "Next one.")
    assert heard.end is not None and heard.end["type"] == "audio_complete"
    assert heard.end["cancelled"] is True and heard.close_code == 1000
    assert heard.chunks and heard.end["chunks"] == len(heard.chunks)


async def test_unknown_and_invalid_task_ids_are_refused_through_the_gateway(
    bus: BusSettings,
) -> None:
    async with stack(bus) as s:
        invalid = await listen(s.url, "not-a-task")
        unknown = await listen(s.url, str(uuid.uuid4()))
    assert invalid.end is not None and invalid.end["code"] == "invalid_task_id"
    assert invalid.close_code == 4400
    assert unknown.end is not None and unknown.end["code"] == "task_not_found"
    assert unknown.close_code == 4404


async def test_bad_inputs_are_answered_while_the_connection_keeps_working(bus: BusSettings) -> None:
    bad: list[tuple[Any, str]] = [
        ("{not json", "invalid_json"),
        ({"type": "sing"}, "unknown_type"),
        ({"type": "speak"}, "missing_text"),
        ({"type": "speak", "text": " "}, "empty_text"),
        ({"type": "speak", "text": "x" * 201}, "text_too_long"),
        ({"type": "audio"}, "audio_not_supported"),
        ({"type": "speak", "text": "Hi", "voice": "nobody"}, "unknown_voice"),
        (b"\xff\xfe", "unexpected_binary"),
    ]
    async with stack(bus, max_text_chars=200) as s, frontend(s.url) as (ws, _):
        for message, code in bad:
            reply = await ask(ws, message)
            assert reply["type"] == "error" and reply["code"] == code, reply
        await ws.send(json.dumps({"type": "text", "chunk_id": 0, "action": "data_chunk"}))
        await ws.send(b"\xc3")
        assert (await ask(ws, {"action": "upload_complete"}))["code"] == "invalid_utf8"
        reply = await ask(ws, {"type": "text", "chunk_id": 5, "action": "data_chunk"})
        assert "Chunk ID mismatch: expected 0, got 5" in reply["message"]
        await ws.send(b"ignored with its chunk")
        text = "Still speaking after all that."
        assert_complete(await listen(s.url, await speak(ws, text)), text)


async def test_no_worker_answers_tts_unavailable_without_hanging(bus: BusSettings) -> None:
    async with stack(bus, workers=0, dead_workers=2, worker_timeout_s=1.0) as s:
        async with frontend(s.url) as (ws, assigned):
            reply = await ask(ws, {"type": "speak", "text": "Is anyone there?"})
            assert reply["type"] == "error" and reply["code"] == "tts_unavailable"
            assert reply["task_id"] == assigned
            assert (await ask(ws, {"type": "dance"}))["code"] == "unknown_type"


async def test_a_worker_stopped_mid_task_fails_its_stream_and_other_tasks_continue(
    bus: BusSettings,
) -> None:
    doomed_text = f"Doomed line starts. It will {HOLD} until the worker is gone. End."
    kept_text = f"Kept line starts. It will {HOLD} until released. Then it ends."
    async with stack(bus, workers=2) as s, frontend(s.url) as (ws, _):
        doomed_id = await speak(ws, doomed_text)
        kept_id = await speak(ws, kept_text)
        doomed, kept = Heard(), Heard()
        doomed_task = asyncio.create_task(listen(s.url, doomed_id, doomed))
        kept_task = asyncio.create_task(listen(s.url, kept_id, kept))
        await asyncio.wait_for(doomed.first_frame.wait(), 10)
        await asyncio.wait_for(kept.first_frame.wait(), 10)
        victim = next(
            i for i, gate in enumerate(s.gates) if any("Doomed" in p for p in gate.pieces)
        )
        survivor = 1 - victim
        assert any("Kept" in p for p in s.gates[survivor].pieces), "both tasks on one worker"
        stopping = asyncio.create_task(s.stop_worker(victim))
        await doomed_task
        s.gates[victim].release()
        await stopping
        assert doomed.end is not None and doomed.end["type"] == "error"
        assert doomed.end["code"] in ("worker_stopped", "worker_lost"), doomed.end
        assert doomed.close_code == 1011
        s.gates[survivor].release()
        assert_complete(await kept_task, kept_text)
        # New work goes to the surviving worker.
        text = "After the loss."
        assert_complete(await listen(s.url, await speak(ws, text)), text)


async def test_aivtuber_say_speaks_through_the_stack(bus: BusSettings) -> None:
    text = "Hello from the command line."
    async with stack(bus) as s:
        result = await say(text, s.url, voice="sine")
    assert result.chunks > 0 and result.sample_rate == SINE_RATE
    assert 0 < result.first_audio_s <= result.total_s
    assert result.duration_s * 1000 >= sine_duration_ms(text)


@pytest.mark.piper
async def test_the_piper_voice_speaks_three_sentences_through_the_stack(bus: BusSettings) -> None:
    text = "Hi chat! Welcome back to the stream. Today we are trying something new."
    async with stack(bus, piper=True) as s, frontend(s.url) as (ws, _):
        task_id = await speak(ws, text, voice="joe")
        heard = await listen(s.url, task_id)
    assert heard.start is not None and heard.start["engine"] == "piper"
    assert_complete(heard, text, rate=22050)
    assert heard.end is not None
    # About 12-20 characters a second of speech: a plausible length for the text.
    assert len(text) / 25 <= heard.end["duration_ms"] / 1000 <= len(text) / 5


async def test_internal_endpoints_are_not_reachable_through_the_gateway(bus: BusSettings) -> None:
    async with stack(bus) as s:
        try:
            async with connect(f"{s.url}/internal/ingest") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4404
        except InvalidStatus as exc:  # refused at the handshake instead: also unreachable
            assert exc.response.status_code in (403, 404)
        async with httpx.AsyncClient() as http:
            for path in (f"/status/{uuid.uuid4()}", "/v1/tasks"):
                assert (await http.get(s.gateway.http_url + path)).status_code == 404


async def test_a_finished_task_is_served_as_wav_with_its_status_on_the_output_handler(
    bus: BusSettings,
) -> None:
    text = "A line to keep."
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        task_id = await speak(ws, text)
        heard = await listen(s.url, task_id)
        async with httpx.AsyncClient(base_url=s.output.http_url) as http:
            status = (await http.get(f"/status/{task_id}")).json()
            wav = await http.get(f"/tasks/{task_id}/audio.wav")
            unknown = await http.get(f"/tasks/{uuid.uuid4()}/audio.wav")
    assert_complete(heard, text)
    assert status["status"] == "completed" and status["chunks"] == len(heard.chunks)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert wav.content[44:] == heard.audio
    assert unknown.status_code == 404 and unknown.json()["code"] == "task_not_found"


async def test_a_finished_task_frees_its_place_under_max_active_tasks(bus: BusSettings) -> None:
    """On both buses the input handler learns of a task's end (the worker's events socket;
    the task stream's end entry on Redis), so the tenant may speak again."""
    async with stack(bus, limits=LimitsSettings(max_active_tasks=1)) as s:
        async with frontend(s.url) as (ws, _):
            first = await ask(ws, {"type": "speak", "text": f"{HOLD} the only place."})
            assert first["action"] == "upload_processed", first
            refused = await ask(ws, {"type": "speak", "text": "Not yet."})
            assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
            s.gates[0].release()
            heard = await asyncio.wait_for(listen(s.url, first["task_id"]), READY_TIMEOUT_S)
            assert heard.end is not None and heard.end["type"] == "audio_complete"
            async with asyncio.timeout(READY_TIMEOUT_S):
                while (reply := await ask(ws, {"type": "speak", "text": "Now."}))[
                    "type"
                ] == "error":
                    assert reply["code"] == "rate_limited", reply
                    await asyncio.sleep(min(reply["retry_after_ms"], 50) / 1000)
            assert reply["action"] == "upload_processed", reply
