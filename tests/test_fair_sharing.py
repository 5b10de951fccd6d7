"""Engine time and the worker's queue are shared fairly between tenants.

The scheduler alone, with real executor threads; then a real worker over HTTP whose engine
runs one piece each time the test says so, so the order in which pieces run is the
measurement (no wall clock).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aivtuber_common.config import SineVoice
from aivtuber_tts.engines import LocalEngine
from aivtuber_tts.engines.piper import PiperEngine
from aivtuber_tts.scheduler import PieceScheduler, stoppable
from aivtuber_tts.words import written_words
from tests.support import wait_until
from tests.tts_fakes import (
    RecordedTask,
    WorkerClient,
    factory_with,
    running_recorder,
    running_worker,
    sine_settings,
)

WAIT_S = 10.0


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def test_another_groups_piece_runs_next_even_behind_earlier_deadlines(
    executor: ThreadPoolExecutor,
) -> None:
    scheduler = PieceScheduler(1, executor)
    gate = threading.Event()
    order: list[str] = []
    running = asyncio.create_task(
        scheduler.run(0.0, lambda: gate.wait(WAIT_S), group="A", cost=1.0)
    )
    await wait_until(lambda: scheduler.busy == 1)
    flood = [
        asyncio.create_task(
            scheduler.run(float(n), lambda n=n: order.append(f"A{n}"), group="A", cost=1.0)
        )
        for n in range(1, 6)
    ]
    # B's piece is due last of all: earliest-deadline-first alone would run it sixth.
    late = asyncio.create_task(scheduler.run(99.0, lambda: order.append("B"), group="B", cost=1.0))
    await wait_until(lambda: scheduler.waiting == 6)
    gate.set()
    await asyncio.gather(running, late, *flood)
    assert order[0] == "B"
    # Within a group, earliest deadline first as before.
    assert order[1:] == ["A1", "A2", "A3", "A4", "A5"]
    assert scheduler.busy == 0


class EngineClock:
    """Engine time that passes only when a piece says it did: costs are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def piece(self, cost: float, then: Any = None) -> Any:
        def work() -> None:
            if then is not None:
                then()
            self.now += cost

        return work


async def test_two_busy_groups_share_engine_time_equally(executor: ThreadPoolExecutor) -> None:
    clock = EngineClock()
    scheduler = PieceScheduler(1, executor, clock)
    gate = threading.Event()
    order: list[str] = []
    blocker = asyncio.create_task(
        scheduler.run(0.0, clock.piece(1.0, lambda: gate.wait(WAIT_S)), group="X")
    )
    await wait_until(lambda: scheduler.busy == 1)
    # A's pieces take twice as long as B's (the estimates are off; the time measured counts).
    pieces = [("A", n, 2.0) for n in range(3)] + [("B", n, 1.0) for n in range(6)]
    waiters = [
        asyncio.create_task(
            scheduler.run(
                float(n),
                clock.piece(cost, lambda g=g, n=n: order.append(f"{g}{n}")),
                group=g,
                cost=1.0,
            )
        )
        for g, n, cost in pieces
    ]
    await wait_until(lambda: scheduler.waiting == len(pieces))
    gate.set()
    await asyncio.gather(blocker, *waiters)
    # Both start level; then B gets two pieces for each of A's.
    assert "".join(name[0] for name in order) == "ABBABBABB"
    assert [name for name in order if name[0] == "B"] == [f"B{n}" for n in range(6)]


async def test_a_group_that_was_idle_earns_no_credit(executor: ThreadPoolExecutor) -> None:
    clock = EngineClock()
    scheduler = PieceScheduler(1, executor, clock)
    for _ in range(3):
        await scheduler.run(0.0, clock.piece(5.0), group="B")
    for _ in range(20):  # B is away; A keeps the engine busy
        await scheduler.run(0.0, clock.piece(5.0), group="A")
    gate = threading.Event()
    order: list[str] = []
    blocker = asyncio.create_task(
        scheduler.run(0.0, clock.piece(1.0, lambda: gate.wait(WAIT_S)), group="A")
    )
    await wait_until(lambda: scheduler.busy == 1)
    waiters = [
        asyncio.create_task(
            scheduler.run(float(n), clock.piece(1.0, lambda g=g: order.append(g)), group=g)
        )
        for n in range(4)
        for g in ("A", "B")
    ]
    await wait_until(lambda: scheduler.waiting == 8)
    gate.set()
    await asyncio.gather(blocker, *waiters)
    # B back: the next turn, then turns about, not all of its 85 s of absence first.
    assert "".join(order) == "BABABABA"


# --- a real worker ---------------------------------------------------------------------------


