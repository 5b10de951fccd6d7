"""Messages between the services (never reachable through the gateway).

Input handler -> TTS worker, over HTTP::

    POST   /v1/tasks            SubmitTask        -> 202 SubmitAccepted
                                                  -> 503 WorkerRefusal(code="busy"|"not_ready")
                                                  -> 400/404 WorkerRefusal(code="unknown_voice"...)
    DELETE /v1/tasks/{task_id}  cancel            -> 200 {"task_id", "cancelled": bool}
    POST   /v1/tasks/{task_id}/text  TaskText     -> 200 {"task_id"}; more text for a
                                                     streaming task (SubmitTask.stream)
                                                  -> 404 WorkerRefusal(code="task_not_found")
                                                  -> 409 WorkerRefusal(code="task_ended")
    WS     /v1/tasks/events     JSON text messages: a TaskSnapshot first and after every
                                TASK_SNAPSHOT_INTERVAL_S without a message, a TaskEnd whenever
                                a task ends (how the input handlers count active tasks)

TTS worker -> output handler, over one reused WebSocket to ``/internal/ingest``: text frames
carry the JSON models below; each audio frame is one binary message laid out by
:class:`FrameHeader` (task id, chunk id, level) followed by the PCM bytes, so no base64 and
no extra JSON per frame. A frame with a viseme track sets :data:`TRACK_FLAG` in the chunk id
and puts the track (:func:`aivtuber_common.visemes.encode_track`) between header and PCM;
a frame with a word track sets :data:`WORDS_FLAG` and puts it
(:func:`aivtuber_common.words.encode_words`) after the viseme track, before the PCM. A frame
without tracks is byte for byte what it was before tracks existed.

``Authorization: Bearer <internal_token>`` on both when ``internal_token`` is set.
"""

from __future__ import annotations

import struct
import uuid
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .visemes import Track, decode_track, encode_track
from .words import WordTrack, decode_words, encode_words

__all__ = [
    "FrameHeader",
    "IngestFrame",
    "IngestMessage",
    "IngestMessageAdapter",
    "SubmitAccepted",
    "SubmitTask",
    "TaskCancelled",
    "TaskEnd",
    "TaskEvent",
    "TaskEventAdapter",
    "TaskOpen",
    "TaskSnapshot",
    "TaskText",
    "WorkerRefusal",
    "decode_frame",
    "encode_frame",
]

INGEST_PATH = "/internal/ingest"
TASKS_PATH = "/v1/tasks"


class _Internal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmitTask(_Internal):
    task_id: str
    text: str
    voice: str | None = None
    # Who spoke it (auth tenant name; None: anonymous). Owner checks and fair sharing.
    tenant: str | None = None
    # The client's IP address: anonymous clients share the worker fairly per address.
    client: str | None = None
    # A streaming task: ``text`` is only its first piece; TaskText messages bring the rest
    # and end it.
    stream: bool = False


class TaskText(_Internal):
    """More text for a streaming task, a flush, or its end (input handler -> worker)."""

    task_id: str
    text: str = ""
    flush: bool = False
    end: bool = False
    # Why it ends when not by the client's ``end``: "idle" (stream_idle_timeout_s).
    reason: Literal["idle"] | None = None
    tenant: str | None = None


class SubmitAccepted(_Internal):
    task_id: str
    voice: str
    queued: int  # tasks waiting ahead of this one


class TaskCancelled(_Internal):
    """The worker's answer to a cancel it could act on (``DELETE /v1/tasks/{task_id}``)."""

    task_id: str
    cancelled: bool  # False: it was not running any more


class WorkerRefusal(_Internal):
    code: str  # busy | not_ready | unknown_voice | bad_request | unauthorized
    message: str


