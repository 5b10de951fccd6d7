"""What exists while the gateway runs (between lifespan startup and shutdown): handed to
every request and WebSocket as lifespan state (``scope["state"]["runtime"]``).

Its own module so that the routes reading it (:mod:`.monitor`, :mod:`.pages`) need not
import the app that builds it.
"""

from __future__ import annotations

import time
from typing import TypedDict

from .health import HealthChecker
from .proxy import ProxyConnection, ProxyOptions
from .registry import Registry

__all__ = ["GatewayState", "Runtime"]


class Runtime:
    """What exists while the app is running (between lifespan startup and shutdown)."""

    def __init__(
        self, registry: Registry[ProxyConnection], options: ProxyOptions, health: HealthChecker
    ) -> None:
        self.registry = registry
        self.options = options
        self.health = health
        self.started = time.monotonic()
        self.closing = False


class GatewayState(TypedDict):
    """The lifespan state: what every request and WebSocket of the app sees."""

    runtime: Runtime
