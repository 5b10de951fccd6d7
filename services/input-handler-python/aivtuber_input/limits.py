"""Per-tenant limits on speaking: speaks and characters per rolling minute, active tasks.

Everything is counted per :attr:`aivtuber_common.identity.Identity.limits_key` (a tenant, or
the address of an anonymous client), across all of its connections to this input handler,
with the tenant's own ``limits`` over the defaults (``Settings.limits_for``).

The rates are sliding logs: each admitted speak (and each piece of text appended to a
streaming task, which counts characters but is no speak) is remembered for one minute, so
the limit holds over any 60 s, there is no burst at a window boundary, and the wait until a
speak fits again is exact: the moment enough old entries leave the window. A log holds at
most ``speaks_per_minute`` speaks per key, and appended pieces at most one entry per 50 ms
(at most ``chars_per_minute`` in all); a key whose log and active tasks are empty is
forgotten.

A speak that is refused (by a limit here, or a validation error before) costs nothing; one
that reaches the workers is counted whether or not a worker takes it, so a client cannot
hammer the workers with submissions they refuse.

On the Redis bus the speaks, their characters (those appended to streams too) and the
active tasks are counted in Redis instead (:attr:`SpeakLimiter.shared`,
:mod:`.shared_limits`), once for every input handler.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aivtuber_common.bus import BusUnavailable
from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import LimitsSettings

from .activity import ActiveTasks
from .shared_limits import RedisLimits

__all__ = ["Limited", "SpeakLimiter"]

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limited:
    """Why a speak may not go now: the error code, a sentence, and when to try again."""

    code: str
    message: str
    retry_after_ms: int | None = None


# Appended pieces this close together share one entry of the log: a client sending many
# tiny pieces costs one entry per 50 ms, not one per piece.
COALESCE_S = 0.05


@dataclass
class _Log:
    entries: deque[tuple[float, int]] = field(default_factory=deque)  # (time, chars)
    speaks: deque[float] = field(default_factory=deque)  # when each speak was admitted
    chars: int = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW_S:
            _, chars = self.entries.popleft()
            self.chars -= chars
        while self.speaks and self.speaks[0] <= now - WINDOW_S:
            self.speaks.popleft()

    def wait_for_speak(self, now: float, limit: int) -> float:
        """Seconds until one more speak fits under ``limit`` speaks per window."""
        if len(self.speaks) < limit:
            return 0.0
        return self.speaks[len(self.speaks) - limit] + WINDOW_S - now

    def wait_for_chars(self, now: float, chars: int, limit: int) -> float:
        """Seconds until ``chars`` more fit under ``limit`` characters per window."""
        excess = self.chars + chars - limit
        if excess <= 0:
            return 0.0
        for at, old in self.entries:
            excess -= old
            if excess <= 0:
                return at + WINDOW_S - now
        return WINDOW_S  # unreachable while chars <= limit (checked before)


class SpeakLimiter:
    def __init__(self, active: ActiveTasks, clock: Callable[[], float] = time.monotonic) -> None:
        self.active = active
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._sweep_at = 64  # table size that triggers the next sweep of idle keys
        # Set on the Redis bus (shared_limits.shared_limits): the limits every replica shares.
        self.shared: RedisLimits | None = None

    async def admit(
        self, key: str, limits: LimitsSettings, chars: int, task_id: str = ""
    ) -> Limited | None:
        """Count a speak of ``chars`` characters for ``key`` (task ``task_id``), or say why
        it must wait."""
        if chars > limits.chars_per_minute:
            return Limited(
                ErrorCode.TEXT_TOO_LONG,
                f"The text is {chars} characters long; this client may speak at most "
                f"{limits.chars_per_minute} characters per minute.",
            )
        if self.shared is not None:
            return await self._admit_shared(self.shared, key, limits, chars, task_id)
        return self._admit_here(key, limits, chars)

    async def _admit_shared(
        self, shared: RedisLimits, key: str, limits: LimitsSettings, chars: int, task_id: str
    ) -> Limited | None:
        try:
            verdict = await shared.admit(key, limits, chars, task_id)
        except BusUnavailable as exc:
            return Limited(ErrorCode.TTS_UNAVAILABLE, str(exc))
        waits: list[tuple[float, str]] = []
        if verdict.speak_wait_s:
            waits.append((verdict.speak_wait_s, f"{limits.speaks_per_minute} speaks per minute"))
        if verdict.chars_wait_s:
            waits.append((verdict.chars_wait_s, f"{limits.chars_per_minute} characters per minute"))
        if verdict.active_full:
            # Tasks of other replicas end when they end; this one's estimate is the best guess.
            waits.append(
                (self.active.expected_wait_s(key), f"{limits.max_active_tasks} unfinished tasks")
            )
        return _limited(waits)

    def _admit_here(self, key: str, limits: LimitsSettings, chars: int) -> Limited | None:
        now = self._clock()
        log = self._logs.get(key)
        if log is not None:
            log.expire(now)
        waits: list[tuple[float, str]] = []
        if log is not None:
            if wait := log.wait_for_speak(now, limits.speaks_per_minute):
                waits.append((wait, f"{limits.speaks_per_minute} speaks per minute"))
            if wait := log.wait_for_chars(now, chars, limits.chars_per_minute):
                waits.append((wait, f"{limits.chars_per_minute} characters per minute"))
        if self.active.count(key) >= limits.max_active_tasks:
            waits.append(
                (self.active.expected_wait_s(key), f"{limits.max_active_tasks} unfinished tasks")
            )
        if waits:
            return _limited(waits)
        if log is None:
            log = self._logs[key] = _Log()
        log.entries.append((now, chars))
        log.speaks.append(now)
        log.chars += chars
        self._forget_idle(now)
        return None

    async def admit_text(self, key: str, limits: LimitsSettings, chars: int) -> Limited | None:
        """Count ``chars`` more characters appended to a stream of ``key`` (no speak), or
        say why they must wait."""
        if chars > limits.chars_per_minute:
            return Limited(
                ErrorCode.TEXT_TOO_LONG,
                f"The piece is {chars} characters long; this client may speak at most "
                f"{limits.chars_per_minute} characters per minute.",
            )
        if self.shared is not None:
            try:
                wait = await self.shared.admit_text(key, limits, chars)
            except BusUnavailable as exc:
                return Limited(ErrorCode.TTS_UNAVAILABLE, str(exc))
            return _chars_limited(wait, limits) if wait else None
        now = self._clock()
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        log.expire(now)
        if wait := log.wait_for_chars(now, chars, limits.chars_per_minute):
            return _chars_limited(wait, limits)
        if log.entries and now - log.entries[-1][0] < COALESCE_S:
            at, before = log.entries[-1]
            log.entries[-1] = (at, before + chars)
        else:
            log.entries.append((now, chars))
        log.chars += chars
        self._forget_idle(now)
        return None

    @property
    def keys(self) -> int:
        return len(self._logs)

    def _forget_idle(self, now: float) -> None:
        # Amortised: a sweep only when the table has doubled since the last one.
        if len(self._logs) < self._sweep_at:
            return
        for key in list(self._logs):
            log = self._logs[key]
            log.expire(now)
            if not log.entries:
                del self._logs[key]
        self._sweep_at = max(64, 2 * len(self._logs))


def _chars_limited(wait_s: float, limits: LimitsSettings) -> Limited:
    retry_ms = max(1, math.ceil(wait_s * 1000))
    return Limited(
        ErrorCode.RATE_LIMITED,
        f"Too many requests: the limit is {limits.chars_per_minute} characters per "
        f"minute; try again in {retry_ms} ms.",
        retry_ms,
    )


def _limited(waits: list[tuple[float, str]]) -> Limited | None:
    """rate_limited with the longest of the waits, or None when there is none."""
    if not waits:
        return None
    wait = max(seconds for seconds, _ in waits)
    which = " and ".join(what for _, what in waits)
    retry_ms = max(1, math.ceil(wait * 1000))
    return Limited(
        ErrorCode.RATE_LIMITED,
        f"Too many requests: the limit is {which}; try again in {retry_ms} ms.",
        retry_ms,
    )
