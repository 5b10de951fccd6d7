"""Prometheus metrics, collected from the registry when ``/metrics`` is scraped.

Message and byte counts are read from the plain-int counters on each connection (plus the
totals of ended ones) by a custom collector, so the hot path never touches a metric.
Only routes with ``audio_metrics`` observe two histograms per binary frame backend ->
client: time to first audio and the gap between frames (a stall shows as a long gap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .recent import RecentSpeech
from .registry import Registry
from .routing import RouteTable

__all__ = ["GatewayMetrics"]

PREFIX = "aivtuber_gateway"


class GatewayMetrics:
    """One Prometheus registry per app (never the global one: tests build many apps)."""

    def __init__(
        self, routes: RouteTable, tenants: Callable[[], dict[str, int]] | None = None
    ) -> None:
        self.prometheus = CollectorRegistry(auto_describe=True)
        self._routes = routes
        self._tenants = tenants  # open connections per tenant (the edge's quota)
        self._registry: Registry[Any] | None = None
        self.prometheus.register(_RegistryCollector(self))
        self.recent = RecentSpeech()  # the last minutes, for the status page's speech view
        self.first_audio = Histogram(
            f"{PREFIX}_time_to_first_audio_seconds",
            "From the client's connection opening to the first binary frame sent to it.",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30),
            registry=self.prometheus,
        )
        self.audio_gap = Histogram(
            f"{PREFIX}_audio_frame_gap_seconds",
            "Time between consecutive binary frames sent to the client.",
            ["route"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2, 5),
            registry=self.prometheus,
        )
        # Plain HTTP routes (protocol "http"): one observation per request, off the WS path.
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "Requests on http routes by status (0: the client left before an answer).",
            ["route", "status"],
            registry=self.prometheus,
        )
        self.http_first_byte = Histogram(
            f"{PREFIX}_http_first_byte_seconds",
            "Request received -> first body byte of the back end's answer sent to the client.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30),
            registry=self.prometheus,
        )
        self.connect_seconds = Histogram(
            f"{PREFIX}_backend_connect_seconds",
            "Time to open the backend connection (TCP and WebSocket handshake).",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.prometheus,
        )

    def bind(self, registry: Registry[Any] | None) -> None:
        """Attach the lifespan's registry (None after shutdown)."""
        self._registry = registry

    def first_audio_observer(self, route: str) -> Callable[[float], None]:
        return _both(self.first_audio.labels(route).observe, self.recent.first_audio)

    def audio_gap_observer(self, route: str) -> Callable[[float], None]:
        return _both(self.audio_gap.labels(route).observe, self.recent.frame_gap)

    def collect_registry(self) -> Iterator[Metric]:
        registry = self._registry
        open_ = GaugeMetricFamily(
            f"{PREFIX}_connections_open", "Proxied connections open now.", labels=["route"]
        )
        total = CounterMetricFamily(
            f"{PREFIX}_connections", "Proxied connections opened.", labels=["route"]
        )
        messages = CounterMetricFamily(
            f"{PREFIX}_messages",
            "Messages forwarded; in = client to backend, out = backend to client.",
            labels=["route", "direction"],
        )
        sizes = CounterMetricFamily(
            f"{PREFIX}_bytes",
            "Payload bytes forwarded; in = client to backend, out = backend to client.",
            labels=["route", "direction"],
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_backend_connect_failures",
            "Backend connections that failed (refused, down, handshake timeout, HTTP error).",
            labels=["route", "backend"],
        )
        closes = CounterMetricFamily(
            f"{PREFIX}_closes",
            "Ended proxied connections by who ended them and the close code.",
            labels=["route", "closed_by", "code"],
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected",
            "Client connections closed without being proxied (unknown path, backend down).",
            labels=["route", "code"],
        )
        if registry is not None:
            for route in self._routes:
                name = route.name
                totals = registry.live_totals(name)
                open_.add_metric([name], registry.open_count(name))
                total.add_metric([name], totals.opened)
                messages.add_metric([name, "in"], totals.messages_in)
                messages.add_metric([name, "out"], totals.messages_out)
                sizes.add_metric([name, "in"], totals.bytes_in)
                sizes.add_metric([name, "out"], totals.bytes_out)
            for (name, url), count in registry.connect_failures.items():
                failures.add_metric([name, url], count)
            for (name, by, code), count in registry.closes.items():
                closes.add_metric([name, by, str(code)], count)
            for (name, code), count in registry.rejected.items():
                rejected.add_metric([name, str(code)], count)
        tenants = GaugeMetricFamily(
            f"{PREFIX}_tenant_connections_open",
            'Open connections per tenant, all routes (limits.max_connections); "": anonymous.',
            labels=["tenant"],
        )
        if self._tenants is not None:
            for tenant, count in sorted(self._tenants().items()):
                tenants.add_metric([tenant], count)
        yield from (open_, total, messages, sizes, failures, closes, rejected, tenants)


def _both(
    first: Callable[[float], None], second: Callable[[float], None]
) -> Callable[[float], None]:
    def observe(value: float) -> None:
        first(value)
        second(value)

    return observe


class _RegistryCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_registry()
