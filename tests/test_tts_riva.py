"""The ``riva`` engine against a fake Riva server: a real gRPC server (grpc.aio on a free
port) built from the servicer and messages nvidia-riva-client ships, streaming the sine
voice's audio one clause at a time, so the client's own channel, stub and call run."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from riva.client.proto import riva_audio_pb2, riva_tts_pb2, riva_tts_pb2_grpc

from aivtuber_common.config import VoiceAdapter, VoiceSettings
from aivtuber_tts.engines import SineEngine, build_engine
from aivtuber_tts.engines.riva import RivaEngine
from aivtuber_tts.errors import EngineError, EngineTimeout, EngineUnavailable
from aivtuber_tts.splitting import split_text
from tests.support import free_port
from tests.tts_fakes import WAIT_S, running_recorder, running_worker, sine_settings

RATE = 22050
KEY = "riva-key-0123456789"
TEXT = "Hello chat, welcome back. Today we speak through Riva!"


class FakeRiva(riva_tts_pb2_grpc.RivaSpeechSynthesisServicer):
    """Speaks with the sine engine, one message per clause; records what it was asked."""

    def __init__(self) -> None:
        self.sine = SineEngine(RATE, 220.0, 20.0)
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.hold = asyncio.Event()  # "hold" in the text: wait for this before the rest
        self.hold.set()
        self.cancelled = asyncio.Event()

    def _check_key(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.metadata.append(metadata)
        return metadata

    async def GetRivaSynthesisConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._check_key(context)
        return riva_tts_pb2.RivaSynthesisConfigResponse()

    async def SynthesizeOnline(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        metadata = self._check_key(context)
        if metadata.get("authorization") != f"Bearer {KEY}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid api key")
        async for request in request_iterator:
            self.requests.append(request)
            if request.voice_name == "nobody":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "voice nobody not found")
            context.add_done_callback(lambda _: self.cancelled.set())
            for index, piece in enumerate(split_text(request.text)):
                if index == 1 and "hold" in request.text:
                    await self.hold.wait()
                audio = self.sine.synthesize_piece(piece)
                yield riva_tts_pb2.SynthesizeSpeechResponse(audio=audio)


@contextlib.asynccontextmanager
async def fake_riva(tls: trustme.CA | None = None) -> AsyncIterator[tuple[FakeRiva, str]]:
    server = grpc.aio.server()
    servicer = FakeRiva()
    riva_tts_pb2_grpc.add_RivaSpeechSynthesisServicer_to_server(servicer, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        cert = tls.issue_cert("localhost")
        key, chain = cert.private_key_pem.bytes(), b"".join(p.bytes() for p in cert.cert_chain_pems)
        credentials = grpc.ssl_server_credentials([(key, chain)])
        port = server.add_secure_port("localhost:0", credentials)
    await server.start()
    try:
        yield servicer, f"{'localhost' if tls else '127.0.0.1'}:{port}"
    finally:
        servicer.hold.set()
        await server.stop(grace=None)


def riva_voice(server: str, **overrides: Any) -> VoiceSettings:
    settings: dict[str, Any] = {
        "engine": "riva",
        "server": server,
        "api_key": KEY,
        "remote_voice": "English-US.Female-1",
        "language_code": "en-US",
        "sample_rate": RATE,
        "timeout_s": 5.0,
    }
    return VoiceAdapter.validate_python(settings | overrides)


async def no_slots(work: Any, size: int) -> Any:
    raise AssertionError("a remote engine needs no engine slot")


@contextlib.asynccontextmanager
async def started(voice: VoiceSettings) -> AsyncIterator[RivaEngine]:
    engine = build_engine("narrator", voice)
    assert isinstance(engine, RivaEngine)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


async def test_riva_streams_each_clause_as_the_server_sends_it_with_voice_and_key() -> None:
    async with fake_riva() as (server, address), started(riva_voice(address)) as engine:
        server.hold.clear()
        pieces = engine.stream(TEXT + " hold", no_slots)
        async with asyncio.timeout(WAIT_S):
            first = await anext(pieces)  # while the server still holds the rest back
        server.hold.set()
        rest = [pcm async for pcm in pieces]
    clauses = split_text(TEXT + " hold")
    assert first == server.sine.synthesize_piece(clauses[0])
    assert b"".join(rest) == b"".join(server.sine.synthesize_piece(p) for p in clauses[1:])
    request = server.requests[0]
    assert request.text == TEXT + " hold" and request.voice_name == "English-US.Female-1"
    assert request.language_code == "en-US" and request.sample_rate_hz == RATE
    assert request.encoding == riva_audio_pb2.AudioEncoding.LINEAR_PCM
    assert all(m["authorization"] == f"Bearer {KEY}" for m in server.metadata)
    assert engine.name == "riva" and engine.device == "remote" and engine.sample_rate == RATE


async def test_tls_with_the_configured_root_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "riva-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with fake_riva(tls=ca) as (server, address):
        voice = riva_voice(address, use_ssl=True, ssl_cert=str(ca_file))
        async with started(voice) as engine:
            audio = b"".join([pcm async for pcm in engine.stream(TEXT, no_slots)])
        untrusted = build_engine("narrator", riva_voice(address, use_ssl=True, timeout_s=2.0))
        with pytest.raises(EngineUnavailable, match="cannot be reached"):
            await untrusted.start()  # the system roots do not know the test's CA
    assert audio == b"".join(server.sine.synthesize_piece(p) for p in split_text(TEXT))


async def test_a_riva_server_that_cannot_be_reached_fails_at_start_naming_it() -> None:
    address = f"127.0.0.1:{free_port()}"
    engine = build_engine("narrator", riva_voice(address, timeout_s=2.0))
    with pytest.raises(EngineUnavailable, match=f"the Riva server at {address} cannot be reached"):
        await engine.start()


async def test_a_wrong_key_and_an_unknown_voice_are_clear_engine_errors() -> None:
    async with fake_riva() as (_, address):
        async with started(riva_voice(address, api_key="wrong-key-0000000")) as engine:
            with pytest.raises(EngineError, match="refused the api_key: invalid api key"):
                _ = [pcm async for pcm in engine.stream(TEXT, no_slots)]
        async with started(riva_voice(address, remote_voice="nobody")) as engine:
            with pytest.raises(EngineError, match="INVALID_ARGUMENT: voice nobody not found"):
                _ = [pcm async for pcm in engine.stream(TEXT, no_slots)]


async def test_a_riva_server_that_stops_sending_is_engine_timeout_and_the_call_is_cancelled() -> (
    None
):
    async with fake_riva() as (server, address):
        # Long enough for the connect and the first clause to beat it on a loaded machine.
        async with started(riva_voice(address, timeout_s=2.0)) as engine:
            server.hold.clear()  # never released: the second clause never comes
            pieces = engine.stream(TEXT + " hold", no_slots)
            assert await anext(pieces)
            with pytest.raises(EngineTimeout, match="sent no audio for 2 s"):
                await anext(pieces)
            async with asyncio.timeout(WAIT_S):
                await server.cancelled.wait()


async def test_a_riva_voice_speaks_through_the_worker_and_a_dead_server_fails_the_voice() -> None:
    async with fake_riva() as (server, address), running_recorder() as recorder:
        voices = {
            "riva": riva_voice(address),
            "gone": riva_voice(f"127.0.0.1:{free_port()}", timeout_s=2.0),
        }
        settings = sine_settings(recorder.url, voices=voices, default_voice="riva")
        async with running_worker(settings, wait_ready=False) as worker:
            health = await worker.wait_health(lambda body: body["status"] != "starting")
            task_id = str(uuid.uuid4())
            assert (await worker.submit(TEXT, voice="riva", task_id=task_id)).status_code == 202
            task = await recorder.ended(task_id)
    states = {voice["id"]: voice for voice in health["voices"]}
    assert states["riva"]["state"] == "ready" and states["riva"]["engine"] == "riva"
    assert states["gone"]["state"] == "failed"
    assert "cannot be reached" in states["gone"]["error"]
    assert task.end is not None and task.end.status == "completed"
    assert task.open.sample_rate == RATE and task.open.engine == "riva"
    expected = b"".join(server.sine.synthesize_piece(p) for p in split_text(TEXT))
    assert b"".join(frame.pcm for frame in task.frames) == expected
