"""Encoders for ``response_format`` of ``POST /v1/audio/speech``: PCM frames in, bytes out.

Every encoder works as the audio is made: :meth:`AudioEncoder.start` returns what goes before
the first sample (a WAV header), :meth:`~AudioEncoder.encode` the bytes of one PCM frame (s16le
mono) and :meth:`~AudioEncoder.finish` what is left at the end (the MP3 encoder's last
frames). Nothing is buffered beyond what the codec itself needs.

- ``pcm``: the frames as they are, 16-bit little-endian mono at the voice's rate.
- ``wav``: a 44-byte header whose sizes say "unknown length" (0xFFFFFFFF), then the PCM,
  streamed as Kokoro-FastAPI does; players and ``wave``/libsndfile read to the end of the body.
- ``mp3``: LAME through ``lameenc`` (bundled in its wheels, no system codec), 64 kbit/s CBR.
- ``opus``: Opus in Ogg (``audio/ogg``), 48 kHz (libopus takes no 22.05/24 kHz input, so
  the voice is resampled), 32 kbit/s, 20 ms packets; each Ogg page is written out as soon
  as it holds a packet (``page_duration`` 20 ms), so the body streams as it is encoded.
- ``aac``: AAC-LC in ADTS frames (``audio/aac``, what OpenAI sends), at the voice's rate.
- ``flac``: FLAC at the voice's rate; a stream, so its header says "length unknown".

The last three go through PyAV (FFmpeg's encoders, bundled in its wheels). At the end the
resampler and the encoder are both drained, then the container closed: the final packets
(and Opus' end trim in the last page's granule position) are sent, nothing is cut off.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

import av
import lameenc
import numpy as np
from av.audio.stream import AudioStream

__all__ = [
    "CONTENT_TYPES",
    "SUPPORTED",
    "AudioEncoder",
    "AvEncoder",
    "Mp3Encoder",
    "PcmEncoder",
    "WavEncoder",
    "make_encoder",
    "open_ended_wav_header",
]

SUPPORTED: Final = ("pcm", "wav", "mp3", "opus", "aac", "flac")
CONTENT_TYPES: Final = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
}

# RIFF and data sizes of a WAV whose length is not known when its header is sent.
UNKNOWN_SIZE = 0xFFFFFFFF
MP3_KBPS = 64
MP3_QUALITY = 5  # LAME's 2 (best, slowest) .. 7 (fastest); 5 is its own default speed/quality
OPUS_RATE = 48000
OPUS_BPS = 32000  # speech at 48 kHz mono: transparent enough, ~4 KB per second of audio
AAC_BPS = 64000
# Ogg pages are flushed once they hold this much audio (microseconds): one 20 ms packet.
OGG_PAGE_US = "20000"


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


class _Collected:
    """Where the container writes: bytes taken out after each call. It has no ``seek``, so
    the muxers write a streamable file (no header rewritten at the end)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class AvEncoder:
    """An FFmpeg encoder and muxer (PyAV) fed s16le mono frames as they come."""

    def __init__(
        self,
        container: str,
        codec: str,
        sample_rate: int,
        *,
        out_rate: int | None = None,
        bit_rate: int | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self._out = _Collected()
        self._container = av.open(self._out, mode="w", format=container, options=options or {})
        rate = out_rate or sample_rate
        stream = self._container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)  # an audio codec's name gives an audio stream
        self._stream = stream
        if bit_rate:
            self._stream.codec_context.bit_rate = bit_rate
        # To the encoder's own sample format (and rate); PyAV cuts the frames to the
        # encoder's frame size itself.
        self._resampler = av.AudioResampler(
            format=self._stream.codec_context.format, layout="mono", rate=rate
        )
        self._pts = 0

    def start(self) -> bytes:
        # The container's header now, so that even a task without audio is a valid file.
        self._container.start_encoding()
        return self._out.take()

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if not samples.size:
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        for resampled in self._resampler.resample(frame):
            self._mux(resampled)
        return self._out.take()

    def finish(self) -> bytes:
        for resampled in self._resampler.resample(None):
            self._mux(resampled)
        self._mux(None)
        self._container.close()
        return self._out.take()

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def make_encoder(response_format: str, sample_rate: int) -> AudioEncoder:
    match response_format:
        case "pcm":
            return PcmEncoder()
        case "wav":
            return WavEncoder(sample_rate)
        case "mp3":
            return Mp3Encoder(sample_rate)
        case "opus":
            return AvEncoder(
                "ogg",
                "libopus",
                sample_rate,
                out_rate=OPUS_RATE,
                bit_rate=OPUS_BPS,
                options={"page_duration": OGG_PAGE_US},
            )
        case "aac":
            return AvEncoder("adts", "aac", sample_rate, bit_rate=AAC_BPS)
        case "flac":
            return AvEncoder("flac", "flac", sample_rate)
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
