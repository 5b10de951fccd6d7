"""The frontend protocol: every JSON message on /ws/input and /ws/output/{task_id}.

Client -> input handler messages are parsed once at the edge with :data:`ClientMessageAdapter`
and dispatched with ``match``; server messages are built as models and sent with
:func:`dump`. Field names and the odd legacy keys (``status``, ``content``, ``audio_present``,
``error``) are what existing frontends read: do not rename them.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .visemes import Shape

__all__ = [
    "Append",
    "AudioChunk",
    "AudioComplete",
    "AudioStart",
    "Cancel",
    "Cancelled",
    "ClientMessage",
    "ClientMessageAdapter",
    "End",
    "ErrorMessage",
    "ListVoices",
    "OutputError",
    "Speak",
    "TaskIdAssigned",
    "TextChunk",
    "UploadComplete",
    "UploadProcessed",
    "VoiceInfo",
    "VoiceList",
    "dump",
    "is_canonical_uuid",
    "new_task_id",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- client -> /ws/input -------------------------------------------------------------------


class Speak(_Message):
    type: Literal["speak"]
    text: str
    voice: str | None = None
    request_id: str | None = None
    # True: a streaming task. ``text`` is its first piece (may be empty); more comes with
    # :class:`Append`, and :class:`End` closes it.
    stream: bool = False


class Append(_Message):
    """More text for a streaming task, exactly as sent (pieces may split words)."""

    type: Literal["append"]
    task_id: str
    text: str
    # Speak what is buffered now, clause boundary or not.
    flush: bool = False


class End(_Message):
    """No more text for a streaming task: the rest is spoken, then ``audio_complete``."""

    type: Literal["end"]
    task_id: str


class TextChunk(_Message):
    """Metadata of the legacy chunked upload; the chunk's UTF-8 bytes follow as binary."""

    type: Literal["text"]
    action: Literal["data_chunk"] = "data_chunk"
    chunk_id: int
    voice: str | None = None
    request_id: str | None = None


class AudioUpload(_Message):
    """Accepted only to be refused with a clear message: no speech recogniser is configured."""

    type: Literal["audio"]


class Cancel(_Message):
    type: Literal["cancel"]
    task_id: str


class UploadComplete(_Message):
    """``{"action": "upload_complete"}``; legacy clients send it without a ``type``."""

    type: Literal["upload_complete"] = "upload_complete"
    action: Literal["upload_complete"] = "upload_complete"
    voice: str | None = None
    request_id: str | None = None


class ListVoices(_Message):
    """``{"type":"list_voices"}``: answered with :class:`VoiceList`."""

    type: Literal["list_voices"]
    request_id: str | None = None


ClientMessage = Annotated[
    Speak | Append | End | TextChunk | AudioUpload | Cancel | UploadComplete | ListVoices,
    Field(discriminator="type"),
]
ClientMessageAdapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


# --- input handler -> client ---------------------------------------------------------------


class TaskIdAssigned(_Message):
    type: Literal["system"] = "system"
    action: Literal["task_id_assigned"] = "task_id_assigned"
    task_id: str


class UploadProcessed(_Message):
    type: Literal["system"] = "system"
    action: Literal["upload_processed"] = "upload_processed"
    status: Literal["queued"] = "queued"
    task_id: str
    request_id: str | None = None
    # The id this connection's next utterance will get: a frontend may open its output
    # socket while that speak is on the way instead of after this answer (one round trip).
    next_task_id: str | None = None


class Cancelled(_Message):
    type: Literal["system"] = "system"
    action: Literal["cancelled"] = "cancelled"
    task_id: str


class VoiceInfo(_Message):
    """One voice a ``speak`` may name; ``ready`` once some worker has it loaded."""

    name: str
    language: str  # BCP 47: en-US, ja, ...; "und" when the engine cannot tell
    sample_rate: int
    engine: str
    ready: bool


class VoiceList(_Message):
    type: Literal["system"] = "system"
    action: Literal["voices"] = "voices"
    voices: list[VoiceInfo]
    request_id: str | None = None


class ErrorMessage(_Message):
    """Any problem on /ws/input: the connection stays open unless said otherwise."""

    type: Literal["error"] = "error"
    code: str
    message: str
    task_id: str | None = None
    request_id: str | None = None
    # rate_limited: when to try again (milliseconds).
    retry_after_ms: int | None = None


# --- output handler -> client --------------------------------------------------------------


class AudioStart(_Message):
    type: Literal["audio_start"] = "audio_start"
    status: Literal["success"] = "success"
    task_id: str
    content: str
    audio_present: bool = True
    format: Literal["pcm_s16le"] = "pcm_s16le"
    sample_rate: int
    channels: Literal[1] = 1
    voice: str
    engine: str


class AudioChunk(_Message):
    """Announces the binary message that follows it: one frame of PCM."""

    type: Literal["audio_chunk"] = "audio_chunk"
    task_id: str
    chunk_id: int
    total_chunks: int | None = None
    samples: int
    level: float
    # Mouth shapes starting in this frame, [offset_ms, shape]; absent when the engine has no
    # phoneme timing (see aivtuber_common.visemes).
    visemes: list[tuple[int, Shape]] | None = None
    # Words starting in this frame, [offset_ms, duration_ms, word], spelled as sent; absent
    # when the engine has no timing.
    words: list[tuple[int, int, str]] | None = None


class AudioComplete(_Message):
    type: Literal["audio_complete"] = "audio_complete"
    task_id: str
    chunks: int
    duration_ms: float
    cancelled: bool = False
    # Why a task ended other than by its text running out: "idle" (a stream that got no
    # append/end for input_handler.stream_idle_timeout_s). Absent otherwise.
    reason: Literal["idle"] | None = None


class OutputError(_Message):
    type: Literal["error"] = "error"
    status: Literal["error"] = "error"
    task_id: str | None
    code: str
    error: str


def dump(message: BaseModel) -> str:
    """JSON text of a server message, without the optional keys left unset."""
    if isinstance(message, AudioChunk):
        absent = {name for name in _TRACKS if getattr(message, name) is None}
        return message.model_dump_json(exclude=absent or None)
    return message.model_dump_json(exclude_none=_drops_none(message))


# The optional tracks of an audio_chunk: left out when absent (older clients never see them).
_TRACKS = ("visemes", "words")


def _drops_none(message: BaseModel) -> bool:
    # total_chunks and task_id are sent as null on purpose (frontends read the key).
    return not isinstance(message, AudioChunk | OutputError)


def new_task_id() -> str:
    return str(uuid.uuid4())


def is_canonical_uuid(value: str) -> bool:
    """True for the lower-case hyphenated form that :func:`new_task_id` makes."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