class SteppedEngine(LocalEngine):
    """Runs one piece each time the test calls :meth:`step`; records the pieces in order."""

    name = "stepped"

    def __init__(self) -> None:
        self.sample_rate = 16000
        self.warmup = False
        self.steps = threading.Semaphore(0)
        self.order: list[str] = []
        self.entered: list[str] = []  # pieces in the order they reached the engine
        self.in_flight = threading.Event()

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self.steps.release()

    def synthesize_piece(self, piece: str) -> bytes:
        self.entered.append(piece)
        self.in_flight.set()
        if not self.steps.acquire(timeout=WAIT_S):
            raise RuntimeError("the test never stepped the engine")
        self.order.append(piece)
        return b"\x00\x10" * (self.sample_rate // 20)  # 50 ms


async def submit(worker: WorkerClient, text: str, tenant: str) -> tuple[int, dict[str, Any]]:
    body = {"task_id": str(uuid.uuid4()), "text": text, "voice": "stepped", "tenant": tenant}
    response = await worker.http.post("/v1/tasks", json=body)
    return response.status_code, response.json()


async def pieces_waiting(worker: WorkerClient) -> int:
    metrics = (await worker.http.get("/metrics")).text
    line = next(line for line in metrics.splitlines() if line.startswith("aivtuber_tts_pieces_"))
    return int(float(line.split()[-1]))


async def engine_busy(worker: WorkerClient) -> int:
    metrics = (await worker.http.get("/metrics")).text
    line = next(line for line in metrics.splitlines() if line.startswith("aivtuber_tts_engine_"))
    return int(float(line.split()[-1]))


async def test_while_a_tenant_keeps_its_share_queued_another_tenants_line_starts_at_once() -> None:
    engine = SteppedEngine()
    async with running_recorder() as recorder:
        settings = sine_settings(
            recorder.url,
            voices={"stepped": SineVoice()},
            max_concurrent=1,
            max_queued=7,
            tenant_share=0.75,  # 8 places: one tenant may hold 6
        )
        async with running_worker(settings, engine_factory=factory_with({"stepped": engine})) as w:
            try:
                flood = "Flood one. Flood two. Flood three."
                for _ in range(6):
                    status, _ = await submit(w, flood, "alpha")
                    assert status == 202
                status, refusal = await submit(w, flood, "alpha")
                # Alpha's share of the queue is full; the rest is kept for the others.
                assert status == 503 and refusal["code"] == "busy", refusal
                assert "share" in refusal["message"]
                status, _ = await submit(w, "Beta speaks. Then more.", "beta")
                assert status == 202
                # One of alpha's pieces is in the engine and five more first pieces wait for
                # it; beta's first piece does not: it runs beside it, in the spare slot.
                await asyncio.to_thread(engine.in_flight.wait, WAIT_S)

                async def five_wait_two_run() -> bool:
                    return await pieces_waiting(w) == 5 and await engine_busy(w) == 2

                await wait_until(five_wait_two_run)
                # Both in the engine before any piece has finished.
                assert engine.entered == ["Flood one.", "Beta speaks."] and not engine.order
                engine.step(100)
                await recorder.wait_for(
                    lambda: (
                        len(recorder.tasks) == 7
                        and all(task.end for task in recorder.tasks.values())
                    )
                )
            finally:
                engine.step(100)
    assert "Beta speaks." in engine.order
    assert all(task.end and task.end.status == "completed" for task in recorder.tasks.values())


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# --- pre-emption with the real Piper voice ------------------------------------------------


class GatedSession:
    """Stands in for the Piper model's onnxruntime session: once armed, the next run waits
    (as a long run would still be going) until the scheduler stops it, then goes into
    onnxruntime, whose terminate flag is set by then."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.armed = False
        self.entered = threading.Event()
        self.stopped = threading.Event()
        self.terminated: list[str] = []

    def run(self, names: Any, feeds: Any, options: Any = None) -> Any:
        if not self.armed:
            return self.session.run(names, feeds, options)
        self.armed = False
        with stoppable(self.stopped.set):
            self.entered.set()
            self.stopped.wait(WAIT_S)
            try:
                return self.session.run(names, feeds, options)
            except Exception as exc:
                self.terminated.append(str(exc))
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class GatedPiper(PiperEngine):
    def _session(self, model: str | bytes, threads: int | None = None) -> Any:
        self.gate = GatedSession(super()._session(model, threads))
        return self.gate


def heard_words(task: RecordedTask) -> list[str]:
    return [word for frame in task.frames for _, _, word in frame.words or ()]


@pytest.mark.piper
async def test_a_preempted_piper_piece_runs_again_whole_after_the_newcomers() -> None:
    engine = GatedPiper(device="cpu", warmup=False)
    alpha_text = "This is the long line of the tenant that keeps the worker busy."
    beta_text = "Hello there."
    async with running_recorder(wait_s=60.0) as recorder:
        settings = sine_settings(recorder.url, voices={"joe": SineVoice()}, max_concurrent=1)
        async with running_worker(settings, engine_factory=factory_with({"joe": engine})) as w:
            engine.gate.armed = True
            alpha = await submit_to(w, alpha_text, "alpha")
            await asyncio.to_thread(engine.gate.entered.wait, WAIT_S)
            beta = await submit_to(w, beta_text, "beta")
            alpha_task, beta_task = await recorder.ended(alpha), await recorder.ended(beta)
            metrics = (await w.http.get("/metrics")).text
    # Alpha's piece was stopped inside onnxruntime, beta's line went first, then alpha's
    # piece ran again: its audio and words whole, once, and nothing of the stopped run.
    assert engine.gate.terminated and "terminate" in engine.gate.terminated[0]
    assert "aivtuber_tts_pieces_preempted_total 1.0" in metrics
    frames = [task_id for kind, task_id in recorder.log if kind == "frame"]
    assert frames.index(beta) < frames.index(alpha)
    for task, text in ((alpha_task, alpha_text), (beta_task, beta_text)):
        assert task.end is not None and task.end.status == "completed"
        assert heard_words(task) == written_words(text)
        assert [frame.chunk_id for frame in task.frames] == list(range(len(task.frames)))
    pcm = b"".join(frame.pcm for frame in alpha_task.frames)
    # Seconds of speech for a dozen words, not a fragment or a piece spoken twice.
    assert 2.0 < len(pcm) / 2 / engine.sample_rate < 6.0


async def submit_to(worker: WorkerClient, text: str, tenant: str) -> str:
    task_id = str(uuid.uuid4())
    body = {"task_id": task_id, "text": text, "voice": "joe", "tenant": tenant}
    response = await worker.http.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return task_id
