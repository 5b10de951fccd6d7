"""The route table: which backend serves a path, and in which order to try its backends.

Routes come from config.json (``gateway.routes``): a Starlette path pattern and one or more
backend base URLs. A connection to ``/ws/output/abc?x=1`` on a route whose backend is
``ws://127.0.0.1:8002`` is proxied to ``ws://127.0.0.1:8002/ws/output/abc?x=1``.

With several backends, new connections go to the healthy ones first, by round-robin or
least-connections; a backend that refused a connection (or failed its health probe) is
marked down for :data:`DOWN_FOR_S` seconds and tried only after the healthy ones.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from starlette.routing import compile_path

from aivtuber_common.config import GatewaySettings, RouteSettings

__all__ = ["DOWN_FOR_S", "Backend", "Route", "RouteTable"]

# gateway.max_message_bytes when no GatewaySettings is at hand.
_DEFAULT_MAX_BYTES: int = GatewaySettings.model_fields["max_message_bytes"].default

# How long a backend that refused stays behind the healthy ones.
DOWN_FOR_S = 2.0


class Backend:
    """One backend base URL of a route, with the live state the balancer needs."""

    __slots__ = ("url", "health_url", "open_connections", "down_until")

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        scheme = "https" if parts.scheme in ("wss", "https") else "http"
        # The backend's own health endpoint: same host and port, path /health.
        self.health_url = f"{scheme}://{parts.netloc}/health"
        self.open_connections = 0
        self.down_until = 0.0

    def mark_down(self, now: float | None = None) -> None:
        self.down_until = (time.monotonic() if now is None else now) + DOWN_FOR_S

    def mark_up(self) -> None:
        self.down_until = 0.0

    def is_up(self, now: float) -> bool:
        return self.down_until <= now

    def target(self, raw_path: str, query_string: str) -> str:
        """The backend URL for a client's path and query string."""
        return f"{self.url}{raw_path}?{query_string}" if query_string else self.url + raw_path


class Route:
    """A configured route: its name, compiled path pattern and backends."""

    def __init__(
        self, name: str, settings: RouteSettings, default_max_bytes: int = _DEFAULT_MAX_BYTES
    ) -> None:
        self.name = name
        self.settings = settings
        self.regex: re.Pattern[str] = compile_path(settings.path)[0]
        self.backends = [Backend(url) for url in settings.backends]
        self.compression = settings.compression
        self.audio_metrics = settings.audio_metrics
        # Both hops, whole messages and unfinished fragmented ones (see .bounds).
        self.max_message_bytes = settings.max_message_bytes or default_max_bytes
        self.protocol = settings.protocol  # websocket or http (see http_routes.py)
        self.unavailable_reason = f"{name} backend unavailable"
        self._turn = itertools.count()

    def candidates(self, now: float | None = None) -> list[Backend]:
        """Backends in the order to try them: healthy ones by the balancing rule, then the
        ones marked down (a last resort beats refusing the client outright)."""
        if len(self.backends) == 1:
            return self.backends
        now = time.monotonic() if now is None else now
        start = next(self._turn) % len(self.backends)
        rotated = self.backends[start:] + self.backends[:start]
        up = [backend for backend in rotated if backend.is_up(now)]
        down = sorted((b for b in rotated if not b.is_up(now)), key=lambda b: b.down_until)
        if self.settings.balance == "least_connections":
            # Stable sort over a rotated list: ties take turns.
            up.sort(key=lambda backend: backend.open_connections)
        return up + down


class RouteTable:
    """All routes, matched in config order."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.routes = [
            Route(name, route, settings.max_message_bytes)
            for name, route in settings.routes.items()
        ]

    def match(self, path: str, protocol: str = "websocket") -> Route | None:
        for route in self.routes:
            if route.protocol == protocol and route.regex.match(path):
                return route
        return None

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)
