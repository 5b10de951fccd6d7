"""Prometheus metrics of the input handler, in a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["InputMetrics"]


class InputMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "aivtuber_input_connections", "Frontend connections open on /ws/input.", registry=r
        )
        self.active_tasks = Gauge(
            "aivtuber_input_active_tasks",
            "Tasks given to workers (or being given) that have not ended, all tenants.",
            registry=r,
        )
        self.submissions = Counter(
            "aivtuber_input_submissions",
            "Utterances handed to workers, by result (queued or the error code).",
            ["result"],
            registry=r,
        )
        self.submit_seconds = Histogram(
            "aivtuber_input_submit_seconds",
            "Time from a speak message to the worker's acceptance (failover included).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.cancels = Counter(
            "aivtuber_input_cancels",
            "Cancel requests, by whether a worker stopped the task.",
            ["stopped"],
            registry=r,
        )
        self.errors = Counter(
            "aivtuber_input_errors", "Errors answered to clients, by code.", ["code"], registry=r
        )
