"""Keepalive pings from the output handler to its WebSocket peers, so a hung worker is
noticed.

A worker that stops (SIGSTOP, a frozen event loop, a machine gone without a FIN) leaves
its ingest connection open and silent: its queued tasks would never end and their
subscribers would wait forever. uvicorn pings every peer every :func:`ping_settings`
interval and closes a connection whose pong is late; the ingest endpoint then fails that
worker's unfinished tasks with ``timeout`` (see :mod:`.ingest`). Interval and timeout are a
third of ``task_timeout_s`` each (at most 20 s), so a hung worker's tasks fail within
``task_timeout_s``.
"""

from __future__ import annotations

from typing import Any

from aivtuber_common.config import OutputHandlerSettings, Settings

__all__ = ["ping_settings", "uvicorn_overrides"]

MAX_PING_S = 20.0


def ping_settings(config: OutputHandlerSettings) -> tuple[float, float]:
    """(interval, timeout) of the pings, in seconds."""
    third = min(MAX_PING_S, config.task_timeout_s / 3)
    return third, third


def uvicorn_overrides(settings: Settings) -> dict[str, Any]:
    interval, timeout = ping_settings(settings.output_handler)
    return {"ws_ping_interval": interval, "ws_ping_timeout": timeout}
