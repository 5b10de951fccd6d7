"""Word timing from the engines' phoneme timing: which written word each phoneme belongs to.

An engine that times its phonemes (Piper's alignments, the duration tensors of hibari and
kokoro-ja) knows *when* each phoneme is spoken, but not which word of the text it belongs
to: its G2P normalises first ("42" becomes "forty two", "Dr." becomes "doctor", espeak-ng
runs "of the" together). So each written word is also phonemised on its own with the same
G2P, and that sequence is aligned with the phonemes the model spoke (a longest-matching-
blocks diff, :class:`difflib.SequenceMatcher`, on letters only: stress, length marks, spaces
and punctuation are left out). A word starts at its first aligned phoneme and ends with its
last; a word no phoneme could be tied to takes zero time where the previous one ended.

What a word is:

* **English** (and every language written with spaces): a piece of the text between
  whitespace that holds at least one letter or digit, spelled exactly as sent, punctuation
  attached (``"chat!"``, ``"U.S."``, ``"42"``, ``"don't"``); a lone ``—`` or ``&`` is not a
  word.
* **Japanese**: one entry per accent phrase as OpenJTalk (pyopenjtalk) parses the text:
  a content word with the particles and auxiliaries that lean on it, roughly a bunsetsu
  (``今日は``, ``配信に``, ``来てくれて``), spelled as in the text; punctuation goes with
  the phrase before it (``ありがとう。``), an opening bracket with the one after it.

Tested in tests/test_tts_words.py.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Sequence

__all__ = [
    "Phone",
    "WordMark",
    "japanese_words",
    "phones",
    "time_words",
    "written_words",
]

Phone = tuple[str, int, int]  # (symbol, start sample, samples) as the model spoke it
WordMark = tuple[int, int, str]  # (start sample, samples, word as written)

# Letters that mark stress or length rather than a sound: not compared.
_STRESS = frozenset("ˈˌ'")
_LENGTH = frozenset("ːˑ")
_NOT_SOUNDS = _STRESS | _LENGTH


def written_words(text: str) -> list[str]:
    """The words of a text written with spaces, as sent."""
    return [token for token in text.split() if any(c.isalnum() for c in token)]


def japanese_words(text: str, nodes: Sequence[tuple[str, int]]) -> list[str]:
    """The accent phrases of ``text``, spelled as in ``text``.

    ``nodes`` are OpenJTalk's morphemes ``(surface, chain_flag)`` for ``text``
    (``pyopenjtalk.run_frontend``); chain_flag 1 joins a morpheme to the phrase before it.
    OpenJTalk normalises what it reads (full-width letters, digits as kanji), so its
    surfaces are matched back to the text with a character diff, and a phrase boundary that
    falls inside a stretch the diff could not match (``42`` read as ``四十二``) is dropped
    rather than cut a written word in two.
    """
    if not nodes:
        return []
    surfaces = "".join(surface for surface, _ in nodes)
    # Where each morpheme starts in `surfaces`, and which of them start a phrase.
    starts: list[int] = []
    at = 0
    for index, (surface, chain) in enumerate(nodes):
        if index and chain != 1 and not _is_punctuation(surface) and at < len(surfaces):
            starts.append(at)
        at += len(surface)
    folded = unicodedata.normalize("NFKC", text)
    if len(folded) != len(text):  # NFKC changed lengths: compare char by char instead
        folded = "".join(unicodedata.normalize("NFKC", c)[:1] or c for c in text)
    matcher = difflib.SequenceMatcher(
        None, unicodedata.normalize("NFKC", surfaces), folded, autojunk=False
    )
    cuts = [0]
    for start in starts:
        cut = _map_boundary(matcher, start)
        if cut is not None and cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(text))
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    return _attach_punctuation(pieces)


def phones(segments: Sequence[tuple[str, int]], base: int = 0) -> list[Phone]:
    """``(phoneme, samples)`` in order as :data:`Phone` s starting at sample ``base``."""
    out: list[Phone] = []
    at = base
    for symbol, samples in segments:
        out.append((symbol, at, max(0, samples)))
        at += max(0, samples)
    return out


def time_words(
    words: Sequence[str], word_phonemes: Sequence[str], spoken: Sequence[Phone], total: int
) -> tuple[WordMark, ...]:
    """When each word of ``words`` is spoken: ``(start, samples, word)`` in sample offsets
    of a piece of ``total`` samples whose phonemes, as spoken, are ``spoken``."""
    written: list[str] = []  # one letter a position
    owner: list[int] = []  # the word each letter belongs to
    for index, phonemes in enumerate(word_phonemes):
        for letter in _sounds(phonemes):
            written.append(letter)
            owner.append(index)
    said: list[str] = []
    timing: list[list[int]] = []  # [start, end] of each letter said
    stressed_from: int | None = None
    for symbol, start, samples in spoken:
        letters = _sounds(symbol)
        if not letters:
            # A stress mark's time belongs to the sound after it, a length mark's to the
            # one before it (the models give them durations of their own).
            if any(c in _STRESS for c in symbol):
                stressed_from = start if stressed_from is None else stressed_from
            elif any(c in _LENGTH for c in symbol) and timing:
                timing[-1][1] = max(timing[-1][1], start + samples)
            continue
        for letter in letters:
            said.append(letter)
            timing.append([start if stressed_from is None else stressed_from, start + samples])
            stressed_from = None
    first: list[int | None] = [None] * len(words)
    last: list[int | None] = [None] * len(words)
    matcher = difflib.SequenceMatcher(None, written, said, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag not in ("equal", "replace"):
            continue  # sounds only one side has: no word to tie them to
        for j in range(j1, j2):
            # equal: letter for letter; replace: spread over the written stretch in order.
            owned = owner[i1 + (j - j1) * (i2 - i1) // (j2 - j1)]
            if first[owned] is None:
                first[owned] = j
            last[owned] = j
    marks: list[WordMark] = []
    previous_start = previous_end = 0
    for index, word in enumerate(words):
        begin, end = first[index], last[index]
        if begin is None or end is None:
            start, stop = previous_end, previous_end
        else:
            start, stop = timing[begin][0], timing[end][1]
        # Never at the very end: a word must start inside some frame to be sent.
        start = min(max(start, previous_start, 0), max(total - 1, 0))
        stop = min(max(stop, start), total) if begin is not None else start
        marks.append((start, stop - start, word))
        previous_start, previous_end = start, max(stop, previous_end)
    return tuple(marks)


def _sounds(phonemes: str) -> list[str]:
    return [
        c for c in unicodedata.normalize("NFD", phonemes) if c.isalpha() and c not in _NOT_SOUNDS
    ]


def _is_punctuation(text: str) -> bool:
    return bool(text) and not any(c.isalnum() for c in text)


def _map_boundary(matcher: difflib.SequenceMatcher[str], position: int) -> int | None:
    """The text offset of a boundary at ``position`` in the surfaces; None when it falls
    inside a stretch that differs."""
    for tag, i1, i2, j1, _ in matcher.get_opcodes():
        if i1 <= position < i2 or (position == i2 == i1):
            if tag == "equal":
                return j1 + position - i1
            return j1 if position == i1 else None
    return None


def _attach_punctuation(pieces: list[str]) -> list[str]:
    """Whitespace trimmed; punctuation-only pieces joined to the phrase before (an opening
    bracket to the one after)."""
    words: list[str] = []
    pending = ""  # opening punctuation waiting for its phrase
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if _is_punctuation(piece):
            if words and not _opens(piece):
                words[-1] += piece
            else:
                pending += piece
            continue
        words.append(pending + piece)
        pending = ""
    if pending and words:
        words[-1] += pending
    return words


def _opens(text: str) -> bool:
    return all(unicodedata.category(c) == "Ps" or c in "「『“‘«" for c in text)
