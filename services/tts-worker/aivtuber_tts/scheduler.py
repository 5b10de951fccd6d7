"""Engine slots handed out fairly between tenants, and by urgency within a tenant, so a new
task's first piece goes ahead of audio that is not needed yet.

``max_concurrent`` pieces run at once, each in a thread of the executor the app owns
(onnxruntime releases the GIL). Every admitted task asks for a slot piece by piece, with a
priority: the latest moment the piece can start and still be done in time (see
``TaskManager``: for later pieces, when the listener runs out of audio minus the piece's
estimated synthesis time; for a first piece, shortly after the task arrived).

Between groups (a tenant, or one anonymous client address) the next free slot goes by
start-time fair queueing over engine time: each group has a tag, the engine seconds it was
given while it had pieces waiting; the waiting group with the smallest tag goes next, and a
group that starts waiting again begins at the current virtual time (the tag the last piece
started with), so idle time earns no credit. A piece is charged its estimated time when it
starts and corrected by its measured time when it ends. So while one tenant keeps the
worker full, another tenant's next piece runs as soon as one in-flight piece ends.

Within a group the waiting piece with the smallest priority goes first (earliest deadline):
a task that just arrived is served as soon as one in-flight piece finishes, before long
tasks' later sentences, which already have seconds of audio playing; and a stream about to
underrun goes before one that is well ahead. With one group (one user), that is all there
is.

A newcomer does not wait for the slots: a task's *first* piece whose group (tenant) has
nothing running or waiting, arriving while every regular slot is busy with other groups'
pieces, **pre-empts** them: the running pieces are stopped and the newcomer's piece runs
alone (told so: :func:`running_alone`, Piper's wide session) as soon as their threads have
ended, the freed slots held for it until it is done; with more than :data:`MAX_CLEARED`
slots only one piece is stopped (of the group charged most, the one that started last:
least work lost) and the newcomer takes its slot. A stopped piece is queued again with its
deadline and runs again from the start, uncharged for the lost run. Pieces are cut at
sentences (up to 240 characters, a second or more of engine time on a small CPU), so
without this a tenant under its share would wait behind another tenant's long pieces, or
(spare slot, below) share the cores three threads to two with them. Measured with
``python -m bench.edge_fairness --voice joe --rounds 8`` (docs/limits.md; 2 cores, load
1.4-3.5), a flooded worker answered a newcomer 2.3x later than an idle one with the spare
slot, 1.6-2.1x when one piece of two was stopped, 1.0-1.6x when both are.

Only work that says it can be stopped is (:func:`stoppable`: Piper's onnxruntime runs,
ended by ``RunOptions.terminate``; a piece's audio comes out of the run whole, so a
stopped run has given nothing to anybody). A hostile tenant cannot use it to starve
others: only a newcomer's first piece pre-empts, only pieces of a group charged at least
as much are stopped, a piece is stopped once at most (:data:`MAX_PREEMPTIONS`: its second
run cannot be), and the newcomer's own piece cannot be; so a piece runs twice at most, and
its second run goes to its end. ``preempt=False`` (``tts_worker.preempt``) turns it off.

When there is no piece to stop (an engine that cannot be stopped, or every running piece
was stopped once already), one spare slot: the newcomer's first piece starts at once in a
spare slot beside the busy slots, and while it runs a slot that frees up is not handed on:
the newcomer's piece shares the cores only with the pieces that were already running, then
has them to itself. One group alone never pre-empts nor uses the spare, so one user's
scheduling is unchanged.

A piece that starts while no other piece runs or waits is told so (:func:`running_alone`,
read in its thread): an engine may then use more cores for it (Piper's second, wider
session), which is what the first line of an idle worker needs; under load every piece
keeps to its one thread.

A slot is given back when its thread finishes, not when the waiting coroutine is cancelled:
a cancelled task stops awaiting at once, but the CPU stays busy with the piece until it
ends, and counting the slot free earlier would oversubscribe the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

__all__ = ["PieceScheduler", "Preempted", "running_alone", "stoppable"]

T = TypeVar("T")

# Set for the duration of one piece's work, in its thread (see running_alone).
_ALONE: contextvars.ContextVar[bool] = contextvars.ContextVar("piece_alone", default=False)


def running_alone() -> bool:
    """In a piece's work: True when it started with every other slot idle and nothing
    waiting, so it may use the cores of the idle slots."""
    return _ALONE.get()


class Preempted(Exception):
    """A piece's work was stopped to make room for a newcomer's first piece; the scheduler
    runs it again (engines let it through as it is, see :func:`stoppable`)."""


# Times one piece may be stopped: its next run is never stopped, so a tenant that keeps
# being pre-empted still gets each of its pieces done, for at most twice their engine time.
MAX_PREEMPTIONS = 1
# A newcomer's first piece runs alone (every core: Piper's wide session) when that means
# stopping at most this many pieces; beyond (a worker with more slots) it stops one and
# takes its slot, beside the others.
MAX_CLEARED = 2


class _Run:
    """One run of a piece, in its thread: whether and how the scheduler may stop it."""

    def __init__(self, group: _Group, order: int, preemptible: bool) -> None:
        self.group = group
        self.order = order  # larger: started later (less progress to lose)
        self.preemptible = preemptible
        self.stopped = False
        # The first piece this run was stopped for: it starts when its thread has ended.
        self.successor: _Handover | None = None
        self._lock = threading.Lock()  # the hooks are set in the piece's thread
        self._stops: list[Callable[[], None]] = []

    @property
    def stoppable(self) -> bool:
        """In a step that can be stopped now (see :func:`stoppable`), and not stopped yet."""
        with self._lock:
            return bool(self._stops) and not self.stopped

    def hook(self, stop: Callable[[], None]) -> None:
        with self._lock:
            if not self.stopped:
                self._stops.append(stop)
                return
        stop()  # stopped before this step began: it ends at once

    def unhook(self, stop: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._stops.remove(stop)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            stops = list(self._stops)
        for stop in stops:
            stop()


# The run of the piece whose work runs in this thread (see stoppable).
_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("piece_run", default=None)


@contextlib.contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """In a piece's work: around one step that ``stop`` ends early, from another thread,
    by making it raise (onnxruntime: ``RunOptions.terminate``). Only there may the scheduler
    pre-empt the piece; if it does, the step's exception becomes :class:`Preempted` and the
    piece runs again from the start later, so whatever the piece made so far is dropped.
    Outside a piece (warm-up), or in a run that may not be stopped, it does nothing."""
    run = _RUN.get()
    if run is None or not run.preemptible:
        yield
        return
    run.hook(stop)
    try:
        yield
    except Exception as exc:
        if run.stopped:
            raise Preempted("stopped for another tenant's first piece; it runs again") from exc
        raise
    finally:
        run.unhook(stop)


# Groups that have nothing waiting or running and no debt beyond the virtual time carry no
# state worth keeping; this many idle ones at most are kept before the oldest are dropped.
MAX_IDLE_GROUPS = 256


@dataclass(eq=False)
class _Group:
    tag: float = 0.0  # engine seconds charged (virtual finish time)
    running: int = 0  # pieces of this group in a thread now
    waiting: list[tuple[float, int, asyncio.Future[None], float]] = field(default_factory=list)
    handovers: int = 0  # first pieces waiting for a stopped piece's slot

    def head(self) -> tuple[float, int, asyncio.Future[None], float] | None:
        """The most urgent piece still waiting (cancelled waiters are dropped here)."""
        while self.waiting and self.waiting[0][2].done():
            heapq.heappop(self.waiting)
        return self.waiting[0] if self.waiting else None


@dataclass(eq=False)
class _Handover:
    """A newcomer's first piece waiting for the pieces stopped for it to end."""

    group: _Group
    turn: asyncio.Future[None]
    cost: float
    pending: int  # stopped pieces whose thread has not ended yet
    alone: bool  # every running piece was stopped: it runs alone, the freed slots wait


