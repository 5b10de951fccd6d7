"""What hibari and kokoro-ja share: a model whose per-phoneme durations are exposed at load
time, and the raw audio turned into a trimmed, normalised, timed piece.

Both models compute how many frames each phoneme id lasts (a ``Round`` node: units of 600
samples at 24 kHz, and the units times 600 add up exactly to the audio length) but do not
output it. :func:`with_output` adds that tensor as a graph output in memory
(:mod:`~aivtuber_tts.engines.onnx_graph`: nothing is written to disk, the package's files
are never touched).

:func:`timed_piece` then:

* trims the silent pads the models put around every call: the first id (a pad) lasts
  300-350 ms, so the first audible sound would come that late. The cut keeps
  ``lead_keep`` samples of it, because the synthesis windows spread a phoneme's onset
  before its duration boundary;
* caps the trailing pause: the end pad goes, and the final punctuation's silence is kept
  only up to ``max_tail_pause`` so consecutive pieces keep a natural, not a half-second, gap;
* normalises loudness to Piper's target (Piper scales each sentence to a peak of full scale;
  hibari alone peaks around 0.36, about -27 dBFS);
* fades the first 2.5 ms in so the cut cannot click;
* maps the durations to mouth-shape marks with the language's table, and hands back the
  phonemes with their timing in the trimmed piece (for :mod:`aivtuber_tts.words`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aivtuber_common.visemes import Shape

from ..errors import EngineError
from ..visemes import Speech, marks_from_durations, trim_marks
from ..words import Phone, phones
from . import onnx_graph

__all__ = ["FRAME_UNIT", "timed_piece", "with_output"]

FRAME_UNIT = 600  # samples per duration unit of both models (24 kHz)
FADE_IN_S = 0.0025
PIPER_PEAK = 1.0  # piper's SynthesisConfig.normalize_audio: each sentence to full-scale peak


def with_output(model: str | os.PathLike[str], tensor: str) -> bytes:
    """The model's bytes with ``tensor`` (an intermediate, float) added as an output."""
    try:
        data = Path(model).read_bytes()
        graph = onnx_graph.scan(data)
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the model {model}: {exc}") from exc
    if tensor not in graph.produced_by:
        raise EngineError(f"the model {model} has no tensor {tensor!r} to read durations from")
    if tensor in graph.outputs:
        return data
    return onnx_graph.with_output(data, tensor, onnx_graph.FLOAT)


def timed_piece(
    audio: np.ndarray,
    durations: np.ndarray,
    symbols: Sequence[str],
    table: Mapping[str, Shape | None],
    *,
    sample_rate: int,
    lead_keep: int,
    max_tail_pause: int,
    pause_symbols: str,
) -> tuple[Speech, list[Phone]]:
    """``audio`` (float32) of ids named ``symbols`` (pads included) lasting ``durations``
    units each, as a trimmed, normalised :class:`Speech`, and the symbols' timing in it."""
    units = np.asarray(durations, dtype=np.int64).ravel()
    samples = units * FRAME_UNIT
    audio = np.asarray(audio, dtype=np.float32).ravel()
    if len(units) != len(symbols) or int(samples.sum()) != len(audio):
        # Never expected (the model computes one from the other); keep the audio anyway.
        return Speech(_to_pcm(_normalise(audio)), ()), []
    start = max(0, int(samples[0]) - lead_keep)
    # The end pad goes; trailing pauses (punctuation) are kept up to max_tail_pause.
    end = len(audio) - int(samples[-1])
    last = len(symbols) - 2
    pause = 0
    while last > 0 and all(symbol in pause_symbols for symbol in symbols[last]):
        pause += int(samples[last])
        last -= 1
    end -= max(0, pause - max_tail_pause)
    if end <= start:
        return Speech(b"", ()), []
    segments = list(zip(symbols, samples.tolist(), strict=True))
    marks = marks_from_durations(segments, table)
    piece = audio[start:end].copy()
    fade = min(len(piece), int(FADE_IN_S * sample_rate))
    piece[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    timed = Speech(_to_pcm(_normalise(piece)), tuple(trim_marks(marks, start, end)))
    return timed, phones(segments, -start)


def _normalise(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-8:
        return np.zeros_like(audio)
    return audio * (PIPER_PEAK / peak)


def _to_pcm(audio: np.ndarray) -> bytes:
    # As piper converts: scale by 32767 and clip.
    return np.clip(audio * 32767.0, -32767, 32767).astype("<i2").tobytes()
