"""``GET /health``: probe every backend's own ``/health``, cached so it cannot flood them.

One shared ``httpx.AsyncClient`` (owned by the lifespan) with a short timeout; all probes
run concurrently; the report is reused for ``health_cache_s`` seconds and concurrent
callers share one probe round. A probe's result also tells the balancer which backends
are down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .routing import Backend, Route, RouteTable

__all__ = ["HealthChecker"]

MAX_REPORT_BYTES = 1024 * 1024  # a backend's /health kept for the status page, at most


class HealthChecker:
    def __init__(
        self, routes: RouteTable, client: httpx.AsyncClient, timeout_s: float, cache_s: float
    ) -> None:
        self._routes = routes
        self._client = client
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._lock = asyncio.Lock()
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0
        # The last /health body of each backend (by URL), as sent: the status page's speech
        # view parses the handlers' own reports (aivtuber_common.health) for workers,
        # voices and tasks.
        self.reports: dict[str, bytes] = {}

    async def backends(self) -> tuple[bool, dict[str, Any]]:
        """(all ok, per-route report), probing at most once per ``cache_s``."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached_at >= self._cache_s:
                self._cached = await self._probe_all()
                self._cached_at = time.monotonic()
            report = self._cached
        return all(route["status"] == "ok" for route in report.values()), report

    async def _probe_all(self) -> dict[str, Any]:
        routes = list(self._routes)
        results = await asyncio.gather(*(self._probe_route(route) for route in routes))
        return {route.name: result for route, result in zip(routes, results, strict=True)}

    async def _probe_route(self, route: Route) -> dict[str, Any]:
        probes = await asyncio.gather(*(self._probe(backend) for backend in route.backends))
        up = sum(1 for probe in probes if probe["status"] == "ok")
        status = "ok" if up == len(probes) else "down" if up == 0 else "degraded"
        first = probes[0]
        report: dict[str, Any] = {
            "url": first["url"],
            "status": status,
            "latency_ms": first["latency_ms"],
        }
        if "error" in first:
            report["error"] = first["error"]
        if len(probes) > 1:
            report["backends"] = probes
        return report

    async def _probe(self, backend: Backend) -> dict[str, Any]:
        started = time.perf_counter()
        error: str | None = None
        response: httpx.Response | None = None
        try:
            response = await self._client.get(backend.health_url, timeout=self._timeout)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
        except httpx.TimeoutException:
            error = f"no answer within {self._timeout:g}s"
        except httpx.HTTPError as exc:
            error = str(exc) or type(exc).__name__
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        self._keep_report(backend, response)
        if error is None:
            backend.mark_up()
            return {"url": backend.url, "status": "ok", "latency_ms": latency_ms}
        backend.mark_down()
        return {"url": backend.url, "status": "down", "latency_ms": None, "error": error}

    def _keep_report(self, backend: Backend, response: httpx.Response | None) -> None:
        if response is not None and len(response.content) <= MAX_REPORT_BYTES:
            self.reports[backend.url] = response.content
        else:
            self.reports.pop(backend.url, None)