class TaskOpen(_Internal):
    """Sent when the worker accepts a task, before synthesis, so subscribers learn of it."""

    type: Literal["task_open"] = "task_open"
    task_id: str
    text: str
    voice: str
    engine: str
    sample_rate: int
    tenant: str | None = None  # the SubmitTask's: only this tenant may subscribe or cancel
    # A streaming task: silent while it waits for text, so no frame timeout applies to it.
    stream: bool = False


class TaskEnd(_Internal):
    type: Literal["task_end"] = "task_end"
    task_id: str
    status: Literal["completed", "cancelled", "failed"]
    code: str | None = None  # set when failed: engine_error, timeout, ...
    message: str | None = None
    # A stream that ended because it went idle (TaskText.reason): passed to audio_complete.
    reason: Literal["idle"] | None = None


class TaskSnapshot(_Internal):
    """The worker's tasks now: those it holds, and the latest ones that ended."""

    type: Literal["task_snapshot"] = "task_snapshot"
    active: list[str]
    ended: list[str]


TaskEvent = Annotated[TaskSnapshot | TaskEnd, Field(discriminator="type")]
TaskEventAdapter: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)
# The events socket sends a snapshot after this long without a message: a keepalive, so a
# hung worker is noticed.
TASK_SNAPSHOT_INTERVAL_S = 2.0
TASK_EVENTS_PATH = "/v1/tasks/events"

IngestMessage = Annotated[TaskOpen | TaskEnd, Field(discriminator="type")]
IngestMessageAdapter: TypeAdapter[IngestMessage] = TypeAdapter(IngestMessage)


class FrameHeader:
    """Binary frame prefix: 16-byte task uuid, uint32 chunk id, float32 level (little-endian)."""

    STRUCT = struct.Struct("<16sIf")
    SIZE = STRUCT.size


# The chunk id's top bits: a viseme track (TRACK_FLAG), a word track (WORDS_FLAG) follows the
# header. Chunk ids stay far below them (2**30 frames of 10 ms are four months of audio).
TRACK_FLAG = 0x8000_0000
WORDS_FLAG = 0x4000_0000
_FLAGS = TRACK_FLAG | WORDS_FLAG


class IngestFrame(NamedTuple):
    task_id: str
    chunk_id: int
    level: float
    pcm: memoryview
    visemes: Track | None  # None: the engine has no phoneme timing
    words: WordTrack | None = None  # None: no word timing


def encode_frame(
    task_id: str,
    chunk_id: int,
    level: float,
    pcm: bytes,
    visemes: Track | None = None,
    words: WordTrack | None = None,
) -> bytes:
    if visemes is None and words is None:
        return FrameHeader.STRUCT.pack(uuid.UUID(task_id).bytes, chunk_id, level) + pcm
    flags = (TRACK_FLAG if visemes is not None else 0) | (WORDS_FLAG if words is not None else 0)
    header = FrameHeader.STRUCT.pack(uuid.UUID(task_id).bytes, chunk_id | flags, level)
    tracks = encode_track(visemes) if visemes is not None else b""
    if words is not None:
        tracks += encode_words(words)
    return header + tracks + pcm


def decode_frame(data: bytes) -> IngestFrame:
    """Raises ValueError on a message too short to hold its header (and tracks), or whose
    tracks are malformed."""
    if len(data) < FrameHeader.SIZE:
        raise ValueError(f"binary frame of {len(data)} bytes is shorter than its header")
    raw_id, chunk_id, level = FrameHeader.STRUCT.unpack_from(data)
    task_id = str(uuid.UUID(bytes=raw_id))
    if not chunk_id & _FLAGS:
        return IngestFrame(task_id, chunk_id, level, memoryview(data)[FrameHeader.SIZE :], None)
    at = FrameHeader.SIZE
    track: Track | None = None
    words: WordTrack | None = None
    if chunk_id & TRACK_FLAG:
        track, at = decode_track(data, at)
    if chunk_id & WORDS_FLAG:
        words, at = decode_words(data, at)
    return IngestFrame(task_id, chunk_id & ~_FLAGS, level, memoryview(data)[at:], track, words)
