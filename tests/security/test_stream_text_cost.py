"""A stream's text cannot make the worker's event loop work quadratically.

The worker looks for a clause boundary in a streaming task's unspoken text on every piece
that arrives (:class:`aivtuber_tts.streaming.TextFeed`), on its event loop. Text a client
chooses ("a. " or "Mr. " again and again: boundaries that never count; "、" or "あ。" in
Japanese) made each look copy the whole buffer once per boundary: 20000 characters (one
stream's ``max_stream_chars``) cost 1-27 s of blocked loop per look, frames of every task
stalled. Measured without a clock: the characters copied by slicing, counted by a ``str``
that watches its own slices, stay a small multiple of the text's length.
"""

from __future__ import annotations

from typing import SupportsIndex

import pytest

from aivtuber_tts.splitting import ready_end
from aivtuber_tts.splitting_ja import ready_end_japanese

CHARS = 20000  # input_handler.max_stream_chars


class Watched(str):
    """A str that counts the characters its slices copy."""

    copied = 0

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        piece = super().__getitem__(key)
        Watched.copied += len(piece)
        return piece


def copied_by(look: object, text: str) -> int:
    Watched.copied = 0
    assert callable(look)
    look(Watched(text))
    return Watched.copied


@pytest.mark.parametrize("unit", ["a. ", "Mr. ", "e.g. ", "a—", "x, ", "Well, "])
def test_english_boundaries_cost_linear_work(unit: str) -> None:
    text = unit * (CHARS // len(unit))
    assert copied_by(ready_end, text) <= 4 * len(text)


@pytest.mark.parametrize("unit", ["、", "あ。", "あ、", "。」", "a, "])
@pytest.mark.parametrize("first", [True, False])
def test_japanese_boundaries_cost_linear_work(unit: str, first: bool) -> None:
    text = unit * (CHARS // len(unit))
    assert copied_by(lambda t: ready_end_japanese(t, first), text) <= 4 * len(text)
