"""Reading a task's audio from the output handler, as a frontend does, for the HTTP speech API.

:func:`subscribe` opens ``{output_handler_url}/ws/output/{task_id}`` with the caller's
identity headers (the output handler may check that the tenant owns the task) and yields the
frontend protocol as typed events: :class:`Started` (``audio_start``), one :class:`Pcm` per
binary frame, then :class:`Finished` (``audio_complete``) or :class:`Failed` (``error``, or the
connection lost). The ``audio_chunk`` announcements carry nothing the HTTP answer needs.

Exceptions::

    OutputUnavailable   the output handler cannot be reached (code tts_unavailable)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import structlog
from pydantic import Field, TypeAdapter, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from aivtuber_common.codes import ErrorCode
from aivtuber_common.protocol import AudioChunk, AudioComplete, AudioStart, OutputError

__all__ = ["Failed", "Finished", "OutputEvent", "OutputUnavailable", "Pcm", "Started", "subscribe"]

log = structlog.get_logger("aivtuber_input.output_client")

# Audio frames are a few KiB; a larger message from our own output handler is a bug.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class OutputUnavailable(Exception):
    code = ErrorCode.TTS_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Started:
    sample_rate: int
    voice: str
    engine: str


@dataclass(frozen=True, slots=True)
class Pcm:
    data: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    chunks: int
    duration_ms: float
    cancelled: bool


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str


OutputEvent = Started | Pcm | Finished | Failed


@contextlib.asynccontextmanager
async def subscribe(
    output_url: str,
    task_id: str,
    headers: list[tuple[str, str]],
    open_timeout_s: float,
) -> AsyncIterator[Callable[[], Awaitable[AsyncIterator[OutputEvent]]]]:
    """Start connecting at once, in the background; the caller awaits what it yields for the
    task's events (raises OutputUnavailable) when it needs them. Always closed on exit.

    Connecting while the task is being submitted takes the handshake off the time to first
    audio; the output handler keeps every frame from chunk 0, so none can be missed."""
    connecting = asyncio.create_task(_connect(output_url, task_id, headers, open_timeout_s))
    reading: list[AsyncGenerator[OutputEvent, None]] = []

    async def events() -> AsyncIterator[OutputEvent]:
        reading.append(_events(await connecting))
        return reading[-1]

    try:
        yield events
    finally:
        for generator in reading:
            await generator.aclose()
        connecting.cancel()
        # wait, not await: its outcome is read below; a cancel of this caller propagates.
        await asyncio.wait({connecting})
        if not connecting.cancelled():
            if (error := connecting.exception()) is None:
                await connecting.result().close()
            elif not isinstance(error, OutputUnavailable):
                raise error


async def _connect(
    output_url: str, task_id: str, headers: list[tuple[str, str]], open_timeout_s: float
) -> ClientConnection:
    try:
        return await connect(
            f"{output_url}/ws/output/{task_id}",
            additional_headers=headers,
            open_timeout=open_timeout_s,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            proxy=None,
            user_agent_header=None,
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("output_handler_unreachable", error=str(exc) or type(exc).__name__)
        raise OutputUnavailable(
            "The audio of the task cannot be read right now; try again in a moment."
        ) from exc


async def _events(websocket: ClientConnection) -> AsyncGenerator[OutputEvent, None]:
    try:
        async for message in websocket:
            if isinstance(message, bytes):
                yield Pcm(message)
                continue
            event = _parse(message)
            if event is not None:
                yield event
                if isinstance(event, Finished | Failed):
                    return
    except ConnectionClosed:
        pass
    yield Failed(ErrorCode.WORKER_LOST, "The audio stream ended before the task did.")


def _parse(text: str) -> OutputEvent | None:
    try:
        message = _OutputMessage.validate_json(text)
    except ValidationError:
        log.error("output_message_unexpected", size=len(text))
        return Failed(
            ErrorCode.INTERNAL_ERROR, "The audio stream sent a message it should not have."
        )
    match message:
        case AudioStart():
            return Started(message.sample_rate, message.voice, message.engine)
        case AudioComplete():
            return Finished(message.chunks, message.duration_ms, message.cancelled)
        case OutputError():
            return Failed(message.code, message.error)
    return None  # audio_chunk: announces the binary message that follows


_OutputMessage: TypeAdapter[AudioStart | AudioChunk | AudioComplete | OutputError] = TypeAdapter(
    Annotated[AudioStart | AudioChunk | AudioComplete | OutputError, Field(discriminator="type")]
)
