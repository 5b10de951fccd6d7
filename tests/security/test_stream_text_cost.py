"""A stream's text cannot make the worker's event loop work quadratically.

The worker looks for a clause boundary in a streaming task's unspoken text on every piece
that arrives (:class:`aivtuber_tts.streaming.TextFeed`), on its event loop. Text a client
chooses ("a. " or "Mr. " again and again: boundaries that never count; "、" or "あ。" in
Japanese) made each look copy the whole buffer once per boundary: 20000 characters (one
stream's ``max_stream_chars``) cost 1-27 s of blocked loop per look, frames of every task
stalled. Measured without a clock: the characters copied by slicing, counted by a ``str``
that watches its own slices, stay a small multiple of the text's length. And a long text
kept waiting (the listener has minutes of audio ahead) is not searched again for every
piece that follows it: each search resumes where the last one stopped, and gives what a
search from the front would.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from types import ModuleType
from typing import SupportsIndex

import pytest

from aivtuber_tts import splitting, splitting_ja
from aivtuber_tts.splitting import Scan, ready_end
from aivtuber_tts.splitting_ja import ready_end_japanese
from aivtuber_tts.streaming import TextFeed

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


# --- a long text kept waiting while pieces keep coming --------------------------------------


class CountingPattern:
    """A compiled pattern that counts the matches its ``finditer`` hands out."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.matches = 0

    def finditer(self, text: str, pos: int = 0) -> Iterator[re.Match[str]]:
        for match in self.pattern.finditer(text, pos):
            self.matches += 1
            yield match


@pytest.mark.parametrize(
    ("module", "language", "unit"),
    [(splitting, "en", "a. "), (splitting_ja, "ja", "、")],
)
def test_pieces_behind_a_waiting_text_cost_their_own_length(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, language: str, unit: str
) -> None:
    """18000 characters with no boundary that counts wait (the listener has minutes of
    audio ahead, so they are not forced out); 500 one-character pieces follow, each looked
    at. Before, each look went through every boundary of the waiting text again."""
    counting = CountingPattern(module._BOUNDARY)
    monkeypatch.setattr(module, "_BOUNDARY", counting)
    feed = TextFeed(unit * (18000 // len(unit)), max_wait_s=1.0, language=language, now=0.0)
    listener_ends_at = 600.0  # ten minutes of audio still to play: nothing is forced
    assert feed.take(0.0, listener_ends_at) is None or language == "ja"
    looked_at_first = counting.matches
    for n in range(500):
        feed.add("x" if n % 2 else unit, flush=False, end=False, now=1.0 + n / 1000)
        feed.take(1.0 + n / 1000, listener_ends_at)
    assert counting.matches - looked_at_first <= 4 * 500


RANDOM_TEXTS = [
    "Hi chat! Welcome back to the stream, it is so good to see you all. Mr. Smith said "
    "hello - and then, well, okay, let us go: one, two, three. e.g. this\n\nnew line — dash",
    "Okay, so. Hmm, right; yes: no — maybe.  Spaces   everywhere ,  and here. " * 3,
    "a. " * 40 + "Mr. " * 20 + "a—b—c " * 10 + "Well, " * 10,
]
RANDOM_TEXTS_JA = [
    "こんにちは、みなさん。今日も配信に来てくれてありがとう！「すごい」って言った？はい、うん、"
    "Ver.2 は 3.5 倍速い。12:30 に始めます, OK? 終わり…",
    "、" * 30 + "あ。" * 20 + "」」" + "a, b; c: d. " * 5,
]


@pytest.mark.parametrize("text", RANDOM_TEXTS)
def test_a_resumed_scan_finds_what_a_fresh_one_finds(text: str) -> None:
    rng = random.Random(7)
    for _ in range(20):
        scan, end = Scan(), 0
        while end < len(text):
            end = min(len(text), end + rng.randint(1, 6))
            assert ready_end(text[:end], scan=scan) == ready_end(text[:end]), text[:end]


@pytest.mark.parametrize("text", RANDOM_TEXTS_JA)
@pytest.mark.parametrize("first", [True, False])
def test_a_resumed_japanese_scan_finds_what_a_fresh_one_finds(text: str, first: bool) -> None:
    rng = random.Random(7)
    for _ in range(20):
        scan, end = Scan(), 0
        while end < len(text):
            end = min(len(text), end + rng.randint(1, 6))
            fresh = ready_end_japanese(text[:end], first)
            assert ready_end_japanese(text[:end], first, scan=scan) == fresh, text[:end]
