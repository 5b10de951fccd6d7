"""Engine slots go to the most urgent piece first, and come back only when a thread is free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from aivtuber_tts.scheduler import PieceScheduler, running_alone
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
