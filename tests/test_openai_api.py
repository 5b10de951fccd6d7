"""``POST /v1/audio/speech`` through the gateway, driven by the official ``openai`` client (and
httpx for the refusals), against the whole stack on ephemeral ports: gateway, input handler,
output handler and a TTS worker speaking the sine voice (held at ``HOLD`` on demand, so a
request is reliably mid-synthesis with no sleeps)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog

from aivtuber_common.config import (
    AuthSettings,
    GatewaySettings,
    InputHandlerSettings,
    LimitsSettings,
    OutputHandlerSettings,
    RouteSettings,
    Settings,
    SineVoice,
    TenantSettings,
    TtsWorkerSettings,
    VoiceSettings,
)
from aivtuber_gateway import create_app as gateway_app
from aivtuber_input import create_app as input_app
from aivtuber_output import create_app as output_app
from aivtuber_tts import create_app as worker_app
from aivtuber_tts.engines import Engine, SineEngine
from aivtuber_tts.errors import EngineError
from aivtuber_tts.splitting import split_text
from tests.support import RunningServer, run_server
from tests.test_end_to_end import HOLD, Gate, HeldSine, wait_ready

RATE = 16000
MS_PER_CHAR = 30.0
KEY = "tenant-key-0123456789"
TEXT = "Hi chat! Welcome back to the stream, it is so good to see you all again."
WAIT_S = 15.0


FAIL = "FAIL"


class FailingSine(HeldSine):
    """The test voice, held at HOLD, and failing at any piece with FAIL in it."""

    def synthesize_piece(self, piece: str) -> bytes:
        if FAIL in piece:
            raise EngineError("The sine engine failed: on purpose")
        return super().synthesize_piece(piece)


def failing_factory(gate: Gate) -> Any:
    def factory(voice_id: str, voice: VoiceSettings, *args: Any, **kwargs: Any) -> Engine:
        return FailingSine(gate, voice.sample_rate, voice.frequency_hz, voice.ms_per_char)

    return factory


class RecordingTransport(httpx.AsyncBaseTransport):
    """The input handler's way to the workers, with every task submission noted."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.submissions: list[dict[str, Any]] = []
        self.cancelled = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/tasks":
            self.submissions.append(json.loads(await request.aread()))
        if request.method == "DELETE" and request.url.path.startswith("/v1/tasks/"):
            self.cancelled.set()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Stack:
    gateway: RunningServer
    gate: Gate
    workers: RecordingTransport

    @property
    def submissions(self) -> list[dict[str, Any]]:
        return self.workers.submissions

    @property
    def base_url(self) -> str:
        return f"{self.gateway.http_url}/v1"

    def client(self, api_key: str = "not-needed") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0)


@contextlib.asynccontextmanager
async def stack(
    auth: AuthSettings | None = None, limits: LimitsSettings | None = None, **input_options: Any
) -> AsyncIterator[Stack]:
    gate = Gate()
    transport = RecordingTransport()
    async with contextlib.AsyncExitStack() as outer:
        output = await outer.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings(task_wait_s=5))))
        )
        voice = SineVoice(sample_rate=RATE, ms_per_char=MS_PER_CHAR)
        worker_settings = TtsWorkerSettings(
            output_handler_url=output.ws_url,
            voices={"sine": voice},
            default_voice="sine",
            max_concurrent=2,
        )
        worker = await outer.enter_async_context(
            run_server(
                worker_app(
                    Settings(tts_worker=worker_settings), engine_factory=failing_factory(gate)
                )
            )
        )
        outer.callback(gate.release)  # never leave an engine thread waiting
        await wait_ready(worker)
        handler_settings = InputHandlerSettings(
            workers=[worker.http_url], output_handler_url=output.ws_url, **input_options
        )
        handler = await outer.enter_async_context(
            run_server(
                input_app(
                    Settings(input_handler=handler_settings, limits=limits or LimitsSettings()),
                    transport=transport,
                )
            )
        )
        routes = {
            "input": RouteSettings(path="/ws/input", backends=[handler.ws_url]),
            "output": RouteSettings(path="/ws/output/{task_id}", backends=[output.ws_url]),
            "openai": RouteSettings(
                path="/v1/{endpoint:path}", backends=[handler.http_url], protocol="http"
            ),
        }
        settings = Settings(gateway=GatewaySettings(routes=routes), auth=auth or AuthSettings())
        gateway = await outer.enter_async_context(run_server(gateway_app(settings)))
        yield Stack(gateway, gate, transport)


def sine_pcm(text: str) -> bytes:
    """What the worker's sine voice makes of ``text``: the frames joined are exactly this."""
    engine = SineEngine(RATE, 220.0, MS_PER_CHAR)
    return b"".join(engine.synthesize_piece(piece) for piece in split_text(text))


