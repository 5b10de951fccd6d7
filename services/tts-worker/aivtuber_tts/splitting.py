"""Cut a text into the pieces the engine synthesises one at a time, so audio starts early.

The first piece is the first clause alone (split at ``, ; : —`` or a sentence end), because
the time to the first sound is the time to synthesise that piece: "Welcome back to the
stream," is ready in a third of the time of the whole sentence. A clause is only cut off
when it has at least ``min_words`` words, so the voice never says a lone "Well," with the
wrong prosody, unless it is an interjection that stands alone when spoken ("Okay,", "Oh
no,", "Hmm,"): those are cut off when the rest of the sentence has ``min_words`` words
("Okay," is ready in about a third of the time "Okay, let us try this level one more
time." takes). After the first piece the text goes sentence by sentence, and a sentence
longer than ``max_chars`` is cut at clause boundaries (or, failing that, between words) so
one run-on sentence cannot hold an engine slot for seconds.

Pure functions, no I/O: tested directly in tests/test_tts_splitting.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MIN_WORDS",
    "Scan",
    "piece_end",
    "ready_end",
    "split_sentences",
    "split_text",
    "word_end",
]

DEFAULT_MIN_WORDS = 3
DEFAULT_MAX_CHARS = 240
FIRST_MAX_CHARS = 120

# A sentence ends at . ! ? … (possibly repeated, possibly followed by closing quotes or
# a bracket) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r"""(?<=[.!?…。！？])\s+|(?<=[.!?…]["'”’)\]])\s+|\n\s*""")
# A clause ends at , ; : followed by white space, or at a dash used as a pause. The white
# space before a dash is matched from its start only ((?<!\s)): tried from every position
# of a long run of spaces it cost time quadratic in the run (streamed text keeps its runs).
_CLAUSE_END = re.compile(r"(?<=[,;:，；：])\s+|(?:(?<!\s)\s+)?[—–]\s*|(?<!\s)\s+-\s+")
# Either, for text that arrives piece by piece (ready_end).
_BOUNDARY = re.compile(f"(?P<sentence>{_SENTENCE_END.pattern})|(?P<clause>{_CLAUSE_END.pattern})")
# Heads said on their own, with a pause after them: "Okay," "Oh no," "Hmm,". Not the
# discourse markers that lead into the sentence ("Well," "So," "Sure,"), whose
# intonation depends on what follows.
_INTERJECTIONS = frozenset(
    "ok okay alright oh ooh no nope yes yeah yep hmm hm mhm wow whoa hey ah aah aha uh "
    "um uhh umm ugh oops huh phew".split()
)
_INTERJECTION_WORDS = 2
# Longer than this, a clause head is no interjection (the longest is "alright alright,").
_INTERJECTION_CHARS = 32
_NONSPACE = re.compile(r"\S")
_WORD = re.compile(r"\S+")
_WORD_END = re.compile(r"\S\s")
# A piece ending in these ends a clause or sentence (piece_end).
_PIECE_ENDS = (".", "!", "?", "…", ",", ";", ":", "—", "–", "。", "！", "？", "，", "；", "：")
# "Mr. Smith" and "e.g. this" are not sentence ends.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e approx no fig inc ltd co mt".split()
)


def split_text(
    text: str, min_words: int = DEFAULT_MIN_WORDS, max_chars: int = DEFAULT_MAX_CHARS
) -> list[str]:
    """The pieces to synthesise in order: the first clause, then sentence by sentence.

    Joining the pieces with spaces gives back the text's words in order; white space is
    normalised and empty input gives no pieces.
    """
    sentences = split_sentences(text)
    if not sentences:
        return []
    first, rest = _first_clause(sentences[0], min_words)
    # The first piece decides the time to first audio: a long clause-less first sentence
    # is cut sooner than the others.
    pieces = _bound_length(first, min(max_chars, FIRST_MAX_CHARS), min_words)
    if rest:
        sentences[0] = rest
    else:
        sentences.pop(0)
    for sentence in sentences:
        pieces.extend(_bound_length(sentence, max_chars, min_words))
    return pieces