class _Slot(Enum):
    REGULAR = "regular"  # one of the max_concurrent slots, by its turn
    SPARE = "spare"  # the spare slot, beside busy ones
    HANDOVER = "handover"  # a regular slot whose piece was stopped for this one
    CLEARED = "cleared"  # every slot's piece was stopped for this one: it runs alone


class PieceScheduler:
    def __init__(
        self,
        slots: int,
        executor: Executor,
        clock: Callable[[], float] = time.perf_counter,
        spare: bool = True,
        preempt: bool = True,
        on_preempt: Callable[[], None] = lambda: None,
    ) -> None:
        """``clock`` times the pieces (engine seconds); tests may hand in their own;
        ``spare``: whether a newcomer's first piece may use the spare slot; ``preempt``:
        whether it may stop another group's piece instead (``on_preempt`` counts those)."""
        self.slots = slots
        self.spare = spare
        self.preempt = preempt
        self._on_preempt = on_preempt
        self._clock = clock
        self.busy = 0  # slots whose thread is running a piece
        self.spare_busy = 0  # the spare slot (0 or 1) runs a newcomer's first piece
        # Slots cleared for a newcomer's first piece: none is handed on until it has run.
        self._cleared = False
        self._executor = executor
        self._groups: dict[str, _Group] = {}
        self._runs: set[_Run] = set()  # pieces in a thread now
        self._vtime = 0.0  # the tag the most recently started piece started at
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return sum(
            1
            for group in self._groups.values()
            for _, _, future, _ in group.waiting
            if not future.done()
        )

    async def run(
        self,
        deadline: float,
        work: Callable[[], T],
        *,
        group: str = "",
        cost: float = 0.0,
        first: bool = False,
    ) -> T:
        """Run ``work`` in a slot once it is this piece's turn; its result or exception.

        ``group``: whose piece it is (fair sharing); ``cost``: its estimated engine seconds;
        ``first``: the first piece of its task (it may take the spare slot, or pre-empt).
        A pre-empted run is queued again with the same deadline and run again.
        """
        self._loop = asyncio.get_running_loop()
        stopped = 0
        while True:
            owner, slot = await self._acquire(group, deadline, cost, first and not stopped)
            # Only a piece that took its turn may be stopped: a newcomer's piece never is.
            preemptible = self.preempt and slot is _Slot.REGULAR and stopped < MAX_PREEMPTIONS
            run = _Run(owner, next(self._order), preemptible)
            try:
                return await self._run_once(run, slot, cost, work)
            except Preempted:
                if not run.stopped:
                    raise
                stopped += 1

    async def _run_once(self, run: _Run, slot: _Slot, cost: float, work: Callable[[], T]) -> T:
        spare, cleared = slot is _Slot.SPARE, slot is _Slot.CLEARED
        alone = cleared or (
            slot is _Slot.REGULAR and self.busy == 1 and not self.waiting and not self.spare_busy
        )
        elapsed = 0.0

        def timed() -> T:
            nonlocal elapsed
            started = self._clock()
            try:
                return contextvars.copy_context().run(_in_piece, alone, run, work)
            finally:
                elapsed = self._clock() - started

        def done(future: Future[T]) -> None:
            # A stopped run is not charged: the newcomer took its time, not its group.
            preempted = not future.cancelled() and isinstance(future.exception(), Preempted)
            spent = 0.0 if preempted else elapsed
            self._from_thread(
                lambda: self._finished(run.group, cost, spent, spare, run, cleared=cleared)
            )

        self._runs.add(run)
        try:
            future = self._executor.submit(timed)
        except BaseException:
            self._finished(run.group, cost, 0.0, spare, run, cleared=cleared)
            raise
        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    async def _acquire(
        self, name: str, deadline: float, cost: float, first: bool
    ) -> tuple[_Group, _Slot]:
        """The piece's group, and the slot it runs in."""
        group = self._group(name)
        if (
            self.busy < self.slots
            and not self.waiting
            and not self.spare_busy
            and not self._cleared
        ):
            self.busy += 1
            self._start(group, cost)
            return group, _Slot.REGULAR
        assert self._loop is not None
        newcomer = (
            first
            and (self.busy >= self.slots or self._cleared)
            and group.running == 0
            and group.head() is None
            and not group.handovers
        )
        victims = self._victims(group) if newcomer and self.preempt else []
        if victims:
            # Every slot busy with other groups' pieces: stop them (or the one furthest
            # over its share); this piece starts as soon as their threads have ended.
            turn: asyncio.Future[None] = self._loop.create_future()
            alone = len(victims) == len(self._runs)
            handover = _Handover(group, turn, cost, len(victims), alone)
            self._cleared = self._cleared or alone
            group.handovers += 1
            for victim in victims:
                victim.successor = handover
                victim.stop()
                self._on_preempt()
            await self._wait_turn(turn, group, cost, cleared=alone)
            return group, _Slot.CLEARED if alone else _Slot.HANDOVER
        if newcomer and self.spare and self.spare_busy == 0:
            # No piece to stop (an engine that cannot): a newcomer does not wait for them.
            self.spare_busy = 1
            self._start(group, cost)
            return group, _Slot.SPARE
        if group.head() is None:
            # Starts waiting: from now on, not with the credit of the time it was idle.
            group.tag = max(group.tag, self._vtime)
        turn = self._loop.create_future()
        heapq.heappush(group.waiting, (deadline, next(self._order), turn, cost))
        await self._wait_turn(turn, group, cost)
        return group, _Slot.REGULAR

    async def _wait_turn(
        self, turn: asyncio.Future[None], group: _Group, cost: float, cleared: bool = False
    ) -> None:
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Handed over just as we were cancelled.
                self._finished(group, cost, 0.0, cleared=cleared)
            raise

    def _victims(self, newcomer: _Group) -> list[_Run]:
        """The pieces to stop for a newcomer's first piece: every running piece when all
        can be stopped and they are at most MAX_CLEARED, else the one of the group charged
        most that started last (least work lost); none if none can be. A piece can be
        stopped when its group was charged at least as much as the newcomer (at least: a
        voice's cost per character is learnt from its first pieces, whose estimates are 0;
        and a group holding every slot is over its share of them anyway)."""
        newcomer_tag = max(newcomer.tag, self._vtime)
        candidates = [
            run
            for run in self._runs
            if run.group is not newcomer
            and run.group.tag >= newcomer_tag
            and run.successor is None
            and run.preemptible
            and run.stoppable
        ]
        if not candidates:
            return []
        if len(candidates) == len(self._runs) <= MAX_CLEARED:
            return candidates
        return [max(candidates, key=lambda run: (run.group.tag, run.order))]

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(tag=self._vtime)
        return group

    def _start(self, group: _Group, cost: float) -> None:
        self._vtime = max(self._vtime, group.tag)
        group.tag += cost
        group.running += 1

    def _finished(
        self,
        group: _Group,
        charged: float,
        elapsed: float,
        spare: bool = False,
        run: _Run | None = None,
        cleared: bool = False,
    ) -> None:
        group.running -= 1
        group.tag += elapsed - charged  # the estimate, corrected by what the piece took
        if spare:
            self.spare_busy = 0  # the spare's piece held no regular slot
        else:
            self.busy -= 1
        if cleared:
            self._cleared = False  # the piece the slots were cleared for has run
        if run is not None:
            self._runs.discard(run)
            if run.successor is not None:
                self._hand_over(run.successor)
        self._fill()
        self._forget_idle()

    def _hand_over(self, handover: _Handover) -> None:
        """One of the pieces stopped for a newcomer's first piece has ended; once all
        have, that piece starts (before the queue: called before _fill)."""
        handover.pending -= 1
        if handover.pending:
            return
        handover.group.handovers -= 1
        if handover.turn.done():  # the newcomer was cancelled meanwhile
            if handover.alone:
                self._cleared = False
            return
        self.busy += 1
        self._start(handover.group, handover.cost)
        handover.turn.set_result(None)

    def _fill(self) -> None:
        # Hand free slots straight to the next pieces (called where a slot was freed, with
        # no await in between, so a fresh arrival cannot jump the queue). While the spare
        # slot runs a newcomer's first piece, freed slots stay free: that piece then has the
        # cores to itself once the pieces it started beside have ended; likewise while
        # the slots cleared for one wait for it and it runs.
        while self.busy < self.slots and not self.spare_busy and not self._cleared:
            best: tuple[float, float, int] | None = None
            chosen: _Group | None = None
            for group in self._groups.values():
                head = group.head()
                if head is not None and (best is None or (group.tag, head[0], head[1]) < best):
                    best, chosen = (group.tag, head[0], head[1]), group
            if chosen is None:
                return
            _, _, turn, cost = heapq.heappop(chosen.waiting)
            self.busy += 1
            self._start(chosen, cost)
            turn.set_result(None)

    def _forget_idle(self) -> None:
        idle = [
            name
            for name, group in self._groups.items()
            if group.running == 0 and group.head() is None and not group.handovers
        ]
        for name in idle:
            # A group at or behind the virtual time would restart there anyway.
            if self._groups[name].tag <= self._vtime:
                del self._groups[name]
        idle = [name for name in idle if name in self._groups]
        if len(idle) > MAX_IDLE_GROUPS:
            idle.sort(key=lambda name: self._groups[name].tag)
            for name in idle[: len(idle) - MAX_IDLE_GROUPS]:
                del self._groups[name]

    def _from_thread(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop closed between the check and the call
            pass


def _in_piece(alone: bool, run: _Run, work: Callable[[], T]) -> T:
    _ALONE.set(alone)
    _RUN.set(run)
    return work()