def speech_body(**fields: Any) -> dict[str, Any]:
    return {"model": "tts-1", "input": TEXT, "voice": "sine", "response_format": "pcm"} | fields


# --- the official client ------------------------------------------------------------------


async def test_openai_client_streams_pcm_at_the_voices_rate_named_in_a_header() -> None:
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="sine",
            input=TEXT,
            response_format="pcm",
            extra_headers={"x-aivtuber-tenant": "claimed-by-the-client"},  # never believed
        ) as response:
            audio = b"".join([chunk async for chunk in response.iter_bytes()])
            headers = response.headers
    assert headers["x-sample-rate"] == str(RATE) and headers["content-type"] == "audio/pcm"
    assert audio == sine_pcm(TEXT)
    assert s.submissions[-1]["voice"] == "sine" and s.submissions[-1]["tenant"] is None


async def test_openai_client_streams_a_wav_with_an_open_ended_header() -> None:
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="anything-goes", voice="alloy", input=TEXT, response_format="wav"
        ) as response:
            body = b"".join([chunk async for chunk in response.iter_bytes()])
            content_type = response.headers["content-type"]
    assert content_type == "audio/wav"
    assert body[:4] == b"RIFF" and body[4:8] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        frames = wav.readframes(wav.getnframes())
    assert frames == sine_pcm(TEXT)
    assert s.submissions[-1]["voice"] is None  # "alloy": the worker's default voice


async def test_openai_client_sse_form_sends_base64_deltas_then_done() -> None:
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="sine",
            input=TEXT,
            response_format="pcm",
            stream_format="sse",
        ) as response:
            content_type = response.headers["content-type"]
            lines = [line async for line in response.iter_lines()]
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line]
    assert content_type.startswith("text/event-stream")
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) > 2, "one delta per frame, not the whole audio at once"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == sine_pcm(TEXT)
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["input_tokens"] == len(TEXT)


async def test_mp3_is_encoded_as_it_streams() -> None:
    async with stack() as s, s.client() as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="sine", input=TEXT
        ) as response:  # mp3: OpenAI's default format
            body = b"".join([chunk async for chunk in response.iter_bytes()])
            content_type = response.headers["content-type"]
    assert content_type == "audio/mpeg"
    assert body[0] == 0xFF and body[1] & 0xE6 == 0xE2  # MPEG frame sync, Layer III
    seconds = len(sine_pcm(TEXT)) / 2 / RATE
    assert len(body) == pytest.approx(seconds * 64000 / 8, rel=0.25)  # 64 kbit/s


async def test_the_first_audio_arrives_while_the_rest_of_the_text_is_still_being_made() -> None:
    text = "Hello there, everyone. " + " ".join(["This part waits for the test."] * 3) + f" {HOLD}."
    duration_s = len(sine_pcm(text)) / 2 / RATE
    async with stack() as s, s.client() as client:
        sent = time.perf_counter()
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="sine", input=text, response_format="pcm"
        ) as response:
            chunks = response.iter_bytes()
            first = await anext(chunks)
            first_byte_s = time.perf_counter() - sent
            held = not s.gate.event.is_set()  # the HOLD sentence is not synthesised yet
            s.gate.release()
            rest = b"".join([chunk async for chunk in chunks])
    assert held and first
    assert first_byte_s < duration_s  # streamed: not after the whole text's audio
    assert first + rest == sine_pcm(text)


async def test_the_documented_three_line_example_writes_an_mp3(tmp_path: Path) -> None:
    out = tmp_path / "hi.mp3"

    def example(base_url: str) -> None:  # docs/openai.md, with our address and voice
        client = openai.OpenAI(base_url=base_url, api_key="your-api-key")
        client.audio.speech.create(model="tts-1", voice="sine", input="Hi chat!").write_to_file(out)

    async with stack() as s:
        await asyncio.to_thread(example, s.base_url)
    mp3 = out.read_bytes()
    assert mp3[0] == 0xFF and mp3[1] & 0xE6 == 0xE2  # MPEG frame sync, Layer III


async def test_a_client_that_hangs_up_mid_stream_cancels_the_task_on_its_worker() -> None:
    text = f"Hello there, everyone. {HOLD}, this part is never heard."
    async with stack() as s, s.client() as client:
        with structlog.testing.capture_logs() as logs:
            async with client.audio.speech.with_streaming_response.create(
                model="tts-1",
                voice="sine",
                input=text,
                response_format="pcm",
                extra_query={"token": "s3cret"},
            ) as response:
                assert await anext(response.iter_bytes())
            # the client has closed the response while the worker is held at HOLD
            async with asyncio.timeout(WAIT_S):
                await s.workers.cancelled.wait()
        s.gate.release()
    requests = [entry for entry in logs if entry["event"] == "http_request"]
    assert requests and requests[0]["path"] == "/v1/audio/speech"
    assert "s3cret" not in repr(logs)  # no query string in any log line


