"""Engine slots go to the most urgent piece first, and come back only when a thread is free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from aivtuber_tts.scheduler import PieceScheduler, running_alone, stoppable
from tests.support import wait_until

WAIT_S = 10.0


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def test_waiting_pieces_run_earliest_deadline_first(executor: ThreadPoolExecutor) -> None:
    scheduler = PieceScheduler(1, executor)
    gate = threading.Event()
    order: list[str] = []
    blocker = asyncio.create_task(scheduler.run(0.0, lambda: gate.wait(WAIT_S)))
    await wait_until(lambda: scheduler.busy == 1)
    # A long task's later sentence is due in 3 s; another's in 2 s; a new task's first
    # piece is due now (its accept time): it must go first.
    waiters = [
        asyncio.create_task(scheduler.run(deadline, lambda name=name: order.append(name)))
        for name, deadline in (("later sentence", 3.0), ("due soon", 2.0), ("first piece", 1.0))
    ]
    await wait_until(lambda: scheduler.waiting == 3)
    gate.set()
    await asyncio.gather(blocker, *waiters)
    assert order == ["first piece", "due soon", "later sentence"]
    assert scheduler.busy == 0


async def test_a_cancelled_piece_keeps_its_slot_until_its_thread_is_done(
    executor: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, executor)
    gate = threading.Event()
    running = asyncio.create_task(scheduler.run(0.0, lambda: gate.wait(WAIT_S)))
    await wait_until(lambda: scheduler.busy == 1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # The caller stopped waiting at once, but the CPU is still busy with the piece.
    assert scheduler.busy == 1
    follower = asyncio.create_task(scheduler.run(0.0, lambda: "next"))
    await wait_until(lambda: scheduler.waiting == 1)
    gate.set()
    assert await follower == "next"
    assert scheduler.busy == 0


async def test_a_cancelled_waiter_gives_up_its_turn(executor: ThreadPoolExecutor) -> None:
    scheduler = PieceScheduler(1, executor)
    gate = threading.Event()
    blocker = asyncio.create_task(scheduler.run(0.0, lambda: gate.wait(WAIT_S)))
    await wait_until(lambda: scheduler.busy == 1)
    quitter = asyncio.create_task(scheduler.run(1.0, lambda: "never"))
    stayer = asyncio.create_task(scheduler.run(2.0, lambda: "ran"))
    await wait_until(lambda: scheduler.waiting == 2)
    quitter.cancel()
    gate.set()
    assert await stayer == "ran"
    await blocker
    assert quitter.cancelled()
    assert scheduler.busy == 0 and scheduler.waiting == 0


async def test_two_slots_run_two_pieces_at_once(executor: ThreadPoolExecutor) -> None:
    scheduler = PieceScheduler(2, executor)
    both = threading.Barrier(2, timeout=WAIT_S)
    results = await asyncio.gather(
        scheduler.run(0.0, lambda: both.wait()), scheduler.run(0.0, lambda: both.wait())
    )
    assert sorted(results) == [0, 1]


async def test_an_error_in_a_piece_reaches_the_caller_and_frees_the_slot(
    executor: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, executor)

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await scheduler.run(0.0, fail)
    await wait_until(lambda: scheduler.busy == 0)
    assert await scheduler.run(0.0, lambda: 42) == 42


async def test_a_piece_is_told_when_it_runs_alone_so_it_may_use_the_idle_cores(
    executor: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(2, executor)
    gate = threading.Event()

    def held() -> bool:
        alone = running_alone()
        gate.wait(WAIT_S)
        return alone

    assert await scheduler.run(0.0, running_alone) is True  # an idle worker
    first = asyncio.create_task(scheduler.run(0.0, held))
    await wait_until(lambda: scheduler.busy == 1)
    beside = await scheduler.run(0.0, running_alone)  # the other slot, while one runs
    gate.set()
    assert await first is True and beside is False
    assert running_alone() is False  # outside a piece: never


# --- pre-emption: a newcomer's first piece stops a piece of a group over its share ---------


class Stoppable:
    """Fake engine work that holds its thread until released and, like an onnxruntime run
    told to terminate, raises when the scheduler stops it (unless ``deaf``: it then ends
    normally when released, as a run does that was stopped just after its last node)."""

    def __init__(self, name: str, ran: list[str], deaf: bool = False) -> None:
        self.name, self.ran, self.deaf = name, ran, deaf
        self.entered = 0  # runs begun
        self.stops = 0  # runs the scheduler stopped
        self._released = False
        self._changed = threading.Condition()

    def release(self) -> None:
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def __call__(self) -> str:
        stopped = False

        def stop() -> None:  # called by the scheduler, from the event loop's thread
            nonlocal stopped
            with self._changed:
                stopped = True
                self.stops += 1
                self._changed.notify_all()

        with stoppable(stop):
            with self._changed:
                self.entered += 1
                self._changed.wait_for(lambda: self._released or (stopped and not self.deaf))
            if stopped and not self.deaf:
                raise RuntimeError("Exiting due to terminate flag being set to true.")
        self.ran.append(self.name)
        return self.name


@pytest.fixture
def three() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(3) as pool:
        yield pool


async def test_a_newcomers_first_piece_stops_both_pieces_of_a_group_over_its_share_and_runs_alone(
    three: ThreadPoolExecutor,
) -> None:
    preempted: list[int] = []
    scheduler = PieceScheduler(2, three, on_preempt=lambda: preempted.append(1))
    ran: list[str] = []
    older, newer = Stoppable("alpha1", ran), Stoppable("alpha2", ran)
    alpha1 = asyncio.create_task(scheduler.run(0.0, older, group="alpha", cost=1.0))
    await wait_until(lambda: older.entered == 1)
    alpha2 = asyncio.create_task(scheduler.run(1.0, newer, group="alpha", cost=1.0))
    await wait_until(lambda: newer.entered == 1)
    beta_gate = threading.Event()

    def beta() -> bool:
        alone = running_alone()
        beta_gate.wait(WAIT_S)
        ran.append("beta")
        return alone

    first = asyncio.create_task(scheduler.run(5.0, beta, group="beta", cost=0.1, first=True))
    # Both of alpha's pieces were stopped and wait again: beta's piece has the cores to
    # itself (an engine may use them all), not a third thread beside two.
    await wait_until(lambda: scheduler.busy == 1 and scheduler.waiting == 2)
    assert (older.stops, newer.stops) == (1, 1) and preempted == [1, 1]
    assert scheduler.spare_busy == 0
    beta_gate.set()
    assert await first is True
    await wait_until(lambda: older.entered == 2 and newer.entered == 2)  # run again
    older.release()
    newer.release()
    assert await alpha1 == "alpha1" and await alpha2 == "alpha2"
    assert ran[0] == "beta" and sorted(ran) == ["alpha1", "alpha2", "beta"]  # once each
    assert scheduler.busy == 0 and not scheduler._runs


async def test_with_more_slots_the_newcomer_stops_the_latest_piece_and_takes_its_slot() -> None:
    with ThreadPoolExecutor(4) as pool:
        scheduler = PieceScheduler(3, pool)
        ran: list[str] = []
        alpha = [Stoppable(f"alpha{n}", ran) for n in range(3)]
        held = []
        for n, work in enumerate(alpha):
            held.append(asyncio.create_task(scheduler.run(float(n), work, group="alpha")))
            await wait_until(lambda work=work: work.entered == 1)
        beta = Stoppable("beta", ran)
        first = asyncio.create_task(scheduler.run(5.0, beta, group="beta", first=True))
        await wait_until(lambda: beta.entered == 1)
        # The piece that started last (least done) was stopped; beta runs in its slot.
        await wait_until(lambda: scheduler.waiting == 1)
        assert [work.stops for work in alpha] == [0, 0, 1]
        assert scheduler.busy == 3 and scheduler.spare_busy == 0
        beta.release()
        await first
        await wait_until(lambda: alpha[2].entered == 2)
        for work in alpha:
            work.release()
        assert await asyncio.gather(*held) == ["alpha0", "alpha1", "alpha2"]
        assert ran[0] == "beta" and len(ran) == 4


async def test_a_piece_is_stopped_once_at_most_and_a_newcomers_piece_never(
    three: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, three)
    ran: list[str] = []
    alpha, beta, gamma, delta = (Stoppable(n, ran) for n in ("alpha", "beta", "gamma", "delta"))
    held = asyncio.create_task(scheduler.run(0.0, alpha, group="alpha", cost=1.0))
    await wait_until(lambda: alpha.entered == 1)
    b = asyncio.create_task(scheduler.run(1.0, beta, group="beta", cost=0.1, first=True))
    await wait_until(lambda: beta.entered == 1)
    assert alpha.stops == 1
    # Beta's piece took alpha's slot by pre-emption: gamma may not stop it (spare slot).
    g = asyncio.create_task(scheduler.run(2.0, gamma, group="gamma", cost=0.1, first=True))
    await wait_until(lambda: gamma.entered == 1)
    assert beta.stops == 0 and scheduler.spare_busy == 1
    beta.release()
    gamma.release()
    await asyncio.gather(b, g)
    await wait_until(lambda: alpha.entered == 2)
    # Alpha's piece runs again and cannot be stopped a second time: delta takes the spare.
    d = asyncio.create_task(scheduler.run(3.0, delta, group="delta", cost=0.1, first=True))
    await wait_until(lambda: delta.entered == 1)
    assert alpha.stops == 1 and scheduler.spare_busy == 1
    delta.release()
    alpha.release()
    assert await held == "alpha"
    await d
    assert ran.count("alpha") == 1


async def test_a_group_over_the_others_share_does_not_preempt_them(
    three: ThreadPoolExecutor,
) -> None:
    now = [0.0]
    scheduler = PieceScheduler(1, three, clock=lambda: now[0])
    # Beta has just had 100 engine seconds; alpha starts afterwards, level with the others.
    await scheduler.run(0.0, lambda: now.__setitem__(0, 100.0), group="beta", cost=1.0)
    ran: list[str] = []
    alpha = Stoppable("alpha", ran)
    held = asyncio.create_task(scheduler.run(0.0, alpha, group="alpha", cost=1.0))
    await wait_until(lambda: alpha.entered == 1)
    beta = asyncio.create_task(
        scheduler.run(1.0, lambda: ran.append("beta"), group="beta", cost=0.1, first=True)
    )
    await wait_until(lambda: ran == ["beta"])  # beside alpha, in the spare slot
    assert alpha.stops == 0
    alpha.release()
    await asyncio.gather(held, beta)


async def test_without_preemption_the_newcomer_takes_the_spare_slot(
    three: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, three, preempt=False)
    ran: list[str] = []
    alpha = Stoppable("alpha", ran)
    held = asyncio.create_task(scheduler.run(0.0, alpha, group="alpha", cost=1.0))
    await wait_until(lambda: alpha.entered == 1)
    await scheduler.run(1.0, lambda: ran.append("beta"), group="beta", first=True)
    assert alpha.stops == 0 and ran == ["beta"]
    alpha.release()
    assert await held == "alpha"


async def _alpha_told_to_stop_for_beta(
    scheduler: PieceScheduler, ran: list[str]
) -> tuple[Stoppable, Stoppable, asyncio.Task[str], asyncio.Task[str]]:
    """alpha's piece running (deaf: it ends only when released), then beta's first piece:
    alpha is told to stop. Both pieces, and the tasks running them."""
    alpha, beta = Stoppable("alpha", ran, deaf=True), Stoppable("beta", ran)
    held = asyncio.create_task(scheduler.run(0.0, alpha, group="alpha", cost=1.0))
    await wait_until(lambda: alpha.entered == 1)
    first = asyncio.create_task(scheduler.run(1.0, beta, group="beta", first=True))
    await wait_until(lambda: alpha.stops == 1)
    return alpha, beta, held, first


async def test_a_piece_that_ends_as_it_is_stopped_keeps_its_result_and_hands_over_its_slot(
    three: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, three)
    ran: list[str] = []
    alpha, beta, held, first = await _alpha_told_to_stop_for_beta(scheduler, ran)
    assert beta.entered == 0 and scheduler.busy == 1  # waits for alpha's thread to end
    alpha.release()  # it finished regardless: its audio is whole, so it is kept
    assert await held == "alpha"
    await wait_until(lambda: beta.entered == 1)
    beta.release()
    await first
    assert ran == ["alpha", "beta"] and alpha.entered == 1
    assert scheduler.busy == 0


async def test_a_newcomer_cancelled_before_the_handover_gives_the_slot_to_the_queue(
    three: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, three)
    ran: list[str] = []
    alpha, beta, held, quitter = await _alpha_told_to_stop_for_beta(scheduler, ran)
    later = asyncio.create_task(scheduler.run(2.0, lambda: "next", group="alpha"))
    await wait_until(lambda: scheduler.waiting == 1)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    alpha.release()
    assert await held == "alpha" and await later == "next"
    assert beta.entered == 0 and scheduler.busy == 0
