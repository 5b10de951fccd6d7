"""The per-tenant limits kept in Redis, so that any number of input handlers enforce them once.

On the Redis bus (``bus.kind = "redis"``) every input handler of a stack admits speaks
against the same two sorted sets per limits key (a tenant, or an anonymous client's
address), read and written by one Lua script, atomically, with Redis' own clock (so the
replicas' clocks do not matter):

- ``{prefix}:limits:{key}:log``: the speaks of the last minute, scored by time, members
  ``<task id>:<characters>``, and the pieces appended to streams, members
  ``t:<unique id>:<characters>`` (characters, but no speak): ``speaks_per_minute`` and
  ``chars_per_minute`` as a moving window, exactly like the direct bus's in-process log
  (:mod:`.limits`), with the exact wait until a speak or a piece fits again;
- ``{prefix}:limits:{key}:active``: the tasks not yet ended, scored by the end of their
  lease: ``max_active_tasks``. The handler that admitted a task renews its lease every
  ``bus.heartbeat_interval_s`` while the task runs (it follows the task's end: see
  :mod:`.redis_submitter`) and removes it once it ended; a handler that dies leaves leases
  that run out ``bus.heartbeat_ttl_s`` later, so no task stays counted forever.

Both keys expire on their own once idle. A Redis that cannot be reached refuses the speak
with ``tts_unavailable`` (the tasks could not be submitted either).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog

from aivtuber_common.bus import BusUnavailable, RedisLink
from aivtuber_common.config import LimitsSettings, RedisBusSettings

if TYPE_CHECKING:  # limits.py imports this module
    from .activity import ActiveTasks
    from .limits import SpeakLimiter

__all__ = ["RedisLimits", "SharedVerdict", "shared_limits"]

log = structlog.get_logger("aivtuber_input.shared_limits")

WINDOW_MS = 60_000

# Lua shared by both scripts: with ``entries`` (the log, oldest first, WITHSCORES), ``chars``
# and ``chars_limit``, the ms until ``chars`` more fit in the window (0: they fit now).
_CHARS_WAIT = """
local chars_wait = 0
local total = 0
for i = 1, #entries, 2 do
  total = total + tonumber(string.match(entries[i], ':(%d+)$'))
end
local excess = total + chars - chars_limit
if excess > 0 then
  chars_wait = window
  for i = 1, #entries, 2 do
    excess = excess - tonumber(string.match(entries[i], ':(%d+)$'))
    if excess <= 0 then
      chars_wait = math.max(1, tonumber(entries[i + 1]) + window - now)
      break
    end
  end
end
"""

# KEYS: log, active. ARGV: speaks limit, chars limit, active limit, chars, task id,
# lease ms, window ms, then task ids of this key that ended (removed first).
# Returns {speak wait ms, chars wait ms, active full (0/1), active count}.
_ADMIT = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[7])
for i = 8, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local speaks = tonumber(ARGV[1])
local chars = tonumber(ARGV[4])
local speak_wait = 0
local speak_times = {}
for i = 1, #entries, 2 do
  if string.sub(entries[i], 1, 2) ~= 't:' then  -- appended pieces are no speaks
    speak_times[#speak_times + 1] = tonumber(entries[i + 1])
  end
end
local n = #speak_times
if n >= speaks then
  speak_wait = math.max(1, speak_times[n - speaks + 1] + window - now)
end
local chars_limit = tonumber(ARGV[2])
"""
    + _CHARS_WAIT
    + """local active = redis.call('ZCARD', KEYS[2])
local full = 0
if active >= tonumber(ARGV[3]) then full = 1 end
if speak_wait > 0 or chars_wait > 0 or full == 1 then
  return {speak_wait, chars_wait, full, active}
end
local lease = tonumber(ARGV[6])
redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[2], lease)
return {0, 0, 0, active + 1}
"""
)

# KEYS: log. ARGV: chars limit, chars, member id (unique), window ms. Counts the characters
# of one piece appended to a stream (no speak, no task). Returns the wait in ms (0: counted).
_TEXT = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local chars_limit = tonumber(ARGV[1])
local chars = tonumber(ARGV[2])
"""
    + _CHARS_WAIT
    + """
if chars_wait > 0 then return chars_wait end
redis.call('ZADD', KEYS[1], now, 't:' .. ARGV[3] .. ':' .. chars)
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)