async def test_a_failure_after_the_first_audio_ends_sse_with_an_error_and_cuts_raw_audio() -> None:
    text = f"Hello there, everyone. {FAIL} here."
    async with stack() as s, httpx.AsyncClient(base_url=s.base_url) as http:
        sse = await http.post("/audio/speech", json=speech_body(input=text, stream_format="sse"))
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/audio/speech", json=speech_body(input=text))
    events = [json.loads(line.removeprefix("data: ")) for line in sse.text.split("\n\n") if line]
    assert sse.status_code == 200 and events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "engine_error"
    assert "on purpose" in events[-1]["error"]["message"]


async def test_a_failure_before_any_audio_is_an_http_error() -> None:
    async with stack() as s, httpx.AsyncClient(base_url=s.base_url) as http:
        response = await http.post("/audio/speech", json=speech_body(input=f"{FAIL} at once."))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "engine_error"
    assert response.json()["error"]["type"] == "server_error"


async def test_models_and_voices_can_be_discovered() -> None:
    async with stack() as s, s.client() as client:
        models = [model.id async for model in client.models.list()]
        model = await client.models.retrieve("tts-1")
        async with httpx.AsyncClient(base_url=s.base_url) as http:
            voices = (await http.get("/audio/voices")).json()
            missing = await http.get("/models/nope")
    assert models == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"] and model.id == "tts-1"
    assert voices["voices"] == ["sine"] and voices["default"] == "sine"
    assert voices["aliases"]["alloy"] == "sine"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_an_unknown_voice_is_a_bad_request_error_in_the_client() -> None:
    async with stack() as s, s.client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unknown_voice"
    assert error["param"] == "voice" and "nobody" in error["message"]


# --- refusals, as curl would see them ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"voice": "nobody"}, "unknown_voice", "voice"),
        ({"input": "   "}, "empty_text", "input"),
        ({"input": "x" * 201}, "text_too_long", "input"),
        ({"response_format": "ogg"}, "invalid_value", "response_format"),
        ({"speed": 1.5}, "unsupported_speed", "speed"),
        ({"speed": 9}, "invalid_value", "speed"),
        ({"model": None}, "invalid_value", "model"),
    ],
)
async def test_bad_requests_are_400_in_openais_error_shape(
    fields: dict[str, Any], code: str, param: str
) -> None:
    async with stack(max_text_chars=200) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        response = await http.post("/audio/speech", json=speech_body(**fields))
        still_serving = await http.post("/audio/speech", json=speech_body(input="Still here."))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]
    assert still_serving.status_code == 200 and still_serving.content


async def test_a_body_that_is_not_json_or_lacks_a_field_is_400() -> None:
    async with stack() as s, httpx.AsyncClient(base_url=s.base_url) as http:
        broken = await http.post("/audio/speech", content=b"{nope")
        missing = await http.post("/audio/speech", json={"model": "tts-1", "voice": "sine"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert missing.status_code == 400
    assert missing.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "input",
        "code": "missing_required_parameter",
    }


async def test_the_websocket_paths_per_tenant_limits_apply_to_the_speech_api() -> None:
    async with stack(limits=LimitsSettings(speaks_per_minute=1)) as s:
        async with httpx.AsyncClient(base_url=s.base_url) as http:
            first = await http.post("/audio/speech", json=speech_body())
            second = await http.post("/audio/speech", json=speech_body())
    assert first.status_code == 200 and first.content == sine_pcm(TEXT)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "rate_limited"
    assert second.json()["error"]["type"] == "rate_limit_error"


# The edge's credential check (aivtuber_gateway.auth.Edge) on the http route,
# through HttpForwarder.authenticate.
async def test_no_key_when_keys_are_on_is_401_and_a_bearer_key_speaks_as_its_tenant() -> None:
    auth = AuthSettings(tenants={"studio": TenantSettings(key=KEY)})
    async with stack(auth=auth) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        no_key = await http.post("/audio/speech", json=speech_body())
        wrong = await http.post(
            "/audio/speech", json=speech_body(), headers={"authorization": "Bearer wrong"}
        )
        spoofed = await http.post(
            "/audio/speech",
            json=speech_body(),
            headers={"authorization": f"Bearer {KEY}", "x-aivtuber-tenant": "someone-else"},
        )
        async with s.client(api_key=KEY) as client:
            audio = await client.audio.speech.create(
                model="tts-1", voice="sine", input=TEXT, response_format="pcm"
            )
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "missing_api_key"
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert spoofed.status_code == 200
    assert audio.content == sine_pcm(TEXT)
    assert [sub["tenant"] for sub in s.submissions] == ["studio", "studio"]
