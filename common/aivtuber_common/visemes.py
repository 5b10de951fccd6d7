"""The viseme track's shapes and how a frame's track travels worker -> output handler.

A track is a list of ``(offset_ms, shape)``: the mouth shapes that start inside one audio
frame, offsets in whole milliseconds from the frame's start (so ``0 <= offset_ms <
frame duration``). ``shape`` is one of :data:`SHAPES`: the five vowels a VTuber model (Live2D,
VRM) blends, plus ``n`` for closed lips (m/b/p, silence). Engines with no phoneme timing
send no track at all (``None``), which is not the same as an empty track (timing known,
no new shape in this frame).

The mapping from an engine's phonemes to shapes is in ``aivtuber_tts.visemes``; this module
only holds what both ends of the ingest link need.
"""

from __future__ import annotations

import struct
from typing import Literal

__all__ = [
    "SHAPES",
    "Shape",
    "Track",
    "decode_track",
    "encode_track",
]

Shape = Literal["a", "i", "u", "e", "o", "n"]
SHAPES: tuple[Shape, ...] = ("a", "i", "u", "e", "o", "n")
Track = list[tuple[int, Shape]]

_CODE = {shape: code for code, shape in enumerate(SHAPES)}
_COUNT = struct.Struct("<B")
_EVENT = struct.Struct("<HB")  # offset_ms (a frame is at most 1000 ms), shape code
MAX_EVENTS = 255  # one per phoneme at most: far more than a frame of speech holds


def encode_track(track: Track) -> bytes:
    """The binary form: one count byte, then (uint16 offset_ms, uint8 shape) per event."""
    events = track[:MAX_EVENTS]
    return _COUNT.pack(len(events)) + b"".join(
        _EVENT.pack(offset, _CODE[shape]) for offset, shape in events
    )


def decode_track(data: bytes | memoryview, at: int = 0) -> tuple[Track, int]:
    """The track starting at byte ``at`` and the offset just after it. Raises ValueError."""
    if len(data) < at + _COUNT.size:
        raise ValueError("the viseme track is cut short")
    (count,) = _COUNT.unpack_from(data, at)
    at += _COUNT.size
    end = at + count * _EVENT.size
    if len(data) < end:
        raise ValueError(f"the viseme track announces {count} events but is cut short")
    track: Track = []
    for offset, code in _EVENT.iter_unpack(bytes(data[at:end])):
        if code >= len(SHAPES):
            raise ValueError(f"unknown viseme shape code {code}")
        track.append((offset, SHAPES[code]))
    return track, end
