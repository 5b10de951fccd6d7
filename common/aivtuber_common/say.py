"""``aivtuber-say``: speak a line through the gateway exactly as a frontend does, save a WAV.

    aivtuber-say "Hello everyone!" -o hello.wav [--url ws://127.0.0.1:8000] [--voice joe]
        [--api-key KEY]   (default $GATEWAY_API_KEY: the tenant key, sent as a Bearer)
    llm | aivtuber-say --stream -o reply.wav [--url ...] [--voice heart]

Steps (the frontend protocol): connect ``/ws/input``, read ``task_id_assigned``, send
``speak``, read ``upload_processed``, connect ``/ws/output/{task_id}``, collect
``audio_start``, each ``audio_chunk`` and its binary PCM, ``audio_complete``. Prints the time
to first audio (speak sent -> first PCM byte received) and the real-time factor (speak sent
-> last PCM byte, over the audio's duration: below 1 means faster than real time).

With ``--stream`` the text is read from standard input as it arrives (pipe an LLM's output
into it) and sent as a streaming task: ``speak`` with ``"stream": true``, each read as an
``append``, ``end`` at the end of input. It prints the time from the first byte read to the
first audible sample (a sample above -40 dBFS, as heard by a player that starts with the
first frame and plays in real time).

Exit status: 0 spoken, 1 the server refused or failed (its error code and message are
printed), 2 bad usage.

Exceptions::

    SayError        the server answered with an error, or the stream broke the protocol
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .audio import wav_bytes
from .config import ENV_API_KEY

__all__ = ["SayError", "SayResult", "main", "read_pieces", "say", "say_stream"]

DEFAULT_URL = "ws://127.0.0.1:8000"
AUDIBLE = 328  # -40 dBFS of int16 full scale: the first sample above it is heard
READ_BYTES = 4096


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
    first_heard_at: float | None = None  # time.perf_counter() the first audible sample played
    # --stream: first byte read -> first audible sample heard (None: silent, or not a stream)
    first_audible_s: float | None = None

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
        async with _input(base, headers) as conn:
            started = time.perf_counter()
            task_id = await _speak(conn, {"type": "speak", "text": text}, voice)
            return await _listen(base, task_id, started, headers)


async def say_stream(
    pieces: AsyncIterator[str],
    url: str = DEFAULT_URL,
    voice: str | None = None,
    timeout_s: float = 120.0,
    api_key: str | None = None,
) -> SayResult:
    """Speak text as it comes out of ``pieces`` as one streaming task; the clock starts
    when the first piece comes. Raises SayError, OSError, TimeoutError."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with asyncio.timeout(timeout_s):
        async with _input(base, headers) as conn:
            started = time.perf_counter()
            task_id = await _speak(conn, {"type": "speak", "text": "", "stream": True}, voice)
            clock = _FirstPiece()
            listener = asyncio.create_task(_listen(base, task_id, started, headers))
            sender = asyncio.create_task(_send_pieces(conn, task_id, pieces, clock))
            errors = asyncio.create_task(_json(conn))  # taken pieces get no answer
            try:
                done, _ = await asyncio.wait(
                    {listener, errors}, return_when=asyncio.FIRST_COMPLETED
                )
                if errors in done:
                    answer = errors.result()
                    raise SayError(answer.get("code", "error"), answer.get("message", str(answer)))
                result = listener.result()
            finally:
                for task in (listener, sender, errors):
                    task.cancel()
                await asyncio.gather(listener, sender, errors, return_exceptions=True)
            if clock.at is not None:
                heard = result.first_heard_at
                result.first_audible_s = None if heard is None else heard - clock.at
            return result


@contextlib.asynccontextmanager
async def _input(base: str, headers: dict[str, str]) -> AsyncIterator[ClientConnection]:
    """A connection to ``/ws/input`` that has said ``task_id_assigned``."""
    async with connect(
        f"{base}/ws/input", compression=None, max_size=None, additional_headers=headers
    ) as conn:
        hello = await _json(conn)
        if hello.get("action") != "task_id_assigned":
            raise SayError("protocol_error", f"expected task_id_assigned, got {hello}")
        yield conn


async def _speak(conn: ClientConnection, speak: dict[str, Any], voice: str | None) -> str:
    """Send ``speak`` (with ``voice``, if given); the task id once it was taken."""
    if voice:
        speak["voice"] = voice
    await conn.send(json.dumps(speak))
    reply = await _json(conn)
    if reply.get("type") == "error":
        raise SayError(reply.get("code", "error"), reply.get("message", str(reply)))
    if reply.get("action") != "upload_processed":
        raise SayError("protocol_error", f"expected upload_processed, got {reply}")
    return str(reply["task_id"])


class _FirstPiece:
    """When the first text came (time.perf_counter())."""

    at: float | None = None


async def _send_pieces(
    conn: ClientConnection, task_id: str, pieces: AsyncIterator[str], clock: _FirstPiece
) -> None:
    async for piece in pieces:
        if clock.at is None and piece:
            clock.at = time.perf_counter()
        if piece:
            await conn.send(json.dumps({"type": "append", "task_id": task_id, "text": piece}))
    await conn.send(json.dumps({"type": "end", "task_id": task_id}))


async def read_pieces(fd: int) -> AsyncIterator[str]:
    """The text of file descriptor ``fd`` as it arrives (each read as it returns; UTF-8
    split between reads is joined again), until end of input."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = await asyncio.to_thread(os.read, fd, READ_BYTES)
        text = decoder.decode(data, final=not data)
        if text:
            yield text
        if not data:
            return


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
        playing_from = 0.0  # when the first frame arrived: the player starts then
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
                    playing_from = now
                result.total_s = now - started
                if result.first_heard_at is None and (at := _first_audible(pcm)) is not None:
                    # Played from the first frame on in real time, or late on arrival.
                    before = sum(len(piece) for piece in pieces) // 2 / result.sample_rate
                    starts = max(now, playing_from + before)
                    result.first_heard_at = starts + at / result.sample_rate
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


def _first_audible(pcm: bytes) -> int | None:
    """The index of the first sample above -40 dBFS in s16le ``pcm``."""
    for index in range(0, len(pcm) - 1, 2):
        if abs(int.from_bytes(pcm[index : index + 2], "little", signed=True)) > AUDIBLE:
            return index // 2
    return None


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
    parser.add_argument("text", nargs="?", help='what to say ("-" reads it from standard input)')
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read standard input as it arrives and speak it as a streaming task",
    )
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
    if args.stream == (args.text is not None):
        print("aivtuber-say: give TEXT (or -), or --stream to read stdin", file=sys.stderr)
        return 2
    try:
        if args.stream:
            pieces = read_pieces(sys.stdin.fileno())
            run = say_stream(pieces, args.url, args.voice, args.timeout, args.api_key)
        else:
            text = sys.stdin.read() if args.text == "-" else args.text
            run = say(text, args.url, args.voice, args.timeout, args.api_key)
        result = asyncio.run(run)
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
    if result.first_audible_s is not None:
        print(f"first byte read -> first audible sample: {result.first_audible_s * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
