"""``sine``: a deterministic tone with no model, for tests and smoke checks.

Each piece lasts ``ms_per_char`` per character, so the duration follows the text, and the
tone's loudness wobbles at a syllable-like rate so a mouth driven by ``level`` moves.
"""

from __future__ import annotations

import numpy as np

from .base import LocalEngine

__all__ = ["SineEngine"]

FADE_S = 0.005  # fade in and out so pieces do not click
AMPLITUDE = 0.5  # of full scale
WOBBLE_HZ = 4.0


class SineEngine(LocalEngine):
    name = "sine"
    device = "cpu"

    def __init__(self, sample_rate: int, frequency_hz: float, ms_per_char: float) -> None:
        self.sample_rate = sample_rate
        self.frequency_hz = frequency_hz
        self.ms_per_char = ms_per_char
        self.warmup = False  # nothing to warm

    def synthesize_piece(self, piece: str) -> bytes:
        samples = int(len(piece) * self.ms_per_char * self.sample_rate / 1000)
        if samples <= 0:
            return b""
        t = np.arange(samples, dtype=np.float64) / self.sample_rate
        envelope = 0.65 + 0.35 * np.sin(2 * np.pi * WOBBLE_HZ * t)
        fade = min(samples // 2, int(FADE_S * self.sample_rate))
        if fade:
            ramp = np.linspace(0.0, 1.0, fade)
            envelope[:fade] *= ramp
            envelope[-fade:] *= ramp[::-1]
        tone = np.sin(2 * np.pi * self.frequency_hz * t) * envelope * AMPLITUDE
        return (tone * 32767).astype("<i2").tobytes()
