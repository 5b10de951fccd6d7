"""The gateway's browser-facing HTTP routes: the demo page, its static files, and the data
of the status page's speech view.

Two groups, so the edge can guard them differently:

- :func:`public_routes`: ``GET /demo`` and ``GET /static/...`` (``aivtuber.js``, the demo's
  script). They hold no secret; a browser needs them before it has any credential.
- :func:`admin_routes`: ``GET /speech``, the speech view's JSON (tasks in flight, time to
  first audio over the last minutes, late frames, workers and their voices). Operator data:
  it goes behind the admin key like ``/connections``.

Everything ``/speech`` reports is gathered here from what the gateway already has: its own
recent audio observations (:mod:`.recent`) and the ``/health`` bodies of the input handler
(workers, voices) and the output handler (tasks by state), which the health checker keeps
from its cached probes. No task id and no query string appears in it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from aivtuber_common.health import InputHealth, OutputHealth

from .auth import Edge
from .metrics import GatewayMetrics
from .routing import RouteTable
from .runtime import Runtime

M = TypeVar("M", bound=BaseModel)

__all__ = ["admin_routes", "page_routes", "public_routes", "speech_view"]

# The demo loads only its own files and talks only to this origin's WebSockets.
PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}
# Tasks a worker or subscriber is still waiting on or streaming (output handler states).
IN_FLIGHT_STATES = ("waiting", "streaming")


def page_routes(edge: Edge, metrics: GatewayMetrics, routes: RouteTable) -> list[BaseRoute]:
    """Every route of this module (the open ones first)."""
    return [*public_routes(), *admin_routes(edge, metrics, routes)]


def public_routes() -> list[BaseRoute]:
    demo_page = _static_text("demo.html")

    async def demo(_: Request) -> HTMLResponse:
        return HTMLResponse(demo_page, headers=PAGE_HEADERS)

    static = StaticFiles(packages=[("aivtuber_gateway", "static")])
    return [Route("/demo", demo, methods=["GET"]), Mount("/static", app=static, name="static")]


def admin_routes(edge: Edge, metrics: GatewayMetrics, routes: RouteTable) -> list[BaseRoute]:
    async def speech(request: Request) -> Response:
        # Operator data, like /connections: the admin key (loopback without one).
        refusal = edge.check_admin(request.scope)
        if refusal is not None:
            return refusal.response()
        runtime: Runtime | None = getattr(request.state, "runtime", None)
        if runtime is None:
            return JSONResponse({"status": "stopping"}, status_code=503)
        await runtime.health.backends()  # refreshes the handlers' reports (cached)
        body = speech_view(
            metrics.recent.snapshot(),
            _reports(routes, runtime, "input", InputHealth),
            _reports(routes, runtime, "output", OutputHealth),
        )
        return JSONResponse(body, headers={"cache-control": "no-store"})

    return [Route("/speech", speech, methods=["GET"])]


def speech_view(
    recent: dict[str, Any],
    input_reports: list[InputHealth | None],
    output_reports: list[OutputHealth | None],
) -> dict[str, Any]:
    """The ``/speech`` body from the recent window and the handlers' ``/health`` bodies
    (None for a handler that did not answer, or not with its health)."""
    by_state: dict[str, int] = {}
    for output in output_reports:
        for state, count in ((output.tasks or {}) if output else {}).items():
            by_state[state] = by_state.get(state, 0) + count
    workers: list[dict[str, Any]] = []
    for report in input_reports:
        for worker in report.workers if report else []:
            # healthy, busy, running, queued, capacity, last_error (and what a newer handler
            # adds); its URL, or its name on the Redis bus.
            entry = worker.model_dump(exclude={"name", "url", "state", "voices"})
            entry["url"] = worker.url or worker.name
            entry["voices"] = [{"name": voice} for voice in worker.voices]
            workers.append(entry)
    return {
        "tasks": {
            "in_flight": sum(by_state.get(state, 0) for state in IN_FLIGHT_STATES),
            "by_state": by_state,
        },
        **recent,
        "workers": workers,
        "handlers": {
            "input": sum(report is not None for report in input_reports),
            "output": sum(report is not None for report in output_reports),
        },
    }


def _reports(
    routes: RouteTable, runtime: Runtime, route_name: str, model: type[M]
) -> list[M | None]:
    reports = runtime.health.reports
    for route in routes:
        if route.name == route_name:
            return [_parse(model, reports.get(backend.url)) for backend in route.backends]
    return []


def _parse(model: type[M], body: bytes | None) -> M | None:
    if body is None:
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None  # not a handler of this kind (or an older one): nothing to show


def _static_text(name: str) -> str:
    return resources.files("aivtuber_gateway").joinpath("static", name).read_text("utf-8")
