"""The word track: which words start inside one audio frame, and how it travels
worker -> output handler.

A word track is a list of ``(offset_ms, duration_ms, word)``: each word that starts inside
the frame, its start in whole milliseconds from the frame's start (``0 <= offset_ms <``
the frame's duration) and how long it is spoken, spelled exactly as in the text that was
sent (``"chat!"``, ``"配信に"``). Engines with no phoneme timing send no track (``None``);
an empty track means the timing is known and no word starts in this frame. What a "word"
is, per language, is in ``aivtuber_tts.words``.

The binary form is bounded, so a buggy or hostile worker cannot make a frame's track large:
at most :data:`MAX_WORDS` words, each at most :data:`MAX_WORD_BYTES` bytes of UTF-8, each
duration at most 65535 ms.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_WORDS", "MAX_WORD_BYTES", "WordTrack", "decode_words", "encode_words"]

WordTrack = list[tuple[int, int, str]]

MAX_WORDS = 64  # a frame is at most 1 s: far more words than anyone says in one
MAX_WORD_BYTES = 255  # one length byte; a longer "word" is cut at a character boundary
_COUNT = struct.Struct("<B")
_WORD = struct.Struct("<HHB")  # offset_ms, duration_ms, UTF-8 length


def encode_words(words: WordTrack) -> bytes:
    """One count byte, then per word (uint16 offset_ms, uint16 duration_ms, uint8 length)
    and its UTF-8 bytes."""
    kept = words[:MAX_WORDS]
    parts = [_COUNT.pack(len(kept))]
    for offset, duration, word in kept:
        data = _cut(word.encode("utf-8"))
        parts.append(_WORD.pack(min(offset, 0xFFFF), min(max(duration, 0), 0xFFFF), len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_words(data: bytes | memoryview, at: int = 0) -> tuple[WordTrack, int]:
    """The word track starting at byte ``at`` and the offset just after it.
    Raises ValueError on a track that is cut short, too long or not UTF-8."""
    if len(data) < at + _COUNT.size:
        raise ValueError("the word track is cut short")
    (count,) = _COUNT.unpack_from(data, at)
    if count > MAX_WORDS:
        raise ValueError(f"the word track holds {count} words, more than {MAX_WORDS}")
    at += _COUNT.size
    words: WordTrack = []
    for _ in range(count):
        if len(data) < at + _WORD.size:
            raise ValueError("the word track is cut short")
        offset, duration, size = _WORD.unpack_from(data, at)
        at += _WORD.size
        if len(data) < at + size:
            raise ValueError("the word track is cut short")
        try:
            word = bytes(data[at : at + size]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"a word of the track is not UTF-8: {exc}") from exc
        at += size
        words.append((offset, duration, word))
    return words, at


def _cut(data: bytes) -> bytes:
    """At most MAX_WORD_BYTES bytes, never half a character."""
    if len(data) <= MAX_WORD_BYTES:
        return data
    return data[:MAX_WORD_BYTES].decode("utf-8", "ignore").encode("utf-8")
