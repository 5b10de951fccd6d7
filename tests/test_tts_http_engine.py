"""The ``http`` engine against a small remote TTS server written for the tests (real socket)."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from aivtuber_common.audio import wav_header
from aivtuber_common.config import HttpVoice
from aivtuber_tts.engines import HttpEngine
from aivtuber_tts.engines.wavstream import WavFormatError, WavStreamParser
from aivtuber_tts.errors import EngineError, EngineTimeout, EngineUnavailable
from tests.support import eventually, free_port, run_server
from tests.tts_fakes import WAIT_S, running_recorder, running_worker, sine_settings

RATE = 22050
PIECE_1 = struct.pack("<4h", 1000, -1000, 2000, -2000) * 100
PIECE_2 = struct.pack("<2h", 3000, -3000) * 300


def streaming_wav_header(rate: int = RATE, channels: int = 1, bits: int = 16) -> bytes:
    """A header as streaming servers send it: unknown sizes, a LIST chunk before data."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * 2, bits)
    listing = b"INFOISFT" + struct.pack("<I", 3) + b"tts\x00"  # odd size: padded
    return (
        b"RIFF"
        + b"\xff\xff\xff\xff"
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"LIST"
        + struct.pack("<I", len(listing) - 1)
        + listing
        + b"data"
        + b"\xff\xff\xff\xff"
    )


