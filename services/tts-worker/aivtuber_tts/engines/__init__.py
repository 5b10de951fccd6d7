"""Engines (one module each) behind the :class:`Engine` interface, and an engine-only timer.

:func:`build_engine` turns a voice's settings into an engine; :func:`measure` times an
in-process engine directly, without the worker around it (the bench compares the time to
first audio through the whole stack with this)::

    engine = build_engine("joe", PiperVoice(), max_concurrent=2)
    engine.load_and_warm_up()
    print(measure(engine, "Hi chat! Welcome back to the stream, it is good to see you."))
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, assert_never

import httpx
import numpy as np

from aivtuber_common.config import (
    HibariVoice,
    HttpVoice,
    KokoroJaVoice,
    PiperVoice,
    RivaVoice,
    SineVoice,
    VoiceSettings,
)

from ..errors import EngineError
from ..splitting import split_sentences
from ..visemes import pcm_of
from .base import Engine, LocalEngine, RunPiece
from .hibari import HibariEngine
from .http import HttpEngine
from .kokoro_ja import KokoroJaEngine
from .piper import PiperEngine, cuda_available
from .sine import SineEngine

__all__ = [
    "Engine",
    "EngineError",
    "EngineFactory",
    "EngineTiming",
    "HibariEngine",
    "HttpEngine",
    "KokoroJaEngine",
    "LocalEngine",
    "PiperEngine",
    "RunPiece",
    "SineEngine",
    "build_engine",
    "cuda_available",
    "first_audible_sample",
    "intra_op_threads",
    "measure",
    "wide_threads",
]


def intra_op_threads(
    voice: PiperVoice | HibariVoice | KokoroJaVoice, max_concurrent: int, cpus: int | None = None
) -> int:
    """The voice's setting, else the engine's default: hibari one thread (it runs ~130x real
    time on one core), kokoro_ja every core, piper the cores shared among the slots."""
    if voice.intra_op_threads:
        return voice.intra_op_threads
    cores = cpus or os.cpu_count() or 1
    if isinstance(voice, HibariVoice):
        return 1
    if isinstance(voice, KokoroJaVoice):
        # Its calls last 0.5-2 s whatever the text: latency needs every core (idle threads
        # sleep, so two calls at once share the cores rather than spin against each other).
        return cores
    return max(1, cores // max(1, max_concurrent))


# Threads of Piper's second session, for pieces that run alone (see engines/piper.py): two
# cut the first audio of one idle stream most; more are not measured.
WIDE_THREADS = 2


def wide_threads(voice: PiperVoice, cpus: int | None = None) -> int:
    """Threads of Piper's wide session: 0 (none) when intra_op_threads is set explicitly."""
    if voice.intra_op_threads:
        return 0
    return min(WIDE_THREADS, cpus or os.cpu_count() or 1)


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
    match voice:
        case PiperVoice():
            return PiperEngine(
                model=voice.model,
                device=voice.device,
                intra_op_threads=intra_op_threads(voice, max_concurrent),
                warmup=warmup,
                visemes=voice.visemes,
                language=voice.language,
                wide_threads=wide_threads(voice),
            )
        case HibariVoice():
            return HibariEngine(
                voice.bundled_speaker,
                intra_op_threads=intra_op_threads(voice, max_concurrent),
                warmup=warmup,
                visemes=voice.visemes,
            )
        case KokoroJaVoice():
            # Voices fills cache_dir in from tts_worker.data_dir; None: $KOKORO_JA_CACHE.
            return KokoroJaEngine(
                voice.bundled_speaker,
                cache_dir=Path(voice.cache_dir).expanduser() if voice.cache_dir else None,
                intra_op_threads=intra_op_threads(voice, max_concurrent),
                warmup=warmup,
                visemes=voice.visemes,
            )
        case SineVoice():
            return SineEngine(voice.sample_rate, voice.frequency_hz, voice.ms_per_char)
        case HttpVoice():
            if client is None:
                raise ValueError("an http voice needs an httpx client")
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
        case RivaVoice():
            from .riva import RivaEngine  # grpc is an optional dependency (extra "riva")

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
        case unknown:
            assert_never(unknown)


@dataclass(frozen=True)
class EngineTiming:
    """One text synthesised directly on a loaded engine, piece by piece as the worker does."""

    first_chunk_ms: float  # the first piece (first clause) alone: the engine's own TTFA
    # when the first sample above -40 dBFS would be heard, playing each piece on arrival
    first_audible_ms: float | None
    first_sentence_ms: float  # the whole first sentence in one call, for comparison
    total_ms: float  # every piece, one after the other
    audio_ms: float
    rtf: float  # total_ms / audio_ms
    pieces: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


AUDIBLE = 328  # -40 dBFS of int16 full scale (32768 * 10 ** (-40 / 20))


def first_audible_sample(pcm: bytes) -> int | None:
    """Index of the first sample above -40 dBFS in s16le ``pcm``, None when all is quieter."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > AUDIBLE)
    return int(loud[0]) if loud.size else None


def measure(engine: LocalEngine, text: str) -> EngineTiming:
    """Blocking. Time ``text`` on ``engine`` (loaded and warmed up) without the worker."""
    pieces = engine.split(text)
    if not pieces:
        raise ValueError("nothing to synthesise in an empty text")
    started = time.perf_counter()
    audio_bytes = 0
    first_chunk = 0.0
    first_audible: float | None = None
    play_end = 0.0  # when the audio made so far has finished playing
    for index, piece in enumerate(pieces):
        pcm = pcm_of(engine.synthesize_piece(piece))
        made = time.perf_counter() - started
        if index == 0:
            first_chunk = made
        play_start = max(made, play_end)
        if first_audible is None and (at := first_audible_sample(pcm)) is not None:
            first_audible = play_start + at / engine.sample_rate
        play_end = play_start + len(pcm) / 2 / engine.sample_rate
        audio_bytes += len(pcm)
    total = time.perf_counter() - started
    sentence_started = time.perf_counter()
    engine.synthesize_piece(split_sentences(text)[0])
    first_sentence = time.perf_counter() - sentence_started
    audio_s = audio_bytes / 2 / engine.sample_rate
    return EngineTiming(
        first_chunk_ms=first_chunk * 1000,
        first_audible_ms=None if first_audible is None else first_audible * 1000,
        first_sentence_ms=first_sentence * 1000,
        total_ms=total * 1000,
        audio_ms=audio_s * 1000,
        rtf=total / audio_s if audio_s else float("inf"),
        pieces=len(pieces),
    )
