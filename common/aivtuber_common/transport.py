"""The seams between the handlers and the workers, so that a broker-based transport (Redis
Streams, for many workers and handler replicas on several machines) can replace the direct
HTTP/WebSocket one without touching the handlers.

Direct implementations: ``aivtuber_input.workers`` (TaskSubmitter over HTTP),
``aivtuber_tts.sink`` (FrameSink over the ingest WebSocket) and ``aivtuber_output.store``
(FrameSource, fed by the ingest endpoint). Redis ones: ``aivtuber_input.redis_submitter``,
``aivtuber_tts.redis_bus``, ``aivtuber_output.redis_source``. Each service picks its
implementation in one place, its ``bus`` module (``open_bus``); everything else sees only
these interfaces.

Exceptions (named for what they mean on any bus)::

    TransportError          code "tts_unavailable"
     ├── TaskNotFound       "task_not_found": unknown, or another tenant's
     ├── TaskEnded          "task_ended": more text for a stream that ended
     ├── SubmitRefused      the worker's own code (unknown_voice, bad_request, ...)
     ├── SinkLost           "not_ready": a task's frames can no longer reach the output side
     ├── BusUnavailable     (aivtuber_common.bus) Redis cannot be reached
     └── IngestError        (aivtuber_output.store) a worker sent what does not fit
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from .codes import ErrorCode
from .health import InputHealth, OutputHealth
from .internal import SubmitAccepted, SubmitTask, TaskEnd, TaskOpen, TaskText
from .protocol import VoiceInfo
from .visemes import Track
from .words import WordTrack

__all__ = [
    "FrameEvent",
    "FrameSink",
    "FrameSource",
    "FrameTotals",
    "SinkLost",
    "SubmitRefused",
    "TaskAudio",
    "TaskEnded",
    "TaskNotFound",
    "TaskStatus",
    "TaskSubmitter",
    "TransportError",
]


class TransportError(Exception):
    """Base of the transport errors; ``code`` is the snake_case code the client sees."""

    code: str = ErrorCode.TTS_UNAVAILABLE


class TaskNotFound(TransportError):
    """No such task for this tenant: unknown, or another tenant's (never said which)."""

    code = ErrorCode.TASK_NOT_FOUND


class TaskEnded(TransportError):
    """A streaming task that has already ended was sent more text (or another end)."""

    code = ErrorCode.TASK_ENDED


class SubmitRefused(TransportError):
    """A worker refused the task itself (``unknown_voice``, ``bad_request``, ...): every
    worker would say the same, so it goes straight back to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SinkLost(TransportError):
    """A task's frames can no longer reach the output side: the connection it was announced
    on dropped, the bus is unreachable, or the task was ended elsewhere (cancelled, claimed
    by another worker). The worker stops the task; a submit is refused ``not_ready``."""

    code = ErrorCode.NOT_READY


class TaskSubmitter(Protocol):
    """Input side: submit a task to some worker; cancel it wherever it runs."""

    @property
    def ready(self) -> bool:
        """A worker can take a task now (warm, and the bus reachable)."""
        ...

    @property
    def default_voice(self) -> str | None:
        """The voice a task without one gets (the workers' default), once known."""
        ...

    def health(self) -> InputHealth:
        """This submitter's part of ``/health`` (workers, readiness, the bus)."""
        ...

    async def submit(self, task: SubmitTask) -> SubmitAccepted:
        """Raises TransportError (code tts_unavailable, unknown_voice, ...) when refused."""
        ...

    async def cancel(self, task_id: str, tenant: str | None = None) -> bool:
        """True when a worker had the task and stopped it. Raises TaskNotFound when the
        task is unknown or belongs to another tenant than ``tenant`` (None: anonymous)."""
        ...

    async def text(self, message: TaskText) -> None:
        """More text, a flush or the end of a streaming task, to the worker that runs it.
        Raises TaskNotFound (unknown, or another tenant's) or TaskEnded."""
        ...

    async def voices(self) -> list[VoiceInfo]:
        """Every voice the workers offer, merged by name. Raises TransportError when no
        worker answers."""
        ...


class FrameSink(Protocol):
    """Worker side: announce a task, append its frames in order, end it. Each raises
    :class:`SinkLost` when the task's frames can no longer reach the output side."""

    @property
    def is_connected(self) -> bool:
        """Whether frames can reach the output side now (else the worker is not ready)."""
        ...

    async def open(self, task: TaskOpen) -> None: ...

    async def append(
        self,
        task_id: str,
        chunk_id: int,
        level: float,
        pcm: bytes,
        visemes: Track | None = None,
        words: WordTrack | None = None,
    ) -> None: ...

    async def end(self, end: TaskEnd) -> None: ...


# A frame: (chunk_id, level, pcm, visemes, words); the tracks are None when the engine has no
# timing.
FrameEvent = TaskOpen | tuple[int, float, bytes, Track | None, WordTrack | None] | TaskEnd


class FrameTotals(Protocol):
    """A task's totals so far: ``audio_complete`` reports the whole task's."""

    @property
    def chunks(self) -> int: ...

    @property
    def samples(self) -> int: ...


@dataclass(frozen=True)
class TaskAudio:
    """A task's whole stream as announced so far (``GET /tasks/{id}/audio.wav``)."""

    opened: TaskOpen
    end: TaskEnd | None  # None: still being spoken
    pcm: bytes


class TaskStatus(BaseModel):
    """``GET /status/{task_id}`` of the output handler (200 even when not found)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    status: str  # waiting | streaming | completed | cancelled | failed | not_found
    connected: bool  # a subscriber listens (on this replica)
    chunks: int
    code: str | None = None  # set when failed


class FrameSource(Protocol):
    """Output side: read a task's events from a chunk position, waiting for what is to come."""

    def read(
        self, task_id: str, from_chunk: int = 0, tenant: str | None = None
    ) -> AsyncGenerator[FrameEvent, None]:
        """A task of another tenant than ``tenant`` is read exactly like an unknown one."""
        ...

    def snapshot(self, task_id: str) -> FrameTotals | None:
        """The task's totals as known here (None when unknown or forgotten)."""
        ...

    async def audio(self, task_id: str) -> TaskAudio | None:
        """None when no worker announced the task. Raises TransportError when the bus
        cannot be reached."""
        ...

    async def status(self, task_id: str) -> TaskStatus:
        """Raises TransportError when the bus cannot be reached."""
        ...

    def health(self) -> OutputHealth:
        """This source's part of ``/health`` (``status`` not ok: the app answers 503)."""
        ...
