"""The small interface every engine implements, and the base of the in-process engines.

An engine turns text into PCM s16le mono pieces at its ``sample_rate``. The worker calls
:meth:`Engine.stream`, handing it ``run``: the scheduler's way of running one blocking piece
of work in an engine slot (a thread), so inference never blocks the event loop and a new
task's first piece can be served before older tasks' later sentences.

In-process engines (Piper, the sine tone) derive from :class:`LocalEngine`: they only say how
to load and how to synthesise one piece; the text is cut by :func:`split_text` so the first
clause comes out alone. Remote engines (``http``) stream by themselves and ignore ``run``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

import structlog

from ..errors import EngineError
from ..splitting import split_text

__all__ = ["Engine", "LocalEngine", "RunPiece"]

T = TypeVar("T")
# Runs a blocking callable in an engine slot and returns its result.
RunPiece = Callable[[Callable[[], Any]], Awaitable[Any]]

log = structlog.get_logger("aivtuber_tts.engines")

WARMUP_TEXTS = ("Hello there, welcome back.", "This short sentence warms the voice up.")


class Engine(Protocol):
    name: str  # piper | sine | http
    device: str  # cpu | cuda | remote: what is actually in use once started
    sample_rate: int

    async def start(self) -> None:
        """Load and warm up; raises EngineError with one sentence when that fails."""
        ...

    async def aclose(self) -> None: ...

    def stream(self, text: str, run: RunPiece) -> AsyncIterator[bytes]:
        """PCM pieces in order, each as soon as it is made. Raises EngineError."""
        ...


class LocalEngine:
    """An engine running in this process; subclasses implement load and synthesize_piece."""

    name = "local"
    device = "cpu"
    sample_rate = 22050
    warmup = True
    load_s: float | None = None  # load + warm-up time, for /health and the bench

    def load(self) -> None:
        """Blocking: read the model, create the session. Called once, in a thread."""

    def synthesize_piece(self, piece: str) -> bytes:
        """Blocking: the PCM of one piece of text."""
        raise NotImplementedError

    def synthesize(self, text: str) -> Iterator[bytes]:
        """Blocking: the PCM of each piece of ``text``, as the worker would produce them."""
        for piece in split_text(text):
            yield self._piece(piece)

    def load_and_warm_up(self) -> None:
        started = time.perf_counter()
        self.load()
        if self.warmup:
            # The first inference of an onnxruntime session allocates its buffers and
            # picks kernels; do that now, not on a viewer's first sentence.
            for text in WARMUP_TEXTS:
                self.synthesize_piece(text)
        self.load_s = time.perf_counter() - started

    async def start(self) -> None:
        await asyncio.to_thread(self.load_and_warm_up)

    async def aclose(self) -> None:
        return None

    async def stream(self, text: str, run: RunPiece) -> AsyncIterator[bytes]:
        for piece in split_text(text):
            pcm = await run(lambda piece=piece: self._piece(piece))
            if pcm:
                yield pcm

    def _piece(self, piece: str) -> bytes:
        try:
            return self.synthesize_piece(piece)
        except EngineError:
            raise
        except Exception as exc:  # onnxruntime and espeak raise assorted types: map them here
            log.error("engine_failed", engine=self.name, piece=piece, exc_info=True)
            raise EngineError(f"The {self.name} engine failed: {exc}") from exc