def split_sentences(text: str) -> list[str]:
    """Sentences with their end punctuation, white space collapsed, abbreviations kept."""
    sentences: list[str] = []
    pending = ""
    for part in _SENTENCE_END.split(text):
        part = " ".join(part.split())
        if not part:
            continue
        pending = f"{pending} {part}" if pending else part
        if not _ends_with_abbreviation(pending):
            sentences.append(pending)
            pending = ""
    if pending:
        sentences.append(pending)
    return sentences


@dataclass
class Scan:
    """How far :func:`ready_end` (or :func:`~aivtuber_tts.splitting_ja.ready_end_japanese`)
    got through a text that only grows at its end: given again with the longer text, the
    next call starts where this one left off (at the last boundary that more text cannot
    change), so a stream's pieces cost the work of the new text, not of all the text
    still waiting. A new text (cut at the front) needs a new Scan."""

    resume: int = 0  # boundaries ending before this are final
    cut: int = 0  # the last boundary that counted
    count: int = 0  # words (Japanese: spoken characters) of text[cut:counted]
    counted: int = 0


def ready_end(text: str, min_words: int = DEFAULT_MIN_WORDS, scan: Scan | None = None) -> int:
    """Where text arriving piece by piece can be cut now: the end of its last finished
    sentence or clause, 0 when there is none yet (streaming input, see
    :mod:`aivtuber_tts.streaming`).

    A boundary counts only once the white space after it has arrived, so a "." followed by
    "5" in the next piece is never taken for a sentence end, nor "Mr." for one. A clause
    counts when it has ``min_words`` words or is an interjection ("Okay,"), as in
    :func:`split_text`: the voice never says a lone "Well," with the wrong prosody.
    """
    # Linear in the text (it runs on the worker's event loop for every piece that arrives,
    # on text a client chose): no slice or split of the growing head, only of its last word;
    # with a ``scan``, linear in what is new.
    state = scan if scan is not None else Scan()
    resume, cut, words, counted = state.resume, state.cut, state.count, state.counted
    head_from = _first_nonspace(text, cut)  # where the head's first word starts
    saved = False
    for match in _BOUNDARY.finditer(text, resume):
        start = match.start()
        if not saved and match.end() >= len(text):
            # More white space may yet extend it: the next call looks at it again.
            state.resume, state.cut, state.count, state.counted = resume, cut, words, counted
            saved = True
        resume = match.end()
        if head_from >= start:
            continue  # nothing but white space since the last cut
        if match.lastgroup == "sentence":
            if _ends_with_abbreviation(_last_word(text, cut, start)):
                continue
        else:
            words += _count_words(text, counted, start, continues=counted > cut)
            counted = start
            short = start - cut <= _INTERJECTION_CHARS
            if words < min_words and not (short and _is_interjection(text[cut:start].strip())):
                continue
        cut = counted = match.end()
        head_from = _first_nonspace(text, cut)
        words = 0
    if not saved:
        state.resume, state.cut, state.count, state.counted = resume, cut, words, counted
    return cut


def piece_end(text: str, end: int, limit: int) -> int:
    """Where to cut ``text[:end]`` (text that may be spoken now) so the piece has about
    ``limit`` characters at most: ``end`` when it fits; else the end of the last sentence or
    clause within the limit; else, up to twice the limit (a whole clause sounds better than
    a piece cut mid-clause), the first clause end, or ``end`` itself after punctuation;
    else the last whole word within the limit, leaving two words at least (a word is never
    cut). Looks at no more than twice ``limit`` characters from the front."""
    if end <= limit:
        return end
    stretch = 2 * limit
    front = _first_nonspace(text, 0)
    within = beyond = 0
    for match in _BOUNDARY.finditer(text, 0, min(end, stretch) + 1):
        start = match.start()
        if start <= front:
            continue  # nothing but white space before it
        if match.lastgroup == "sentence" and _ends_with_abbreviation(_last_word(text, 0, start)):
            continue  # "Mr. Smith"
        if match.end() <= limit:
            within = match.end()
        elif match.end() <= end:
            beyond = match.end()
            break
    if within or beyond:
        return within or beyond
    if end <= stretch and text[:end].rstrip().endswith(_PIECE_ENDS):
        return end
    # Between words: the last space within the limit that leaves a tail of two words at
    # least (a lone last word said on its own sounds cut off; it joins the piece).
    space = limit + 1
    while (space := _last_space(text, front, space)) > front:
        if _has_words(text, space, end, 2):
            return space
    found = _WORD_END.search(text, front, end)
    if found is None or not _has_words(text, found.start() + 1, end, 2):
        return end
    return found.start() + 1


