"""Wire models of the services' ``/health`` bodies and of the state they report.

Produced and parsed only through these models: a new field is one edit here, checked by
mypy wherever it is read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["BusHealth", "OutputHealth"]


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
