"""The live connections and the running totals, owned by the app's lifespan.

Counters on the hot path are plain ints on each connection; the registry folds a
connection's counts into its route's totals when it ends, so ``/metrics`` is the totals
plus a sum over the live connections, and forwarding a message costs no metrics call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog

from .lifecycle import End
from .routing import Route

__all__ = ["LiveConnection", "Registry", "RouteTotals"]


class LiveConnection(Protocol):
    """What the registry needs from a live connection (a :class:`.proxy.ProxyConnection`)."""

    @property
    def id(self) -> str: ...
    @property
    def route(self) -> Route: ...
    @property
    def messages_in(self) -> int: ...
    @property
    def messages_out(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def end(self) -> End | None: ...

    def terminate(self, code: int, reason: str) -> None:
        """Close both sides with ``code``; returns at once."""


C = TypeVar("C", bound=LiveConnection)


@dataclass(slots=True)
class RouteTotals:
    """Counts of a route's connections that have ended, plus the opened count."""

    opened: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class Registry(Generic[C]):
    """Every proxied connection from accept to its last socket closed."""

    def __init__(self, route_names: list[str], log: structlog.typing.FilteringBoundLogger) -> None:
        self.log = log
        self._live: dict[str, C] = {}
        self.totals = {name: RouteTotals() for name in route_names}
        self.closes: Counter[tuple[str, str, int]] = Counter()  # (route, closed_by, code)
        self.connect_failures: Counter[tuple[str, str]] = Counter()  # (route, backend url)
        self.rejected: Counter[tuple[str, int]] = Counter()  # (route, close code) never proxied
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._live.values()))

    def add(self, conn: C) -> None:
        self._live[conn.id] = conn
        self.totals[conn.route.name].opened += 1
        self._empty.clear()

    def remove(self, conn: C) -> None:
        if self._live.pop(conn.id, None) is None:
            return
        totals = self.totals[conn.route.name]
        totals.messages_in += conn.messages_in
        totals.messages_out += conn.messages_out
        totals.bytes_in += conn.bytes_in
        totals.bytes_out += conn.bytes_out
        if conn.end is not None:
            self.closes[conn.route.name, conn.end.by.value, conn.end.code] += 1
        if not self._live:
            self._empty.set()

    def open_count(self, route: str) -> int:
        return sum(1 for conn in self._live.values() if conn.route.name == route)

    def live_totals(self, route: str) -> RouteTotals:
        """The route's totals including the connections still open."""
        done = self.totals[route]
        now = RouteTotals(done.opened, done.messages_in, done.messages_out)
        now.bytes_in, now.bytes_out = done.bytes_in, done.bytes_out
        for conn in self._live.values():
            if conn.route.name == route:
                now.messages_in += conn.messages_in
                now.messages_out += conn.messages_out
                now.bytes_in += conn.bytes_in
                now.bytes_out += conn.bytes_out
        return now

    async def wait_empty(self) -> None:
        """Until no connection is left (the caller bounds the wait)."""
        await self._empty.wait()

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection on both sides with ``code`` and wait until they are gone
        (the caller bounds the wait: gateway.shutdown_timeout_s)."""
        if not self._live:
            return
        self.log.info("closing_all_connections", count=len(self._live), code=code)
        for conn in self:
            conn.terminate(code, reason)
        await self.wait_empty()
