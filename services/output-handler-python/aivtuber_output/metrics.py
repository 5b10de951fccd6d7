"""Prometheus metrics of the output handler, in a registry owned by one app instance.

Latency, not only traffic: ``aivtuber_output_first_frame_seconds`` is the time from a
worker announcing a task (TaskOpen) to its first frame, and
``aivtuber_output_frame_gap_seconds`` the time between consecutive frames of a task: a gap
longer than a frame's duration is where a listener hears a stutter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aivtuber_common.metrics import LATENCY_BUCKETS

__all__ = ["OutputMetrics"]


class OutputMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Counter("aivtuber_output_tasks", "Tasks announced by workers.", registry=r)
        self.tasks_finished = Counter(
            "aivtuber_output_tasks_finished",
            "Tasks that ended, by final status and failure code.",
            ["status", "code"],
            registry=r,
        )
        self.frames = Counter("aivtuber_output_frames", "Frames received from workers.", registry=r)
        self.bytes = Counter(
            "aivtuber_output_pcm_bytes", "PCM bytes received from workers.", registry=r
        )
        self.ingest_connections = Gauge(
            "aivtuber_output_ingest_connections", "Worker ingest connections open.", registry=r
        )
        self.ingest_errors = Counter(
            "aivtuber_output_ingest_errors", "Ingest messages that did not fit.", registry=r
        )
        self.subscribers = Gauge(
            "aivtuber_output_subscribers", "Frontend subscribers connected.", registry=r
        )
        self.subscriptions = Counter(
            "aivtuber_output_subscriptions",
            "Subscriptions by how they ended.",
            ["outcome"],
            registry=r,
        )
        self.frames_sent = Counter(
            "aivtuber_output_frames_sent", "Frames sent to subscribers.", registry=r
        )
        self.first_frame = Histogram(
            "aivtuber_output_first_frame_seconds",
            "Time to first audio at the output handler: TaskOpen to the first frame.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_gap = Histogram(
            "aivtuber_output_frame_gap_seconds",
            "Time between consecutive frames of a task as they arrive from the worker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "aivtuber_output_buffered_bytes", "PCM bytes held in the task store.", registry=r
        )
