"""Cut Japanese (and mixed Japanese/English) text into the pieces kokoro-ja speaks one by one.

Japanese has no spaces, so the English splitter's "punctuation followed by white space"
never fires. Here a clause ends at 、 ， , ； ; ： : (ASCII ones only before a space or the
end, so "3,000" and "12:30" stay whole), a sentence at 。 ． ！ ？ ! ? … (with any closing
bracket or quote after them) or a line break, and an ASCII "." ends a sentence only before a
space or the end ("Ver.2" and "3.5" stay whole).

Every call of the model costs ~400 ms or more whatever its length, so the first clause goes
alone (the first sound comes sooner), and after it clauses are grouped until a piece has at
least ``min_chars`` characters, so a run of short clauses ("はい、うん、") does not pay that
cost each; each later piece is synthesised while the one before plays. A clause longer
than ``max_chars`` (a long unpunctuated run) is cut at its last space, else at a kana/kanji
boundary, so no piece can hold the engine for seconds. English words are never cut.

Pure functions, no I/O: tested in tests/test_tts_splitting_ja.py.
"""

from __future__ import annotations

import re

from .splitting import Scan

__all__ = ["ready_end_japanese", "split_japanese", "word_end_japanese"]

DEFAULT_MIN_CHARS = 8
DEFAULT_MAX_CHARS = 80
_CLOSERS = "」』）)】〕\"”’'"
_BOUNDARY = re.compile(
    rf"(?:[。．！？!?…]+|\.(?=\s|$))[{re.escape(_CLOSERS)}]*"  # sentence ends
    r"|[、，；：]"  # full-width clause ends
    r"|[,;:](?=\s|$)"  # ASCII clause ends, before a space or the end only
    r"|\n"
)
# Where a too-long run may be cut when it has no space: before a character that is not a
# small kana, a prolonged sound mark or a Latin letter or digit (words stay whole).
_NO_CUT_BEFORE = re.compile(r"[ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮーA-Za-z0-9]")


def split_japanese(
    text: str, min_chars: int = DEFAULT_MIN_CHARS, max_chars: int = DEFAULT_MAX_CHARS
) -> list[str]:
    """The pieces in order: the first clause alone, then groups of at least ``min_chars``.

    Concatenating the pieces gives back the text without its line breaks and with runs of
    white space collapsed; empty input gives no pieces.
    """
    clauses = [part for clause in _clauses(text) for part in _bound(clause, max_chars)]
    if not clauses:
        return []
    pieces = [clauses[0]]
    pending = ""
    for clause in clauses[1:]:
        pending = _join(pending, clause)
        if _spoken_length(pending) >= min_chars:
            pieces.append(pending)
            pending = ""
    if pending:
        # A short tail joins the piece before it unless that would make it too long.
        if len(pieces) > 1 and len(pieces[-1]) + len(pending) <= max_chars:
            pieces[-1] = _join(pieces[-1], pending)
        else:
            pieces.append(pending)
    return pieces


def ready_end_japanese(
    text: str, first: bool, min_chars: int = DEFAULT_MIN_CHARS, scan: Scan | None = None
) -> int:
    """Where Japanese arriving piece by piece can be cut now (0: nowhere yet): after its
    last clause or sentence end that is not the last character (a closing bracket, or
    "！？", may still follow). The first clause of a stream goes alone; later ones wait
    until ``min_chars`` spoken characters are ready, as :func:`split_japanese` groups them
    (every call of the model costs the same ~400 ms whatever its length)."""
    # Linear in the text (it runs on the worker's event loop for every piece that arrives,
    # on text a client chose): the spoken characters are counted once, as the matches go;
    # with a ``scan`` (see splitting.Scan), linear in what is new.
    state = scan if scan is not None else Scan()
    resume, cut = state.resume, state.cut
    spoken, counted = state.count, state.counted  # _spoken_length(text[:counted])
    for match in _BOUNDARY.finditer(text, resume):
        end = match.end()
        if end >= len(text):
            break  # the next piece may change it ("." then "5"): looked at again next time
        resume = end
        if spoken < min_chars:  # past it, the count no longer matters
            spoken += _spoken_between(text, counted, end)
            counted = end
        if (first and cut == 0) or spoken >= min_chars:
            cut = end
    state.resume, state.cut, state.count, state.counted = resume, cut, spoken, counted
    if spoken >= min_chars > 0 or not spoken:  # text[:cut] is within or beyond text[:counted]
        return cut if spoken else 0
    return cut if any(str.isalnum(text[index]) for index in range(cut)) else 0


def word_end_japanese(text: str) -> int:
    """Where Japanese with no boundary yet can be cut once it has waited long enough:
    Japanese marks no word boundaries, so all of it, but not into a Latin word still being
    written."""
    end = len(text)
    while end > 0 and text[end - 1].isascii() and text[end - 1].isalnum():
        end -= 1
    return end


def _clauses(text: str) -> list[str]:
    clauses: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        _add(clauses, text[start : match.end()])
        start = match.end()
    _add(clauses, text[start:])
    return clauses


def _add(clauses: list[str], part: str) -> None:
    part = " ".join(part.split())
    if not part:
        return
    if clauses and not _spoken_length(part):
        clauses[-1] += part  # stray punctuation ("！！", "」") stays with what it ends
    else:
        clauses.append(part)


def _bound(clause: str, max_chars: int) -> list[str]:
    parts: list[str] = []
    rest = clause
    while len(rest) > max_chars:
        cut = rest.rfind(" ", 1, max_chars)
        if cut > 0:
            parts.append(rest[:cut])
            rest = rest[cut + 1 :]
            continue
        cut = max_chars
        while cut > 1 and _NO_CUT_BEFORE.match(rest, cut):
            cut -= 1
        if cut <= 1:
            cut = max_chars  # one unbroken word longer than max_chars: cut it anyway
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts


def _join(left: str, right: str) -> str:
    if not left:
        return right
    # A space between two Latin words (mixed text); Japanese joins without one.
    if left[-1].isascii() and left[-1].isalnum() or left[-1] in ",.;:!?":
        if right[:1].isascii():
            return f"{left} {right}"
    return left + right


def _spoken_between(text: str, start: int, end: int) -> int:
    """:func:`_spoken_length` of ``text[start:end]``, without copying it."""
    return sum(1 for index in range(start, end) if str.isalnum(text[index]))


def _spoken_length(text: str) -> int:
    """Characters that are spoken: letters, digits, kana, kanji (not punctuation)."""
    return sum(1 for char in text if char.isalnum())
