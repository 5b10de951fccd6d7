"""PCM helpers shared by the worker (framing, levels) and the output handler (WAV files)."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import numpy as np

__all__ = ["FrameCutter", "level", "samples_per_frame", "wav_bytes", "wav_header"]

SAMPLE_WIDTH = 2  # pcm_s16le


def samples_per_frame(sample_rate: int, frame_ms: int) -> int:
    return max(1, sample_rate * frame_ms // 1000)


def level(pcm: bytes | memoryview) -> float:
    """RMS loudness of s16le PCM, normalised to 0.0-1.0 (full-scale square wave = 1.0)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    if samples.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return round(min(1.0, rms / 32768.0), 4)


class FrameCutter:
    """Cuts a stream of PCM pieces of any size into frames of exactly ``frame_bytes``.

    Pieces are pushed as the engine makes them; whole frames come out at once; what is left
    waits for more, and :meth:`flush` returns the shorter last frame.
    """

    def __init__(self, sample_rate: int, frame_ms: int) -> None:
        self.frame_bytes = samples_per_frame(sample_rate, frame_ms) * SAMPLE_WIDTH
        self._pending = bytearray()

    def push(self, pcm: bytes | memoryview) -> Iterator[bytes]:
        self._pending += pcm
        usable = len(self._pending) - len(self._pending) % self.frame_bytes
        for start in range(0, usable, self.frame_bytes):
            yield bytes(self._pending[start : start + self.frame_bytes])
        del self._pending[:usable]

    def flush(self) -> bytes | None:
        # An odd trailing byte cannot be a sample; drop it rather than send half a sample.
        whole = len(self._pending) - len(self._pending) % SAMPLE_WIDTH
        frame = bytes(self._pending[:whole]) if whole else None
        self._pending.clear()
        return frame


def wav_header(sample_rate: int, data_bytes: int, channels: int = 1) -> bytes:
    """The 44-byte RIFF header of a PCM s16le WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(SAMPLE_WIDTH)
        writer.setframerate(sample_rate)
        writer.setnframes(data_bytes // (SAMPLE_WIDTH * channels))
    header = buffer.getvalue()
    # wave writes the sizes it was told; patch RIFF/data sizes for the data that follows.
    riff_size = 36 + data_bytes
    return (
        header[:4]
        + riff_size.to_bytes(4, "little")
        + header[8:40]
        + data_bytes.to_bytes(4, "little")
    )


def wav_bytes(sample_rate: int, pcm: bytes) -> bytes:
    return wav_header(sample_rate, len(pcm)) + pcm
