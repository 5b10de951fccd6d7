"""``hibari``: a 7.9 MB English voice (hibari-tts, Apache-2.0) at 24 kHz, ~130x real time on
one core.

Only the voice inside the package (``heart``) is offered: hibari downloads its other voices
from a model hub on first use, and a worker must never download, so any other ``speaker``
is refused by the config check and again here (``voice_path(..., download_missing=False)``).

The package's :class:`hibari.Hibari` does the G2P and the signal processing; its ONNX
session is replaced by one on the same model with the ``/Round_output_0`` duration tensor
added as an output (see :mod:`.durations`), so each call also says how long every phoneme
lasts: the silent pads are trimmed exactly, and the mouth shapes and the words are timed
(each word phonemised alone by the same G2P, cached; see :mod:`aivtuber_tts.words`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnxruntime
import structlog

from ..errors import EngineError
from ..visemes import ENGLISH, Speech
from ..words import Phone, time_words, written_words
from .base import LocalEngine
from .durations import timed_piece, with_output
from .piper import CPU, session_options

__all__ = ["BUNDLED_SPEAKERS", "HibariEngine"]

log = structlog.get_logger("aivtuber_tts.engines.hibari")

BUNDLED_SPEAKERS = ("heart",)
DURATIONS = "/Round_output_0"
# Keep half a synthesis window (1200 samples, centred) of the lead pad: the first frame's
# energy spreads that far before its boundary. The model's onsets start a little earlier
# still (up to ~1450 samples, measured, at -40 dBFS after normalisation), but that is the
# window's faint ramp; keeping it all cost 27 ms of silence before the first audible sample.
LEAD_KEEP = 600
MAX_TAIL_PAUSE = 4800  # 200 ms: a natural pause after a sentence or clause
PAUSES = ".,!?;:…—–\"'()“” "
WORD_CACHE = 4096  # phonemised words kept


class HibariEngine(LocalEngine):
    name = "hibari"
    language = "en-US"
    sample_rate = 24000

    def __init__(
        self,
        speaker: str = "heart",
        intra_op_threads: int = 1,
        warmup: bool = True,
        visemes: bool = True,
    ) -> None:
        self.speaker = speaker
        self.visemes = visemes
        self.intra_op_threads = max(1, intra_op_threads)
        self.warmup = warmup
        self._tts: Any = None
        self._rng = np.random.default_rng()
        # Words repeat (the, you, chat): each is phonemised once.
        self._word_phonemes = functools.lru_cache(maxsize=WORD_CACHE)(self._phonemize_word)

    def load(self) -> None:
        if self.speaker not in BUNDLED_SPEAKERS:
            raise EngineError(
                f"hibari voice {self.speaker!r} is not bundled with hibari-tts (only "
                f"{', '.join(BUNDLED_SPEAKERS)}); other voices would be downloaded"
            )
        try:
            import hibari
            from hibari.voices import voice_path
        except ImportError as exc:
            raise EngineError(f"the hibari engine needs hibari-tts installed: {exc}") from exc
        path = voice_path(self.speaker, download_missing=False)
        tts = hibari.Hibari(voice=self.speaker, model=path, threads=self.intra_op_threads)
        tts.sess = onnxruntime.InferenceSession(
            with_output(path, DURATIONS),
            sess_options=session_options(self.intra_op_threads),
            providers=[CPU],
        )
        self.sample_rate = int(hibari.SAMPLE_RATE)
        tts.g2p  # noqa: B018 - loads the lexicons now, not on the first viewer's line
        self._tts = tts
        log.info("hibari_loaded", speaker=self.speaker, intra_op_threads=self.intra_op_threads)

    def synthesize_piece(self, piece: str) -> Speech:
        if self._tts is None:
            raise EngineError("the hibari voice is not loaded yet")
        from hibari import dsp

        pcm = bytearray()
        marks: list[tuple[int, Any]] = []
        spoken: list[Phone] = []
        for phonemes in self._tts.phonemize(piece):
            ids = self._tts.ids(phonemes)
            if len(ids) < 3:
                continue
            outputs = self._tts.sess.run(
                None,
                {"ids": np.asarray([ids], np.int64), "speed": np.asarray([1.0], np.float32)},
            )
            audio = dsp.synth(*(output[0] for output in outputs[:6]), self._rng)
            symbols = ["^", *(c for c in phonemes if c in self._tts.vocab), "$"]
            timed, timing = timed_piece(
                audio,
                outputs[6],
                symbols,
                ENGLISH,
                sample_rate=self.sample_rate,
                lead_keep=LEAD_KEEP if not pcm else 0,
                max_tail_pause=MAX_TAIL_PAUSE,
                pause_symbols=PAUSES,
            )
            base = len(pcm) // 2
            marks.extend((base + offset, shape) for offset, shape in timed.marks)
            spoken.extend((symbol, base + start, samples) for symbol, start, samples in timing)
            pcm += timed.pcm
        words = written_words(piece)
        timed_words = time_words(
            words, [self._word_phonemes(w) for w in words], spoken, len(pcm) // 2
        )
        return Speech(bytes(pcm), tuple(marks), timed_words)

    def _phonemize_word(self, word: str) -> str:
        return "".join(self._tts.phonemize(word))
