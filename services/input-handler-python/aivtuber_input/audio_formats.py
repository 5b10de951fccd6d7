"""Encoders for ``response_format`` of ``POST /v1/audio/speech``: PCM frames in, bytes out.

Every encoder works as the audio is made: :meth:`AudioEncoder.start` returns what goes before
the first sample (a WAV header), :meth:`~AudioEncoder.encode` the bytes of one PCM frame (s16le
mono) and :meth:`~AudioEncoder.finish` what is left at the end (the MP3 encoder's last
frames). Nothing is buffered beyond what the codec itself needs.

- ``pcm``: the frames as they are, 16-bit little-endian mono at the voice's rate.
- ``wav``: a 44-byte header whose sizes say "unknown length" (0xFFFFFFFF), then the PCM,
  streamed as Kokoro-FastAPI does; players and ``wave``/libsndfile read to the end of the body.
- ``mp3``: LAME through ``lameenc`` (bundled in its wheels, no system codec), 64 kbit/s CBR.

``opus``, ``aac`` and ``flac`` are refused (:data:`UNSUPPORTED`): no well-kept PyPI package
encodes them as a stream without a system library or a bundled FFmpeg of tens of megabytes.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

import lameenc

__all__ = [
    "CONTENT_TYPES",
    "SUPPORTED",
    "UNSUPPORTED",
    "AudioEncoder",
    "Mp3Encoder",
    "PcmEncoder",
    "WavEncoder",
    "make_encoder",
    "open_ended_wav_header",
]

SUPPORTED: Final = ("pcm", "wav", "mp3")
UNSUPPORTED: Final = ("opus", "aac", "flac")
CONTENT_TYPES: Final = {"pcm": "audio/pcm", "wav": "audio/wav", "mp3": "audio/mpeg"}

# RIFF and data sizes of a WAV whose length is not known when its header is sent.
UNKNOWN_SIZE = 0xFFFFFFFF
MP3_KBPS = 64
MP3_QUALITY = 5  # LAME's 2 (best, slowest) .. 7 (fastest); 5 is its own default speed/quality


class AudioEncoder(Protocol):
    def start(self) -> bytes: ...

    def encode(self, pcm: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class PcmEncoder:
    def start(self) -> bytes:
        return b""

    def encode(self, pcm: bytes) -> bytes:
        return pcm

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def start(self) -> bytes:
        return open_ended_wav_header(self.sample_rate)


class Mp3Encoder:
    def __init__(self, sample_rate: int) -> None:
        self._lame = lameenc.Encoder()
        self._lame.set_channels(1)
        self._lame.set_in_sample_rate(sample_rate)
        self._lame.set_bit_rate(MP3_KBPS)
        self._lame.set_quality(MP3_QUALITY)

    def start(self) -> bytes:
        return b""

    def encode(self, pcm: bytes) -> bytes:
        return bytes(self._lame.encode(pcm))

    def finish(self) -> bytes:
        return bytes(self._lame.flush())


def make_encoder(response_format: str, sample_rate: int) -> AudioEncoder:
    match response_format:
        case "pcm":
            return PcmEncoder()
        case "wav":
            return WavEncoder(sample_rate)
        case "mp3":
            return Mp3Encoder(sample_rate)
    raise ValueError(f"no encoder for {response_format!r}")


def open_ended_wav_header(sample_rate: int, channels: int = 1) -> bytes:
    """A PCM s16le WAV header for a body of unknown length."""
    block_align = channels * 2  # bytes per sample frame; 16 below: bits per sample
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16
        )
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE - 36)
    )
