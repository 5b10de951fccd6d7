"""``aivtuber-say``: speak a line through the gateway exactly as a frontend does, save a WAV.

    aivtuber-say "Hello everyone!" -o hello.wav [--url ws://127.0.0.1:8000] [--voice joe]
        [--api-key KEY]   (default $GATEWAY_API_KEY: the tenant key, sent as a Bearer)

Steps (the frontend protocol): connect ``/ws/input``, read ``task_id_assigned``, send
``speak``, read ``upload_processed``, connect ``/ws/output/{task_id}``, collect
``audio_start``, each ``audio_chunk`` and its binary PCM, ``audio_complete``. Prints the time
to first audio (speak sent -> first PCM byte received) and the real-time factor (speak sent
-> last PCM byte, over the audio's duration: below 1 means faster than real time).

Exit status: 0 spoken, 1 the server refused or failed (its error code and message are
printed), 2 bad usage.

Exceptions::

    SayError        the server answered with an error, or the stream broke the protocol
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .audio import wav_bytes
from .config import ENV_API_KEY

__all__ = ["SayError", "SayResult", "main", "say"]

DEFAULT_URL = "ws://127.0.0.1:8000"


class SayError(Exception):
    """The server refused or failed; ``code`` is its snake_case error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SayResult:
    task_id: str
    sample_rate: int
    voice: str
    engine: str
    chunks: int
    pcm: bytes
    first_audio_s: float  # speak sent -> first PCM byte
    total_s: float  # speak sent -> last PCM byte
    cancelled: bool = False
    levels: list[float] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate if self.sample_rate else 0.0

    @property
    def real_time_factor(self) -> float:
        return self.total_s / self.duration_s if self.duration_s else float("inf")

    def wav(self) -> bytes:
        return wav_bytes(self.sample_rate, self.pcm)


async def say(
    text: str,
    url: str = DEFAULT_URL,
    voice: str | None = None,
    timeout_s: float = 120.0,
    api_key: str | None = None,
) -> SayResult:
    """Speak ``text`` through the gateway at ``url`` (as the tenant of ``api_key``, if
    given); raises SayError, OSError, TimeoutError."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with asyncio.timeout(timeout_s):
        async with connect(
            f"{base}/ws/input", compression=None, max_size=None, additional_headers=headers
        ) as conn:
            hello = await _json(conn)
            if hello.get("action") != "task_id_assigned":
                raise SayError("protocol_error", f"expected task_id_assigned, got {hello}")
            speak: dict[str, Any] = {"type": "speak", "text": text}
            if voice:
                speak["voice"] = voice
            started = time.perf_counter()
            await conn.send(json.dumps(speak))
            reply = await _json(conn)
            if reply.get("type") == "error":
                raise SayError(reply.get("code", "error"), reply.get("message", str(reply)))
            if reply.get("action") != "upload_processed":
                raise SayError("protocol_error", f"expected upload_processed, got {reply}")
            return await _listen(base, reply["task_id"], started, headers)


async def _listen(base: str, task_id: str, started: float, headers: dict[str, str]) -> SayResult:
    async with connect(
        f"{base}/ws/output/{task_id}", compression=None, max_size=None, additional_headers=headers
    ) as conn:
        start = await _json(conn)
        if start.get("type") == "error":
            raise SayError(start.get("code", "error"), start.get("error", str(start)))
        result = SayResult(
            task_id=task_id,
            sample_rate=int(start["sample_rate"]),
            voice=str(start.get("voice")),
            engine=str(start.get("engine")),
            chunks=0,
            pcm=b"",
            first_audio_s=0.0,
            total_s=0.0,
        )
        pieces: list[bytes] = []
        while True:
            message = await _json(conn)
            kind = message.get("type")
            if kind == "audio_chunk":
                if message.get("chunk_id") != result.chunks:
                    raise SayError(
                        "protocol_error",
                        f"chunk {message.get('chunk_id')} arrived when {result.chunks} was due",
                    )
                pcm = await conn.recv()
                if not isinstance(pcm, bytes):
                    raise SayError("protocol_error", "audio_chunk was not followed by binary PCM")
                now = time.perf_counter()
                if not pieces:
                    result.first_audio_s = now - started
                result.total_s = now - started
                pieces.append(pcm)
                result.levels.append(float(message.get("level", 0.0)))
                result.chunks += 1
            elif kind == "audio_complete":
                result.cancelled = bool(message.get("cancelled"))
                result.pcm = b"".join(pieces)
                return result
            elif kind == "error":
                raise SayError(message.get("code", "error"), message.get("error", str(message)))
            else:
                raise SayError("protocol_error", f"unexpected message {message}")


async def _json(conn: ClientConnection) -> dict[str, Any]:
    try:
        message = await conn.recv()
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        raise SayError(
            "connection_closed", f"the server closed the connection ({code} {reason})"
        ) from exc
    if isinstance(message, bytes):
        raise SayError("protocol_error", "expected a JSON message, got binary data")
    data = json.loads(message)
    if not isinstance(data, dict):
        raise SayError("protocol_error", f"expected a JSON object, got {message[:80]}")
    return data


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aivtuber-say",
        description="Speak TEXT through the AIVtuber gateway like a frontend and save a WAV.",
    )
    parser.add_argument("text", help='what to say ("-" reads it from standard input)')
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("speech.wav"), help="WAV file to write"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL})")
    parser.add_argument("--voice", help="voice id (default: the worker's default voice)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="give up after this many seconds"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(ENV_API_KEY),
        help=f"tenant key, sent as a Bearer (default: ${ENV_API_KEY}, like the gateway)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        result = asyncio.run(say(text, args.url, args.voice, args.timeout, args.api_key))
    except SayError as exc:
        print(f"aivtuber-say: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"aivtuber-say: no answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        print(f"aivtuber-say: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 1
    args.output.write_bytes(result.wav())
    print(
        f"wrote {args.output}: {result.duration_s:.2f} s of audio, {result.chunks} chunks, "
        f"{result.sample_rate} Hz, voice {result.voice} ({result.engine})"
        + (" [cancelled]" if result.cancelled else "")
    )
    print(f"time to first audio: {result.first_audio_s * 1000:.0f} ms (speak sent -> first PCM)")
    print(f"real-time factor:    {result.real_time_factor:.3f} (speak sent -> last PCM / duration)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