# KEYS: one active set per task; ARGV: lease ms, then per key a task id and "r" (renew its
# lease) or "d" (it ended: remove it).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  local task, op = ARGV[2 * i], ARGV[2 * i + 1]
  if op == 'r' then
    redis.call('ZADD', KEYS[i], 'XX', now + lease, task)
    redis.call('PEXPIRE', KEYS[i], lease)
  else
    redis.call('ZREM', KEYS[i], task)
  end
end
return #KEYS
"""


class SharedVerdict:
    """What the script said: the waits (0: none) and whether the active tasks are full."""

    __slots__ = ("speak_wait_s", "chars_wait_s", "active_full", "active")

    def __init__(self, reply: list[int]) -> None:
        self.speak_wait_s = int(reply[0]) / 1000
        self.chars_wait_s = int(reply[1]) / 1000
        self.active_full = bool(int(reply[2]))
        self.active = int(reply[3])

    @property
    def admitted(self) -> bool:
        return not (self.speak_wait_s or self.chars_wait_s or self.active_full)


class RedisLimits:
    """The shared window and active-task leases of one input handler (one per process)."""

    def __init__(
        self, link: RedisLink, still_active: Callable[[str], bool], lease_s: float
    ) -> None:
        self.link = link
        self._prefix = f"{link.settings.prefix}:limits"
        self._still_active = still_active  # the task has not ended (as this handler knows)
        self._lease_ms = max(1, round(lease_s * 1000))
        self._admit = link.client.register_script(_ADMIT)
        self._renew = link.client.register_script(_RENEW)
        self._text = link.client.register_script(_TEXT)
        self._held: dict[str, str] = {}  # task id -> limits key, admitted here, not released

    def keys(self, key: str) -> tuple[str, str]:
        return f"{self._prefix}:{key}:log", f"{self._prefix}:{key}:active"

    async def admit(
        self, key: str, limits: LimitsSettings, chars: int, task_id: str
    ) -> SharedVerdict:
        """Check and (when it fits) count one speak; raises BusUnavailable."""
        ended = [t for t, k in self._held.items() if k == key and not self._still_active(t)]
        args: list[str | int] = [
            limits.speaks_per_minute,
            limits.chars_per_minute,
            limits.max_active_tasks,
            chars,
            task_id,
            self._lease_ms,
            WINDOW_MS,
            *ended,
        ]
        with self.link.guard():
            reply = await self._admit(keys=list(self.keys(key)), args=args)
        for task in ended:
            self._held.pop(task, None)
        verdict = SharedVerdict(reply)
        if verdict.admitted:
            self._held[task_id] = key
        return verdict

    async def admit_text(self, key: str, limits: LimitsSettings, chars: int) -> float:
        """Check and (when it fits) count ``chars`` appended to a stream of ``key``: the
        seconds to wait (0: counted). Raises BusUnavailable."""
        args: list[str | int] = [limits.chars_per_minute, chars, uuid.uuid4().hex, WINDOW_MS]
        with self.link.guard():
            reply = await self._text(keys=[self.keys(key)[0]], args=args)
        return int(reply) / 1000

    async def renew_once(self) -> None:
        """Renew the leases of the tasks still running, remove the ended ones."""
        held = list(self._held.items())
        if not held:
            return
        keys: list[str] = []
        args: list[str | int] = [self._lease_ms]
        ended = []
        for task, key in held:
            keys.append(self.keys(key)[1])
            running = self._still_active(task)
            args += [task, "r" if running else "d"]
            if not running:
                ended.append(task)
        with self.link.guard():
            await self._renew(keys=keys, args=args)
        for task in ended:
            self._held.pop(task, None)

    async def run(self, interval_s: float) -> None:
        """Renew every ``interval_s`` until cancelled (owned by the app's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.renew_once()
            except BusUnavailable:
                pass  # reported once by the link; the leases run out if it lasts

    @property
    def held(self) -> int:
        return len(self._held)


@contextlib.asynccontextmanager
async def shared_limits(
    link: RedisLink,
    bus: RedisBusSettings,
    active: ActiveTasks,
    limiter: SpeakLimiter | None,
) -> AsyncIterator[None]:
    """``limiter`` counts in Redis (and the leases are renewed) until the block exits."""
    if limiter is None:
        yield
        return
    shared = RedisLimits(link, active.holds, bus.heartbeat_ttl_s)
    limiter.shared = shared
    renew = asyncio.create_task(shared.run(bus.heartbeat_interval_s), name="limits-renew")
    try:
        yield
    finally:
        renew.cancel()
        await asyncio.gather(renew, return_exceptions=True)
        limiter.shared = None
