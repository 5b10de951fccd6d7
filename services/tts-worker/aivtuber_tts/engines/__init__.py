"""Engines (one module each) behind the :class:`Engine` interface, and an engine-only timer.

:func:`build_engine` turns a voice's settings into an engine; :func:`measure` times an
in-process engine directly, without the worker around it (the bench compares the time to
first audio through the whole stack with this)::

    engine = build_engine("joe", VoiceSettings(), max_concurrent=2)
    engine.load_and_warm_up()
    print(measure(engine, "Hi chat! Welcome back to the stream, it is good to see you."))
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import httpx

from aivtuber_common.config import VoiceSettings

from ..errors import EngineError
from ..splitting import split_sentences, split_text
from .base import Engine, LocalEngine, RunPiece
from .http import HttpEngine
from .piper import PiperEngine, cuda_available
from .sine import SineEngine

__all__ = [
    "Engine",
    "EngineError",
    "EngineFactory",
    "EngineTiming",
    "HttpEngine",
    "LocalEngine",
    "PiperEngine",
    "RunPiece",
    "SineEngine",
    "build_engine",
    "cuda_available",
    "intra_op_threads",
    "measure",
]


def intra_op_threads(voice: VoiceSettings, max_concurrent: int, cpus: int | None = None) -> int:
    """The voice's setting, else the cores shared evenly among the engine slots."""
    if voice.intra_op_threads:
        return voice.intra_op_threads
    return max(1, (cpus or os.cpu_count() or 1) // max(1, max_concurrent))


class EngineFactory(Protocol):
    """What builds an engine for a voice; :func:`build_engine`, or a test's own."""

    def __call__(
        self,
        voice_id: str,
        voice: VoiceSettings,
        max_concurrent: int = 1,
        client: httpx.AsyncClient | None = None,
        warmup: bool = True,
    ) -> Engine: ...


def build_engine(
    voice_id: str,
    voice: VoiceSettings,
    max_concurrent: int = 1,
    client: httpx.AsyncClient | None = None,
    warmup: bool = True,
) -> Engine:
    """An engine for one configured voice, not loaded yet (see ``Engine.start``)."""
    match voice.engine:
        case "piper":
            return PiperEngine(
                model=voice.model,
                device=voice.device,
                intra_op_threads=intra_op_threads(voice, max_concurrent),
                warmup=warmup,
            )
        case "sine":
            return SineEngine(voice.sample_rate, voice.frequency_hz, voice.ms_per_char)
        case "http":
            if client is None or voice.url is None:
                raise ValueError("an http voice needs a url and an httpx client")
            return HttpEngine(
                client,
                voice.url,
                voice=voice.remote_voice or voice_id,
                sample_rate=voice.sample_rate,
                api_key=voice.api_key,
                auth=voice.auth,
                timeout_s=voice.timeout_s,
                response_format=voice.response_format,
            )
        case "riva":
            from .riva import RivaEngine  # grpc is an optional dependency (extra "riva")

            assert voice.server is not None  # VoiceSettings demands it
            return RivaEngine(
                voice.server,
                voice_name=voice.remote_voice,
                language_code=voice.language_code,
                sample_rate=voice.sample_rate,
                use_ssl=voice.use_ssl,
                ssl_cert=voice.ssl_cert,
                api_key=voice.api_key,
                timeout_s=voice.timeout_s,
            )
        case other:
            raise ValueError(f"unknown engine {other!r}")


@dataclass(frozen=True)
class EngineTiming:
    """One text synthesised directly on a loaded engine, piece by piece as the worker does."""

    first_chunk_ms: float  # the first piece (first clause) alone: the engine's own TTFA
    first_sentence_ms: float  # the whole first sentence in one call, for comparison
    total_ms: float  # every piece, one after the other
    audio_ms: float
    rtf: float  # total_ms / audio_ms
    pieces: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure(engine: LocalEngine, text: str) -> EngineTiming:
    """Blocking. Time ``text`` on ``engine`` (loaded and warmed up) without the worker."""
    pieces = split_text(text)
    if not pieces:
        raise ValueError("nothing to synthesise in an empty text")
    started = time.perf_counter()
    audio_bytes = 0
    first_chunk = 0.0
    for index, piece in enumerate(pieces):
        audio_bytes += len(engine.synthesize_piece(piece))
        if index == 0:
            first_chunk = time.perf_counter() - started
    total = time.perf_counter() - started
    sentence_started = time.perf_counter()
    engine.synthesize_piece(split_sentences(text)[0])
    first_sentence = time.perf_counter() - sentence_started
    audio_s = audio_bytes / 2 / engine.sample_rate
    return EngineTiming(
        first_chunk_ms=first_chunk * 1000,
        first_sentence_ms=first_sentence * 1000,
        total_ms=total * 1000,
        audio_ms=audio_s * 1000,
        rtf=total / audio_s if audio_s else float("inf"),
        pieces=len(pieces),
    )
