"""What the services share for Prometheus: the latency buckets and the /metrics endpoint.

Each app owns its own ``CollectorRegistry`` (no global registry: two apps in one process,
as in the tests, must not share counters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["LATENCY_BUCKETS", "metrics_endpoint"]

# Seconds, fine around the 40-200 ms where time to first audio and frame gaps matter.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10)


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving ``registry`` in the Prometheus text format."""

    async def endpoint(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return endpoint
