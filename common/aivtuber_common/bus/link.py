"""One Redis client per service, and whether Redis can be reached right now.

Every call into Redis goes through :meth:`RedisLink.guard`, which maps redis-py's
connection errors onto :class:`BusUnavailable` and records the outage. An outage is logged
once (``redis_unreachable``, error level) and its end once (``redis_reconnected``): a
service that cannot reach Redis says so in one line, not in one line per request.
:meth:`RedisLink.run` (owned by the lifespan) pings twice a second, so ``/health`` turns 503
within that when Redis goes and 200 again by itself once it is back; redis-py reconnects its
pool on the next use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..codes import ErrorCode
from ..config import RedisBusSettings
from ..transport import TransportError
from .streams import Keys

__all__ = ["BusUnavailable", "RedisLink", "safe_url"]

log = structlog.get_logger("aivtuber_common.bus")

# Blocking reads hold a connection each (a subscriber, a worker's group read): room for many;
# beyond it a call is refused without counting Redis as down.
MAX_CONNECTIONS = 1024
PROBE_INTERVAL_S = 0.5


class BusUnavailable(TransportError):
    code = ErrorCode.TTS_UNAVAILABLE


def safe_url(url: str) -> str:
    """The URL without its password, for logs and /health."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + '@' if parts.username else ''}{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    def __init__(
        self,
        settings: RedisBusSettings,
        client: Redis | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.url = safe_url(settings.url)
        # No retries inside redis-py: a failure reaches us at once and is reported once;
        # recovery is the next call (or the probe) on a fresh connection.
        self.client: Redis = client or Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            decode_responses=False,
        )
        self.up = False
        self.error: str | None = "not connected yet"
        self._reported_down = False
        self._came_up = asyncio.Event()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map a lost Redis onto BusUnavailable (and note it); let other errors through.

        Also re-raises a cancellation that redis-py swallowed: a task cancelled while its
        command's connection is being released can return normally (seen as a worker whose
        shutdown never ended), so a cancelled task leaves every guarded call cancelled.
        """
        try:
            yield
        except RedisConnectionError as exc:
            if "Too many connections" in str(exc):
                # This process's pool is full (every subscriber's blocking read holds one):
                # refuse this call, but Redis itself is fine, so nothing is marked down.
                raise BusUnavailable(
                    "This service has too many open reads on the message bus; try again later."
                ) from exc
            self.mark_down(exc)
            raise BusUnavailable(
                "The message bus (Redis) cannot be reached; try again in a moment."
            ) from exc
        except (RedisTimeoutError, OSError) as exc:
            self.mark_down(exc)
            raise BusUnavailable(
                "The message bus (Redis) cannot be reached; try again in a moment."
            ) from exc
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    def mark_down(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"[:200]
        if self.up or not self._reported_down:
            log.error("redis_unreachable", url=self.url, error=self.error)
        self.up = False
        self._reported_down = True
        self._came_up.clear()

    def mark_up(self) -> None:
        if not self.up:
            event = "redis_reconnected" if self._reported_down else "redis_connected"
            log.info(event, url=self.url)
        self.up = True
        self.error = None
        self._came_up.set()

    async def wait_up(self) -> None:
        await self._came_up.wait()

    async def ping(self) -> bool:
        try:
            with self.guard():
                # redis-py types its commands for both clients (Awaitable[bool] | bool).
                await cast(Awaitable[bool], self.client.ping())
        except BusUnavailable:
            return False
        self.mark_up()
        return True

    async def run(self) -> None:
        """PING every ``PROBE_INTERVAL_S`` until cancelled, so that even an idle process (an
        output replica nobody listens to) reports an outage, and its end, within that."""
        while True:
            await self.ping()
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def aclose(self) -> None:
        await self.client.aclose()
