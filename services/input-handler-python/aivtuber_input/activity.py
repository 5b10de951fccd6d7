"""Which tasks are still active (not yet completed, failed or cancelled), per limits key.

A task counts from the moment its speak is admitted (before any worker is asked, so
concurrent connections of one tenant cannot overshoot ``max_active_tasks``) until the worker
says it ended, whether or not anyone subscribed to it. The workers say so on their events
socket (``WS /v1/tasks/events``, see ``aivtuber_common.internal``), which
:class:`WorkerEvents` follows, one connection per worker, for the life of the app:

- ``TaskEnd``: that task is over;
- ``TaskSnapshot`` (first thing on each connection, then every ``TASK_SNAPSHOT_INTERVAL_S``):
  the tasks the worker holds and the ones that ended last. On the first snapshot of a
  connection, a task this handler gave that worker *before* it asked for the connection and
  that the worker no longer holds has ended meanwhile; a task it gave later is either still
  held, or in ``ended``, or its TaskEnd is still to come on this connection.

When a worker stops answering, its tasks must not stay active forever: when the events
connection drops, or cannot be opened, or is silent for three snapshot intervals, that
worker's tasks become orphans. A worker that refuses the connection outright is gone (its
process died, its tasks with it): its orphans are released at once. Otherwise (a hung
worker, one that does not offer the events socket) they are released ``ORPHAN_GRACE_S``
after they were orphaned, unless a new connection's first snapshot shows them still held.
A task that ends while the stream was down is caught by that first snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from aivtuber_common.internal import (
    TASK_EVENTS_PATH,
    TASK_SNAPSHOT_INTERVAL_S,
    TaskEventAdapter,
    TaskSnapshot,
)

__all__ = ["ActiveTasks", "WorkerEvents"]

log = structlog.get_logger("aivtuber_input.activity")

# A worker whose events socket is down or silent keeps its tasks counted this long.
ORPHAN_GRACE_S = 10.0
SILENCE_LIMIT_S = 3 * TASK_SNAPSHOT_INTERVAL_S
RECONNECT_MAX_S = 2.0
# What a task's life (admission -> end) costs per character until one has been measured:
# roughly real-time-factor 0.3 of 65 ms of speech per character.
INITIAL_S_PER_CHAR = 0.02
LIFETIME_SMOOTHING = 0.2
MIN_WAIT_S = 0.1


@dataclass(eq=False)
class _Active:
    task_id: str
    key: str
    chars: int
    admitted_at: float
    worker: str | None = None  # the worker that took it
    accepted_at: float | None = None
    orphaned_at: float | None = None  # its worker's events stream was lost then
    stream: bool = False  # a streaming task: its life is the text's pace, not synthesis's


class ActiveTasks:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tasks: dict[str, _Active] = {}
        self._by_key: defaultdict[str, dict[str, _Active]] = defaultdict(dict)
        self._following: set[str] = set()  # workers whose events stream is up
        self._s_per_char = INITIAL_S_PER_CHAR
        self._sweep_at = 64  # table size that triggers a sweep of expired orphans

    def __len__(self) -> int:
        return len(self._tasks)

    def now(self) -> float:
        return self._clock()

    def holds(self, task_id: str) -> bool:
        """The task has not ended (as far as this handler knows)."""
        return task_id in self._tasks

    # --- the input side -----------------------------------------------------------------

    def admitted(self, task_id: str, key: str, chars: int, stream: bool = False) -> None:
        task = _Active(task_id, key, chars, self._clock(), stream=stream)
        self._tasks[task_id] = task
        self._by_key[key][task_id] = task
        if len(self._tasks) >= self._sweep_at:
            # Orphans of keys that never speak again expire here, not only in count().
            for orphan_key in [t.key for t in self._tasks.values() if t.orphaned_at is not None]:
                self.count(orphan_key)
            self._sweep_at = max(64, 2 * len(self._tasks))

    def accepted(self, task_id: str, worker: str | None) -> None:
        """A worker took it. Nothing happens when its end was already heard of."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.worker, task.accepted_at = worker, self._clock()
        if worker is None or worker not in self._following:
            task.orphaned_at = task.accepted_at  # nobody will tell us it ended

    def refused(self, task_id: str) -> None:
        self._drop(task_id)

    def abandoned(self, task_id: str) -> None:
        """The submission was interrupted: the task counts only if a worker took it."""
        task = self._tasks.get(task_id)
        if task is not None and task.worker is None:
            self._drop(task_id)

    def count(self, key: str) -> int:
        tasks = self._by_key.get(key)
        if not tasks:
            return 0
        now = self._clock()
        for task in list(tasks.values()):
            if task.orphaned_at is not None and now - task.orphaned_at >= ORPHAN_GRACE_S:
                log.info("task_released_orphan", task_id=task.task_id, worker=task.worker)
                self._drop(task.task_id)
        return len(self._by_key.get(key, ()))

    def expected_wait_s(self, key: str) -> float:
        """When the first of ``key``'s tasks should end, from the task lifetimes measured."""
        now = self._clock()
        ends = [
            task.admitted_at + task.chars * self._s_per_char
            if task.orphaned_at is None
            else min(
                task.orphaned_at + ORPHAN_GRACE_S,
                task.admitted_at + task.chars * self._s_per_char,
            )
            for task in self._by_key.get(key, {}).values()
        ]
        return max(MIN_WAIT_S, min(ends, default=now) - now)

    # --- what the workers say -------------------------------------------------------------

    def ended(self, task_id: str) -> None:
        task = self._drop(task_id)
        if task is not None and task.chars > 0 and task.orphaned_at is None and not task.stream:
            sample = (self._clock() - task.admitted_at) / task.chars
            self._s_per_char += (sample - self._s_per_char) * LIFETIME_SMOOTHING

    def snapshot(self, worker: str, snapshot: TaskSnapshot, asked_at: float | None) -> None:
        """``asked_at``: when this connection was requested, for its first snapshot."""
        for task_id in snapshot.ended:
            self.ended(task_id)
        if asked_at is None:
            return
        self._following.add(worker)
        held = set(snapshot.active)
        for task in [t for t in self._tasks.values() if t.worker == worker]:
            if task.task_id in held or task.accepted_at is None or task.accepted_at >= asked_at:
                task.orphaned_at = None  # its end will come on this connection
            else:
                self.ended(task.task_id)

    def stream_lost(self, worker: str, worker_gone: bool) -> None:
        self._following.discard(worker)
        now = self._clock()
        for task in [t for t in self._tasks.values() if t.worker == worker]:
            if worker_gone:
                log.info("task_released_worker_gone", task_id=task.task_id, worker=worker)
                self._drop(task.task_id)
            elif task.orphaned_at is None:
                task.orphaned_at = now

    def _drop(self, task_id: str) -> _Active | None:
        task = self._tasks.pop(task_id, None)
        if task is not None:
            tasks = self._by_key[task.key]
            tasks.pop(task_id, None)
            if not tasks:
                del self._by_key[task.key]
        return task


