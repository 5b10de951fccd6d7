"""Wire models of the services' ``/health`` bodies and of the state they report.

Produced and parsed only through these models: a new field is one edit here, checked by
mypy wherever it is read.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .protocol import VoiceInfo

MAX_VOICES = 1000  # read from a peer: a bound on what one health body can cost

__all__ = [
    "BusHealth",
    "InputBeat",
    "InputHealth",
    "OutputHealth",
    "VoiceDescription",
    "VoiceState",
    "VoiceListing",
    "WorkerHealth",
    "WorkerView",
]


class _Health(BaseModel):
    # Extra keys are kept, not refused: a newer peer may report more than this one reads.
    model_config = ConfigDict(extra="allow", frozen=True)


class BusHealth(_Health):
    """The bus as a service sees it (the ``bus`` of ``/health``; absent on the direct bus)."""

    kind: str
    url: str
    connected: bool
    error: str | None = None
    backlog: int | None = None  # tasks submitted that no worker took yet (input handler)


class OutputHealth(_Health):
    """The output handler's ``GET /health`` (503 when ``status`` is not ``ok``)."""

    status: Literal["ok", "unavailable"] = "ok"
    service: Literal["output_handler"] = "output_handler"
    uptime_s: float = 0.0
    subscribers: int
    # The direct bus's store: tasks per state, worker connections, buffered PCM.
    tasks: dict[str, int] | None = None
    ingest_connections: int | None = None
    buffered_bytes: int | None = None
    bus: BusHealth | None = None


class VoiceState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class VoiceDescription(_Health):
    """One voice of a worker: ``GET /v1/voices``, its ``/health`` and its heartbeat."""

    id: str
    engine: str
    language: str | None = None
    device: str | None = None  # cpu | cuda | remote, once started
    sample_rate: int
    state: VoiceState
    load_s: float | None = None
    error: str | None = None  # why it failed to load

    def info(self) -> VoiceInfo:
        """As a client sees it in ``list_voices``."""
        return VoiceInfo(
            name=self.id,
            language=self.language or "und",
            sample_rate=self.sample_rate,
            engine=self.engine,
            ready=self.state is VoiceState.READY,
        )


class VoiceListing(_Health):
    """A worker's ``GET /v1/voices``."""

    default: str | None
    voices: list[VoiceDescription] = Field(max_length=MAX_VOICES)


class WorkerHealth(_Health):
    """A TTS worker's ``GET /health`` (200 when ``ok``, else 503) and, with its ``name``,
    its heartbeat on the Redis bus."""

    status: Literal["ok", "starting", "degraded"]
    voices: list[VoiceDescription] = Field(max_length=MAX_VOICES)
    default_voice: str | None = None
    running: int = Field(ge=0)
    queued: int = Field(ge=0)
    capacity: int = Field(ge=0)  # tasks it admits: engine slots plus queue
    max_concurrent: int = Field(ge=1)  # engine slots: what load is measured against
    ingest_connected: bool  # frames can reach the output side (on either bus)
    ready_s: float | None = None  # seconds from start to every voice loaded
    name: str | None = None  # the heartbeat's: this process on the bus

    @property
    def ready_voices(self) -> list[str]:
        return sorted(voice.id for voice in self.voices if voice.state is VoiceState.READY)

    @property
    def fit(self) -> bool:
        """Fit for a task: ok, or "degraded" only because a voice other than the default
        failed (the default voice is ready and frames can reach the output side)."""
        if self.status == "ok":
            return True
        return self.status == "degraded" and self.ingest_connected and self.speaks_default

    @property
    def speaks_default(self) -> bool:
        """Its default voice is loaded (any voice, when it names no default)."""
        ready = self.ready_voices
        return self.default_voice in ready if self.default_voice else bool(ready)


class WorkerView(_Health):
    """One worker as an input handler sees it (the ``workers`` of its ``/health``)."""

    name: str  # the worker's URL on the direct bus, its instance name on Redis
    url: str | None = None  # direct bus only
    healthy: bool
    # Direct bus: unknown | starting | ready | down (its last probe); Redis: the status of
    # its last heartbeat (ok | starting | degraded).
    state: str
    busy: bool = False  # refused with 503 since the last probe (direct bus)
    running: int = 0
    queued: int = 0
    capacity: int = 1
    last_error: str | None = None
    voices: list[str] = Field(default_factory=list, max_length=MAX_VOICES)  # ready ones


class InputHealth(_Health):
    """The input handler's ``GET /health`` (200 only when a speak can succeed now)."""

    status: Literal["ok", "degraded", "unavailable"]
    service: Literal["input_handler"] = "input_handler"
    uptime_s: float = 0.0
    connections: int = 0
    workers_available: int
    workers: list[WorkerView] = Field(max_length=MAX_VOICES)
    bus: BusHealth | None = None


class InputBeat(_Health):
    """An input handler's heartbeat on the Redis bus."""

    name: str
    workers: int
    backlog: int
