"""The small interface every engine implements, and the base of the in-process engines.

An engine turns text into PCM s16le mono pieces at its ``sample_rate``. The worker calls
:meth:`Engine.stream`, handing it ``run``: the scheduler's way of running one blocking piece
of work in an engine slot (a thread), so inference never blocks the event loop and a new
task's first piece can be served before older tasks' later sentences.

In-process engines (Piper, hibari, kokoro-ja, the sine tone) derive from :class:`LocalEngine`:
they only say how to load and how to synthesise one piece; the text is cut by the engine's
``split`` (:func:`split_text`, or the Japanese splitter) so the first clause comes out alone.
Remote engines (``http``) stream by themselves and ignore ``run``.

A piece is PCM bytes, or :class:`~aivtuber_tts.visemes.Speech` (PCM plus where each mouth
shape starts) from engines that know their phoneme timing.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

import structlog

from ..errors import EngineError
from ..scheduler import Preempted
from ..splitting import split_text
from ..visemes import Speech

__all__ = ["Engine", "LocalEngine", "Piece", "RunPiece", "Speech"]

Piece = bytes | Speech

T = TypeVar("T")
# Runs a blocking callable in an engine slot and returns its result; the second argument is
# the piece's length in characters, from which the scheduler estimates its cost.
RunPiece = Callable[[Callable[[], Any], int], Awaitable[Any]]

log = structlog.get_logger("aivtuber_tts.engines")

# One medium line: the first inference of a session (and of each thread) sizes its buffers;
# after this one, the first real clause runs at full speed.
WARMUP_TEXTS = ("Hello there, welcome back to the stream.",)
WARMUP_BARRIER_S = 5.0


class Engine(Protocol):
    name: str  # piper | hibari | kokoro_ja | sine | http
    device: str  # cpu | cuda | remote: what is actually in use once started
    sample_rate: int
    language: str  # BCP 47 (en-US, ja); "und" when unknown

    async def start(self, executor: Executor | None = None, threads: int = 1) -> None:
        """Load and warm up (on ``threads`` threads of ``executor``, the ones that will run
        the pieces); raises EngineError with one sentence when that fails."""
        ...

    async def aclose(self) -> None: ...

    def stream(self, text: str, run: RunPiece) -> AsyncGenerator[Piece, None]:
        """PCM pieces in order, each as soon as it is made. Raises EngineError."""
        ...


class LocalEngine:
    """An engine running in this process; subclasses implement load and synthesize_piece."""

    name = "local"
    device = "cpu"
    sample_rate = 22050
    language = "und"
    warmup = True
    visemes = True  # False: a timed engine's pieces go out as plain PCM, no track
    warmup_texts: tuple[str, ...] = WARMUP_TEXTS
    load_s: float | None = None  # load + warm-up time, for /health and the bench

    def load(self) -> None:
        """Blocking: read the model, create the session. Called once, in a thread."""

    def synthesize_piece(self, piece: str) -> Piece:
        """Blocking: the PCM of one piece of text (with its mouth shapes if timed)."""
        raise NotImplementedError

    def split(self, text: str) -> list[str]:
        """The pieces the worker synthesises one after the other, first clause first."""
        return split_text(text)

    def synthesize(self, text: str) -> Iterator[Piece]:
        """Blocking: each piece of ``text``, as the worker would produce them."""
        for piece in self.split(text):
            yield self._piece(piece)

    def load_and_warm_up(self) -> None:
        started = time.perf_counter()
        self.load()
        loaded = time.perf_counter()
        if self.warmup:
            # The first inference of an onnxruntime session allocates its buffers and
            # picks kernels; do that now, not on a viewer's first sentence.
            for text in self.warmup_texts:
                self.synthesize_piece(text)
        self.load_s = time.perf_counter() - started
        self._log_ready(loaded - started)

    async def start(self, executor: Executor | None = None, threads: int = 1) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await loop.run_in_executor(executor, self.load)
        loaded = time.perf_counter()
        if self.warmup:
            # Each engine thread warms itself: a thread's first inference is slow too
            # (its scratch buffers), so warming one thread left the first tasks slow.
            barrier = threading.Barrier(threads, timeout=WARMUP_BARRIER_S)
            await asyncio.gather(
                *(
                    loop.run_in_executor(executor, self._warm_up_thread, barrier)
                    for _ in range(threads)
                )
            )
        self.load_s = time.perf_counter() - started
        self._log_ready(loaded - started)

    def _warm_up_thread(self, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()  # so that every call lands on its own thread
        except threading.BrokenBarrierError:
            pass  # fewer threads than asked for: warm what there is
        for text in self.warmup_texts:
            self.synthesize_piece(text)

    def _log_ready(self, load_s: float) -> None:
        assert self.load_s is not None
        log.info(
            "engine_ready",
            engine=self.name,
            load_s=round(load_s, 3),
            warmup_s=round(self.load_s - load_s, 3),
        )

    async def aclose(self) -> None:
        return None

    async def stream(self, text: str, run: RunPiece) -> AsyncGenerator[Piece, None]:
        for piece in self.split(text):
            made: Piece = await run(functools.partial(self._piece, piece), len(piece))
            if made:
                yield made

    def _piece(self, piece: str) -> Piece:
        try:
            made = self.synthesize_piece(piece)
            return made.pcm if isinstance(made, Speech) and not self.visemes else made
        except (EngineError, Preempted):  # Preempted: the scheduler runs the piece again
            raise
        except Exception as exc:  # onnxruntime and espeak raise assorted types: map them here
            log.error("engine_failed", engine=self.name, piece=piece, exc_info=True)
            raise EngineError(f"The {self.name} engine failed: {exc}") from exc
