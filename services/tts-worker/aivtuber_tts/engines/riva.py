"""``riva``: NVIDIA Riva over gRPC, streamed (``SynthesizeOnline``) through nvidia-riva-client.

The client package's own pieces do the work: :class:`riva.client.Auth` builds the channel
(asyncio, TLS with an optional root certificate, the API key as ``authorization: Bearer``
metadata) and ``riva.client.proto.riva_tts_pb2_grpc.RivaSpeechSynthesisStub`` the call. The
text goes in whole (Riva splits it into sentences itself and streams each as it is made);
every audio message (LINEAR_PCM: s16le mono at ``sample_rate``) goes on at once.

At start the engine asks the server for its synthesis config (``GetRivaSynthesisConfig``):
a server that cannot be reached fails the voice with one sentence naming it, instead of
failing the first viewer's line.

Failures map onto the worker's codes: ``engine_unavailable`` (UNAVAILABLE: cannot connect),
``engine_timeout`` (no audio for ``timeout_s``), ``engine_error`` (anything else: a refused
key, an unknown voice, a server error, with Riva's own words).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from typing import Any

import grpc
import structlog

from ..errors import EngineError, EngineTimeout, EngineUnavailable
from .base import RunPiece

__all__ = ["RivaEngine"]

log = structlog.get_logger("aivtuber_tts.engines.riva")


class RivaEngine:
    name = "riva"
    device = "remote"
    load_s: float | None = None

    def __init__(
        self,
        server: str,
        *,
        voice_name: str | None,
        language_code: str,
        sample_rate: int,
        use_ssl: bool = False,
        ssl_cert: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.server = server
        self.voice_name = voice_name
        self.language_code = language_code
        self.language = language_code  # BCP 47, as list_voices reports it
        self.sample_rate = sample_rate
        self.use_ssl = use_ssl
        self.ssl_cert = ssl_cert
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._auth: Any = None
        self._stub: Any = None
        self._pb: Any = None

    async def start(self, executor: Executor | None = None, threads: int = 1) -> None:
        try:
            import riva.client
            from riva.client.proto import riva_audio_pb2, riva_tts_pb2, riva_tts_pb2_grpc
        except ImportError as exc:
            raise EngineError(
                "the riva engine needs nvidia-riva-client: the 'riva' extra (see docs/riva.md)"
            ) from exc
        loop = asyncio.get_running_loop()
        started = loop.time()
        metadata = [["authorization", f"Bearer {self.api_key}"]] if self.api_key else None
        try:
            self._auth = riva.client.Auth(
                ssl_root_cert=self.ssl_cert,
                use_ssl=self.use_ssl,
                uri=self.server,
                metadata_args=metadata,
                use_aio=True,
            )
        except OSError as exc:  # the certificate file
            raise EngineError(f"the riva voice's ssl_cert cannot be read: {exc}") from exc
        self._stub = riva_tts_pb2_grpc.RivaSpeechSynthesisStub(self._auth.channel)
        self._pb = (riva_tts_pb2, riva_audio_pb2)
        try:
            await self._stub.GetRivaSynthesisConfig(
                riva_tts_pb2.RivaSynthesisConfigRequest(),
                metadata=self._auth.get_auth_metadata(),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            await self.aclose()
            raise self._error(exc, at_start=True) from exc
        self.load_s = loop.time() - started
        log.info("engine_ready", engine=self.name, server=self.server, load_s=round(self.load_s, 3))

    async def aclose(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            await auth.channel.close()

    async def stream(self, text: str, run: RunPiece) -> AsyncGenerator[bytes, None]:
        if self._stub is None:
            raise EngineUnavailable(f"the Riva server at {self.server} is not connected")
        tts, audio = self._pb
        request = tts.SynthesizeSpeechRequest(
            text=text,
            language_code=self.language_code,
            encoding=audio.AudioEncoding.LINEAR_PCM,
            sample_rate_hz=self.sample_rate,
        )
        if self.voice_name:
            request.voice_name = self.voice_name
        call = self._stub.SynthesizeOnline(iter([request]), metadata=self._auth.get_auth_metadata())
        try:
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        response = await call.read()
                except TimeoutError as exc:
                    raise EngineTimeout(
                        f"the Riva server at {self.server} sent no audio for {self.timeout_s:g} s"
                    ) from exc
                if response is grpc.aio.EOF:
                    return
                if response.audio:
                    yield bytes(response.audio)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()  # no-op when it finished; stops the server's work when we stop early

    def _error(self, exc: grpc.aio.AioRpcError, at_start: bool = False) -> EngineError:
        code, details = exc.code(), (exc.details() or "").strip()
        where = f"the Riva server at {self.server}"
        match code:
            case grpc.StatusCode.UNAVAILABLE:
                return EngineUnavailable(f"{where} cannot be reached: {details or code.name}")
            case grpc.StatusCode.DEADLINE_EXCEEDED:
                return EngineTimeout(f"{where} did not answer within {self.timeout_s:g} s")
            case grpc.StatusCode.UNAUTHENTICATED | grpc.StatusCode.PERMISSION_DENIED:
                return EngineError(f"{where} refused the api_key: {details or code.name}")
        step = "its synthesis config" if at_start else "the synthesis"
        return EngineError(f"{where} failed {step}: {code.name}: {details}")