class WorkerEvents:
    """Follows every worker's events socket; the app's lifespan owns :meth:`run`."""

    def __init__(
        self, active: ActiveTasks, workers: list[str], token: str | None, timeout_s: float
    ) -> None:
        self.active = active
        self.workers = workers
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self._warned: set[str] = set()  # workers whose lost stream was logged already

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for worker in self.workers:
                group.create_task(self._follow(worker), name=f"task-events {worker}")

    async def _follow(self, worker: str) -> None:
        url = "ws" + worker.removeprefix("http") + TASK_EVENTS_PATH
        delay = 0.05
        while True:
            asked_at = self.active.now()
            gone = False
            try:
                await self._read(worker, url, asked_at)
            except (OSError, TimeoutError, WebSocketException, ValidationError) as exc:
                # Refused: nothing listens there any more, so the worker's tasks are gone.
                gone = isinstance(exc, ConnectionRefusedError)
                if worker not in self._warned:
                    log.warning("task_events_lost", worker=worker, error=type(exc).__name__)
                    self._warned.add(worker)
            except Exception:  # a bug: logged, and the stream is treated as lost, not dropped
                log.exception("task_events_error", worker=worker)
            self.active.stream_lost(worker, worker_gone=gone)
            # A stream that lived a while is tried again at once; failures back off.
            if self.active.now() - asked_at > RECONNECT_MAX_S:
                delay = 0.05
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _read(self, worker: str, url: str, asked_at: float) -> None:
        async with connect(
            url,
            additional_headers=self.headers,
            open_timeout=self.timeout_s,
            ping_interval=None,  # the snapshots are the keepalive
            compression=None,
            max_size=1024 * 1024,
        ) as ws:
            first: float | None = asked_at
            self._warned.discard(worker)
            log.info("task_events_following", worker=worker)
            while True:
                async with asyncio.timeout(SILENCE_LIMIT_S):
                    message = await ws.recv()
                event = TaskEventAdapter.validate_json(message)
                if isinstance(event, TaskSnapshot):
                    self.active.snapshot(worker, event, first)
                    first = None
                else:
                    self.active.ended(event.task_id)
