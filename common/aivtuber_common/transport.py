"""The seams between the handlers and the workers, so that a broker-based transport (Redis
Streams, for many workers and handler replicas on several machines) can replace the direct
HTTP/WebSocket one without touching the handlers.

Direct implementations: ``aivtuber_input.workers`` (TaskSubmitter over HTTP),
``aivtuber_tts.sink`` (FrameSink over the ingest WebSocket) and ``aivtuber_output.store``
(FrameSource, fed by the ingest endpoint).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .internal import SubmitAccepted, SubmitTask, TaskEnd, TaskOpen, TaskText
from .protocol import VoiceInfo
from .visemes import Track
from .words import WordTrack

__all__ = [
    "FrameEvent",
    "FrameSink",
    "FrameSource",
    "TaskEnded",
    "TaskNotFound",
    "TaskSubmitter",
    "TransportError",
]


class TransportError(Exception):
    """Base of the transport errors; ``code`` is the snake_case code the client sees."""

    code = "tts_unavailable"


class TaskNotFound(TransportError):
    """No such task for this tenant: unknown, or another tenant's (never said which)."""

    code = "task_not_found"


class TaskEnded(TransportError):
    """A streaming task that has already ended was sent more text (or another end)."""

    code = "task_ended"


class TaskSubmitter(Protocol):
    """Input side: submit a task to some worker; cancel it wherever it runs."""

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
    """Worker side: announce a task, append its frames in order, end it."""

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


class FrameSource(Protocol):
    """Output side: read a task's events from a chunk position, waiting for what is to come."""

    def read(
        self, task_id: str, from_chunk: int = 0, tenant: str | None = None
    ) -> AsyncIterator[FrameEvent]:
        """A task of another tenant than ``tenant`` is read exactly like an unknown one."""
        ...