def _last_space(text: str, start: int, end: int) -> int:
    """The start of the last run of white space in ``text[start:end]`` (-1: none); a run
    is one candidate, not one per space."""
    space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
    while space > start and text[space - 1].isspace():
        space -= 1
    return space


def _has_words(text: str, start: int, end: int, count: int) -> bool:
    """Whether ``text[start:end]`` has at least ``count`` words (looks no further)."""
    found = 0
    for _ in _WORD.finditer(text, start, end):
        found += 1
        if found >= count:
            return True
    return False


def word_end(text: str) -> int:
    """The end of the last whole word: where text with no boundary yet can be cut once it
    has waited long enough (0: not one whole word yet)."""
    stripped = text.rstrip()
    if len(stripped) < len(text):
        return len(stripped) if stripped else 0  # ends in white space: every word is whole
    space = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    return max(0, space)


def _first_nonspace(text: str, start: int) -> int:
    found = _NONSPACE.search(text, start)
    return found.start() if found is not None else len(text)


def _count_words(text: str, start: int, end: int, continues: bool) -> int:
    """The words of ``text[start:end]``; when it ``continues`` a span counted already, less
    one if its first word is the end of that span's last."""
    count = sum(1 for _ in _WORD.finditer(text, start, end))
    if count and continues and not text[start - 1].isspace() and not text[start].isspace():
        count -= 1
    return count


def _last_word(text: str, start: int, end: int) -> str:
    """The last white-space-separated word of ``text[start:end]`` ("" if none)."""
    stop = end
    while stop > start and text[stop - 1].isspace():
        stop -= 1
    begin = stop
    while begin > start and not text[begin - 1].isspace():
        begin -= 1
    return text[begin:stop]


def _ends_with_abbreviation(sentence: str) -> bool:
    if not sentence.endswith("."):
        return False
    last = sentence.rsplit(" ", 1)[-1].lower().rstrip(".")
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def _first_clause(sentence: str, min_words: int) -> tuple[str, str]:
    """The sentence's first clause of at least ``min_words`` words (or an interjection
    followed by a comma), and what follows it.

    The remainder must be worth a piece of its own too (``min_words``), otherwise the
    sentence stays whole: cutting "Sure, go on." gains nothing.
    """
    for match in _CLAUSE_END.finditer(sentence):
        head = sentence[: match.start()].strip()
        tail = sentence[match.end() :].strip()
        if _words(head) < min_words and not _is_interjection(head):
            continue
        if _words(tail) < min_words:
            break
        return head, tail
    return sentence, ""


def _bound_length(sentence: str, max_chars: int, min_words: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        cut = _last_clause_end(rest, max_chars, min_words)
        if cut is None:
            # No usable clause boundary: cut between words, at the last space that fits.
            space = rest.rfind(" ", 0, max_chars)
            cut = (space, space + 1) if space > 0 else (max_chars, max_chars)
        pieces.append(rest[: cut[0]].strip())
        rest = rest[cut[1] :].strip()
    if rest:
        pieces.append(rest)
    return pieces


def _last_clause_end(text: str, max_chars: int, min_words: int) -> tuple[int, int] | None:
    best = None
    for match in _CLAUSE_END.finditer(text):
        if match.start() > max_chars:
            break
        if _words(text[: match.start()]) >= min_words:
            best = (match.start(), match.end())
    return best


def _is_interjection(head: str) -> bool:
    """True for "Okay," "Oh no," "Hmm,": one or two interjection words and a comma."""
    if not head.endswith((",", "，")):
        return False
    words = head[:-1].lower().replace("-", " ").split()
    return 0 < len(words) <= _INTERJECTION_WORDS and all(
        word.strip("!.") in _INTERJECTIONS for word in words
    )


def _words(text: str) -> int:
    return len(text.split())
