"""``http``: a remote TTS server (a GPU box elsewhere), streamed on as its body arrives.

The worker POSTs ``{"text": ..., "voice": ...}`` to ``url`` with ``X-Api-Key: <api_key>``
or ``Authorization: Bearer <api_key>`` and accepts either a WAV body (its header is parsed
incrementally: sample rate, then straight to the data) or raw PCM s16le mono at the voice's
``sample_rate``. Every received piece goes on at once; nothing waits for the whole body.

Failures map to codes a user can act on: ``engine_unavailable`` (cannot connect),
``engine_timeout`` (no answer or no more bytes within ``timeout_s``), ``engine_error`` (a bad
status, or audio in a format the worker cannot pass on).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Executor
from typing import Literal

import httpx
import structlog

from ..errors import EngineError, EngineTimeout, EngineUnavailable
from .base import RunPiece
from .wavstream import WavFormatError, WavStreamParser

__all__ = ["HttpEngine"]

log = structlog.get_logger("aivtuber_tts.engines.http")

_ERROR_BODY_CHARS = 200


class HttpEngine:
    name = "http"
    device = "remote"
    language = "und"  # the remote server's business; a voice's "language" key says it
    load_s: float | None = 0.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        voice: str,
        sample_rate: int,
        api_key: str | None = None,
        auth: Literal["x-api-key", "bearer"] = "x-api-key",
        timeout_s: float = 30.0,
        response_format: Literal["auto", "wav", "pcm"] = "auto",
    ) -> None:
        self.client = client
        self.url = url
        self.voice = voice
        self.sample_rate = sample_rate
        self.timeout = httpx.Timeout(timeout_s)
        self.timeout_s = timeout_s
        self.response_format = response_format
        self.headers: dict[str, str] = {}
        if api_key:
            if auth == "bearer":
                self.headers["Authorization"] = f"Bearer {api_key}"
            else:
                self.headers["X-Api-Key"] = api_key

    async def start(self, executor: Executor | None = None, threads: int = 1) -> None:
        # The remote server may come up after the worker; it is tried per task instead.
        return None

    async def aclose(self) -> None:
        return None  # the client belongs to the app's lifespan

    async def stream(self, text: str, run: RunPiece) -> AsyncGenerator[bytes, None]:
        try:
            async with self.client.stream(
                "POST",
                self.url,
                json={"text": text, "voice": self.voice},
                headers=self.headers,
                timeout=self.timeout,
            ) as response:
                if response.status_code != 200:
                    raise EngineError(await self._status_message(response))
                async for pcm in self._pcm(response):
                    yield pcm
        except httpx.TimeoutException as exc:
            raise EngineTimeout(
                f"the remote TTS at {self.url} did not answer within {self.timeout_s:g} s"
            ) from exc
        except httpx.ConnectError as exc:
            raise EngineUnavailable(
                f"the remote TTS at {self.url} cannot be reached: {exc or type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(
                f"the remote TTS at {self.url} failed: {exc or type(exc).__name__}"
            ) from exc

    async def _pcm(self, response: httpx.Response) -> AsyncIterator[bytes]:
        mode = self.response_format
        if mode == "auto" and _is_wav_type(response.headers.get("content-type", "")):
            mode = "wav"
        parser: WavStreamParser | None = WavStreamParser() if mode == "wav" else None
        head = b""  # auto without a WAV content type: sniff for "RIFF" in the first bytes
        async for data in response.aiter_bytes():
            if not data:
                continue
            if mode == "auto":
                head += data
                if len(head) < 4:
                    continue
                mode = "wav" if head.startswith(b"RIFF") else "pcm"
                parser = WavStreamParser() if mode == "wav" else None
                data, head = head, b""
            if parser is None:
                yield data
                continue
            try:
                pcm = parser.feed(data)
            except WavFormatError as exc:
                raise EngineError(
                    f"the remote TTS at {self.url} sent unusable audio: {exc}"
                ) from exc
            if parser.format and parser.format.sample_rate != self.sample_rate:
                raise EngineError(
                    f"the remote TTS sent {parser.format.sample_rate} Hz audio but this voice "
                    f"is configured with sample_rate {self.sample_rate}; set it to match"
                )
            if pcm:
                yield pcm
        if head:
            yield head  # fewer than 4 bytes in all: raw PCM
        if parser is not None and not parser.in_data:
            raise EngineError(f"the remote TTS at {self.url} sent a WAV without audio data")

    async def _status_message(self, response: httpx.Response) -> str:
        body = b""
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= _ERROR_BODY_CHARS:
                break
        detail = body[:_ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
        reason = f"{response.status_code} {response.reason_phrase}".strip()
        suffix = f": {detail}" if detail else ""
        return f"the remote TTS at {self.url} answered {reason}{suffix}"


def _is_wav_type(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
