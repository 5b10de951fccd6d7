"""Prometheus metrics of the TTS worker, in a registry owned by one app instance.

``aivtuber_tts_first_chunk_seconds`` is the worker's share of the time to first audio (task
accepted -> first frame handed to the output handler); ``aivtuber_tts_real_time_factor`` the
engine time per second of audio of each task (below 1 is faster than real time).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aivtuber_common.metrics import LATENCY_BUCKETS

__all__ = ["TtsMetrics"]

_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)


class TtsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Counter(
            "aivtuber_tts_tasks",
            "Tasks by outcome: completed, cancelled, failed, lost (ingest dropped), stopped.",
            ["outcome", "voice"],
            registry=r,
        )
        self.refusals = Counter(
            "aivtuber_tts_refusals",
            "Submissions refused, by code (busy, not_ready, unknown_voice, ...).",
            ["code"],
            registry=r,
        )
        self.first_chunk = Histogram(
            "aivtuber_tts_first_chunk_seconds",
            "Task accepted to its first frame sent to the output handler.",
            ["voice"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "aivtuber_tts_real_time_factor",
            "Engine time divided by audio duration, per completed task.",
            ["voice"],
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.queued = Gauge(
            "aivtuber_tts_queue_depth", "Accepted tasks waiting for their first piece.", registry=r
        )
        self.running = Gauge(
            "aivtuber_tts_running", "Tasks synthesising (first piece started).", registry=r
        )
        self.engine_busy = Gauge(
            "aivtuber_tts_engine_slots_busy",
            "Engine slots running a piece right now (at most max_concurrent).",
            registry=r,
        )
        self.pieces_waiting = Gauge(
            "aivtuber_tts_pieces_waiting",
            "Pieces of admitted tasks waiting for an engine slot, all tenants.",
            registry=r,
        )
        self.preempted = Counter(
            "aivtuber_tts_pieces_preempted",
            "Pieces stopped for another tenant's first piece (each runs again).",
            registry=r,
        )
        self.frames = Counter("aivtuber_tts_frames", "Frames sent.", registry=r)
        self.audio_seconds = Counter(
            "aivtuber_tts_audio_seconds", "Seconds of audio synthesised.", registry=r
        )