class RemoteTts:
    """The fake remote server: records requests, streams on cue."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()  # a /wav body generator ended, however
        self.app = Starlette(
            routes=[
                Route(path, handler, methods=["POST"])
                for path, handler in (
                    ("/wav", self.wav),
                    ("/pcm", self.pcm),
                    ("/slow", self.slow),
                    ("/error", self.error),
                    ("/wav24k", self.wav24k),
                    ("/stereo", self.stereo),
                )
            ]
        )

    async def _note(self, request: Request) -> None:
        self.requests.append((request.url.path, await request.json(), dict(request.headers)))

    async def wav(self, request: Request) -> Response:
        await self._note(request)
        if request.headers.get("x-api-key") != "k3y":
            return PlainTextResponse("bad key", status_code=401)
        header = streaming_wav_header()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield header[:7]  # pieces that cut through the header and the samples
                yield header[7:30]
                yield header[30:] + PIECE_1[:5]
                yield PIECE_1[5:]
                await asyncio.wait_for(self.release.wait(), WAIT_S)  # hold until told
                yield PIECE_2
            finally:
                self.stream_closed.set()

        return StreamingResponse(body(), media_type="audio/wav")

    async def pcm(self, request: Request) -> Response:
        await self._note(request)
        if request.headers.get("authorization") != "Bearer k3y":
            return PlainTextResponse("bad key", status_code=401)

        async def body() -> AsyncIterator[bytes]:
            yield PIECE_1[:3]
            yield PIECE_1[3:]
            yield PIECE_2

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def slow(self, request: Request) -> Response:
        await self._note(request)
        await asyncio.wait_for(self.release.wait(), WAIT_S)
        return Response(PIECE_1, media_type="application/octet-stream")

    async def error(self, request: Request) -> Response:
        await self._note(request)
        return PlainTextResponse("GPU on fire", status_code=500)

    async def wav24k(self, request: Request) -> Response:
        return Response(wav_header(24000, len(PIECE_1)) + PIECE_1, media_type="audio/wav")

    async def stereo(self, request: Request) -> Response:
        return Response(streaming_wav_header(channels=2) + PIECE_1, media_type="audio/wav")


@pytest.fixture
async def remote() -> AsyncIterator[tuple[RemoteTts, str]]:
    server = RemoteTts()
    async with run_server(server.app) as running:
        yield server, running.http_url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def engine(client: httpx.AsyncClient, url: str, **kwargs: Any) -> HttpEngine:
    kwargs.setdefault("voice", "narrator")
    kwargs.setdefault("sample_rate", RATE)
    return HttpEngine(client, url, **kwargs)


async def no_slots(work: Any) -> Any:
    raise AssertionError("a remote engine needs no engine slot")


async def collect(tts: HttpEngine, text: str = "Hello there.") -> bytes:
    return b"".join([pcm async for pcm in tts.stream(text, no_slots)])


async def test_a_streamed_wav_goes_on_piece_by_piece_before_the_body_ends(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    server, url = remote
    tts = engine(client, f"{url}/wav", api_key="k3y")
    pieces = tts.stream("Hello there.", no_slots)
    received = b""
    async with asyncio.timeout(WAIT_S):
        while len(received) < len(PIECE_1):  # all of it while the server still holds back
            received += await anext(pieces)
    server.release.set()
    received += b"".join([pcm async for pcm in pieces])
    assert received == PIECE_1 + PIECE_2
    path, body, headers = server.requests[0]
    assert body == {"text": "Hello there.", "voice": "narrator"}
    assert headers["x-api-key"] == "k3y" and "authorization" not in headers


async def test_raw_pcm_is_passed_on_with_a_bearer_key(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    server, url = remote
    tts = engine(client, f"{url}/pcm", api_key="k3y", auth="bearer")
    assert await collect(tts) == PIECE_1 + PIECE_2
    assert server.requests[0][2]["authorization"] == "Bearer k3y"


async def test_a_wrong_key_is_a_clear_engine_error(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    _, url = remote
    with pytest.raises(EngineError) as caught:
        await collect(engine(client, f"{url}/wav", api_key="wrong"))
    assert caught.value.code == "engine_error"
    assert str(caught.value) == f"the remote TTS at {url}/wav answered 401 Unauthorized: bad key"


async def test_a_server_error_reports_status_and_body(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    _, url = remote
    with pytest.raises(EngineError, match="answered 500 Internal Server Error: GPU on fire"):
        await collect(engine(client, f"{url}/error"))


async def test_a_server_that_is_down_is_engine_unavailable(client: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/tts"
    with pytest.raises(EngineUnavailable) as caught:
        await collect(engine(client, url))
    assert caught.value.code == "engine_unavailable"
    assert str(caught.value).startswith(f"the remote TTS at {url} cannot be reached")


async def test_a_server_that_does_not_answer_in_time_is_engine_timeout(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    server, url = remote
    try:
        with pytest.raises(EngineTimeout) as caught:
            await collect(engine(client, f"{url}/slow", timeout_s=0.2))
    finally:
        server.release.set()
    assert caught.value.code == "engine_timeout"
    assert str(caught.value) == f"the remote TTS at {url}/slow did not answer within 0.2 s"


async def test_a_wav_at_another_sample_rate_is_refused_with_the_fix(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    _, url = remote
    with pytest.raises(EngineError, match="sent 24000 Hz audio .* sample_rate 22050"):
        await collect(engine(client, f"{url}/wav24k"))


async def test_stereo_wav_is_refused(
    remote: tuple[RemoteTts, str], client: httpx.AsyncClient
) -> None:
    _, url = remote
    with pytest.raises(EngineError, match="2 channels; send mono"):
        await collect(engine(client, f"{url}/stereo"))


async def test_an_http_voice_streams_through_the_worker_and_fails_clearly_when_down(
    remote: tuple[RemoteTts, str],
) -> None:
    server, url = remote
    server.release.set()
    voices = {
        "remote": HttpVoice(url=f"{url}/pcm", api_key="k3y", auth="bearer"),
        "gone": HttpVoice(url=f"http://127.0.0.1:{free_port()}/tts"),
    }
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url, voices=voices)) as worker:
            voices_listed = (await worker.http.get("/v1/voices")).json()["voices"]
            good, bad = str(uuid.uuid4()), str(uuid.uuid4())
            assert (await worker.submit("Hi.", voice="remote", task_id=good)).status_code == 202
            assert (await worker.submit("Hi.", voice="gone", task_id=bad)).status_code == 202
            ok, failed = await recorder.ended(good), await recorder.ended(bad)
    assert [(v["id"], v["engine"], v["device"]) for v in voices_listed] == [
        ("remote", "http", "remote"),
        ("gone", "http", "remote"),
    ]
    assert ok.end is not None and ok.end.status == "completed"
    assert b"".join(frame.pcm for frame in ok.frames) == PIECE_1 + PIECE_2
    assert server.requests[-1][1] == {"text": "Hi.", "voice": "remote"}
    assert failed.end is not None and failed.end.status == "failed"
    assert failed.end.code == "engine_unavailable" and not failed.frames


async def test_cancelling_an_http_task_closes_the_remote_request_at_once(
    remote: tuple[RemoteTts, str],
) -> None:
    server, url = remote
    voices = {"remote": HttpVoice(url=f"{url}/wav", api_key="k3y")}
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url, voices=voices)) as worker:
            task_id = str(uuid.uuid4())
            assert (await worker.submit("Hello.", task_id=task_id)).status_code == 202
            # PIECE_1 is 800 samples: 0 whole frames at 40 ms (882 samples); the task is
            # streaming once the server holds back, so wait for the request to be there.
            await recorder.wait_for(lambda: task_id in recorder.tasks)
            async with asyncio.timeout(WAIT_S):
                await eventually(lambda: server.requests, every=0.005)
            response = await worker.http.delete(f"/v1/tasks/{task_id}")
            task = await recorder.ended(task_id)
            async with asyncio.timeout(WAIT_S):
                await server.stream_closed.wait()
    assert response.json()["cancelled"] is True
    assert task.end is not None and task.end.status == "cancelled"
    assert not server.release.is_set()  # the body never finished: the request was dropped


def test_the_wav_reader_takes_a_body_one_byte_at_a_time() -> None:
    parser = WavStreamParser()
    data = streaming_wav_header() + PIECE_1
    out = b"".join(parser.feed(data[i : i + 1]) for i in range(len(data)))
    assert out == PIECE_1
    assert parser.format is not None and parser.format.sample_rate == RATE


def test_the_wav_reader_stops_at_a_known_data_size_and_ignores_what_follows() -> None:
    parser = WavStreamParser()
    data = wav_header(RATE, len(PIECE_1)) + PIECE_1 + b"LIST\x04\x00\x00\x00abcd"
    assert parser.feed(data[:50]) + parser.feed(data[50:]) == PIECE_1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"RIFX\x00\x00\x00\x00WAVE", "not a RIFF/WAVE"),
        (streaming_wav_header(bits=8), "not 16-bit PCM"),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "before its fmt"),
    ],
)
def test_the_wav_reader_refuses_what_it_cannot_pass_on(data: bytes, message: str) -> None:
    with pytest.raises(WavFormatError, match=message):
        WavStreamParser().feed(data)
