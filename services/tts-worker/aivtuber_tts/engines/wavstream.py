"""An incremental RIFF/WAV reader: feed it the body as it arrives, get PCM out at once.

A streaming TTS server sends the header first and the samples as they are made, often with
a data size of 0 or 0xFFFFFFFF because the length is unknown when the header goes out; both
mean "until the end of the body". Only PCM s16le mono is accepted (what the worker sends on),
anything else is a :class:`WavFormatError` with one sentence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["WavFormat", "WavFormatError", "WavStreamParser"]

_PCM = 1
_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


class WavFormatError(ValueError):
    pass


@dataclass(frozen=True)
class WavFormat:
    sample_rate: int
    channels: int
    bits: int


class WavStreamParser:
    """Push bytes with :meth:`feed`; it returns the PCM found so far (maybe empty)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "riff"  # riff -> chunk header -> (skip | fmt | data)
        self._skip = 0
        self._data_left: int | None = None  # None: until the end of the body
        self.format: WavFormat | None = None

    def feed(self, data: bytes) -> bytes:
        if self._state == "data" and not self._buffer:
            return self._take_data(data)
        self._buffer += data
        while True:
            if self._state == "riff":
                if len(self._buffer) < 12:
                    return b""
                if self._buffer[:4] != b"RIFF" or self._buffer[8:12] != b"WAVE":
                    raise WavFormatError("the response is not a RIFF/WAVE file")
                del self._buffer[:12]
                self._state = "chunk"
            elif self._state == "skip":
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return b""
                self._state = "chunk"
            elif self._state == "chunk":
                if len(self._buffer) < 8:
                    return b""
                chunk_id = bytes(self._buffer[:4])
                size = int.from_bytes(self._buffer[4:8], "little")
                if chunk_id == b"fmt ":
                    if len(self._buffer) < 8 + size:
                        return b""
                    self.format = _parse_fmt(bytes(self._buffer[8 : 8 + size]))
                    del self._buffer[: 8 + size + size % 2]
                elif chunk_id == b"data":
                    if self.format is None:
                        raise WavFormatError("the WAV data chunk came before its fmt chunk")
                    del self._buffer[:8]
                    self._data_left = None if size in _UNKNOWN_SIZES else size
                    self._state = "data"
                    rest = bytes(self._buffer)
                    self._buffer.clear()
                    return self._take_data(rest)
                else:
                    del self._buffer[:8]
                    self._skip = size + size % 2  # chunks are padded to even sizes
                    self._state = "skip"
            else:  # pragma: no cover - data is handled above
                raise AssertionError(self._state)

    @property
    def in_data(self) -> bool:
        return self._state == "data"

    def _take_data(self, data: bytes) -> bytes:
        if self._data_left is None:
            return data
        taken = data[: self._data_left]
        self._data_left -= len(taken)  # what follows the data chunk (LIST...) is ignored
        return taken


def _parse_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise WavFormatError("the WAV fmt chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag not in (_PCM, _EXTENSIBLE) or bits != 16:
        raise WavFormatError(
            f"the WAV is not 16-bit PCM (format tag {tag}, {bits} bits); send pcm_s16le"
        )
    if channels != 1:
        raise WavFormatError(f"the WAV has {channels} channels; send mono audio")
    return WavFormat(sample_rate=rate, channels=channels, bits=bits)
