"""Mouth shapes from the engines' own phoneme timing: the mapping tables and the track.

An engine that knows how many samples each phoneme lasts (Piper's alignments, the duration
tensors of hibari and kokoro-ja) returns :class:`Speech`: its PCM plus *marks*, the sample
offsets where a new mouth shape starts, and when each written word is spoken (see
:mod:`aivtuber_tts.words`). :class:`TrackCutter` cuts that into the worker's frames and gives
each frame its tracks, ``[(offset_ms, shape), ...]`` and ``[(offset_ms, duration_ms, word),
...]`` from the frame's start (the wire formats are in :mod:`aivtuber_common.visemes` and
:mod:`aivtuber_common.words`).

Shapes are the five vowels plus ``n`` (closed). Only vowels open the mouth to a new shape;
the lips close (``n``) for m, b, p and at pauses (punctuation, the start and end pads).
Every other consonant, stress marks, length marks and word spaces are *folded*: they keep
the shape before them, which is what a listener sees on a face (the jaw stays where the
last vowel put it until the next vowel). A mapping table per language, keyed by the
phoneme symbols the engines emit:

* :data:`ENGLISH` - IPA as espeak-ng writes it for Piper, plus misaki's one-letter
  diphthongs (``A`` = eɪ, ``I`` = aɪ, ``O`` = oʊ, ``W`` = aʊ, ``Y`` = ɔɪ) used by hibari.
* :data:`JAPANESE` - the misaki Japanese alphabet kokoro-ja speaks (``ɯ`` for う, ``ɴ`` for
  ん, ``ʔ`` for っ, ...), and the kana themselves for engines that time kana.

Tested in tests/test_tts_visemes.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aivtuber_common.audio import SAMPLE_WIDTH, samples_per_frame
from aivtuber_common.visemes import Shape, Track
from aivtuber_common.words import WordTrack

from .words import WordMark

__all__ = [
    "ENGLISH",
    "JAPANESE",
    "Mark",
    "Speech",
    "TrackCutter",
    "marks_from_durations",
    "pcm_of",
    "shape_of",
    "table_for",
    "trim_marks",
]

Mark = tuple[int, Shape]  # (sample offset, shape starting there)

# Pauses close the mouth in every language: sentence and clause punctuation (ASCII and
# full-width), Piper's BOS/EOS/pad symbols, the pad the duration models put at both ends.
_PAUSES = ".,!?;:…—–-\"'()[]«»“”、。！？，．；：「」『』（）〜~^$_"
_PAUSE_TABLE: dict[str, Shape | None] = dict.fromkeys(_PAUSES, "n")

ENGLISH: Mapping[str, Shape | None] = {
    **_PAUSE_TABLE,
    # open, central and back unrounded vowels; schwa opens the jaw a little: "a"
    **dict.fromkeys("aɑɐæʌəɚᵊ", "a"),
    **dict.fromkeys("IW", "a"),  # misaki aɪ, aʊ start open
    **dict.fromkeys("iɪᵻɨjy", "i"),
    **dict.fromkeys("uʊɯʉwɥ", "u"),
    **dict.fromkeys("eɛɜA", "e"),  # misaki A = eɪ
    **dict.fromkeys("oɔɒɵOYQ", "o"),  # misaki O = oʊ, Y = ɔɪ, Q = British əʊ
    **dict.fromkeys("mbpɱ", "n"),  # bilabials close the lips
}

_KANA_ROWS: dict[Shape, str] = {
    "a": "あかがさざただなはばぱまやらわぁゃゎアカガサザタダナハバパマヤラワァャヮ",
    "i": "いきぎしじちぢにひびぴみりぃイキギシジチヂニヒビピミリィ",
    "u": "うくぐすずつづぬふぶぷむゆるぅゅウクグスズツヅヌフブプムユルゥュヴ",
    "e": "えけげせぜてでねへべぺめれぇエケゲセゼテデネヘベペメレェ",
    "o": "おこごそぞとどのほぼぽもよろをぉょオコゴソゾトドノホボポモヨロヲォョ",
    "n": "んっンッ",
}

JAPANESE: Mapping[str, Shape | None] = {
    **_PAUSE_TABLE,
    "a": "a",
    "i": "i",
    "ɯ": "u",
    "u": "u",
    "ɨ": "u",  # the reduced u of す, つ, ず
    "e": "e",
    "o": "o",
    "ɴ": "n",  # ん closes or nearly closes the mouth
    "N": "n",
    "ʔ": "n",  # っ: a held closure
    **dict.fromkeys("mbp", "n"),
    # kana (hiragana and katakana) by their vowel, for engines that time kana
    **{kana: shape for shape, row in _KANA_ROWS.items() for kana in row},
}

_TABLES: dict[str, Mapping[str, Shape | None]] = {"en": ENGLISH, "ja": JAPANESE}


def table_for(language: str) -> Mapping[str, Shape | None]:
    """The table of a BCP 47 language (``en-US`` -> English); English when unknown."""
    return _TABLES.get(language.split("-", 1)[0].lower(), ENGLISH)


def shape_of(phoneme: str, table: Mapping[str, Shape | None]) -> Shape | None:
    """The shape a phoneme starts, or None when it is folded into the shape before it.

    A phoneme may be several symbols (Piper groups a phoneme with its pad, kokoro writes
    ``kʲ``): the first symbol with an entry decides.
    """
    for symbol in phoneme:
        if (shape := table.get(symbol)) is not None:
            return shape
    return None


def marks_from_durations(
    segments: Iterable[tuple[str, int]], table: Mapping[str, Shape | None]
) -> list[Mark]:
    """Marks from ``(phoneme, samples)`` in order; a shape repeated is not marked again."""
    marks: list[Mark] = []
    offset = 0
    for phoneme, samples in segments:
        shape = shape_of(phoneme, table)
        if shape is not None and (not marks or marks[-1][1] != shape):
            if marks and marks[-1][0] == offset:
                marks[-1] = (offset, shape)  # a zero-length phoneme before: the later wins
            else:
                marks.append((offset, shape))
        offset += max(0, samples)
    return marks


def trim_marks(marks: list[Mark], start: int, end: int) -> list[Mark]:
    """The marks of ``pcm[start:end]``, offsets from ``start``; the shape active at
    ``start`` is marked at 0."""
    kept: list[Mark] = []
    active: Shape | None = None
    for offset, shape in marks:
        if offset <= start:
            active = shape
        elif offset < end:
            kept.append((offset - start, shape))
    if active is not None:
        kept.insert(0, (0, active))
    return kept


@dataclass(frozen=True, slots=True)
class Speech:
    """One piece of audio with its mouth shapes and words (sample offsets into ``pcm``);
    ``words`` is None from an engine that times phonemes but not words."""

    pcm: bytes
    marks: tuple[Mark, ...]
    words: tuple[WordMark, ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.pcm)


def pcm_of(piece: bytes | Speech) -> bytes:
    return piece.pcm if isinstance(piece, Speech) else piece


class TrackCutter:
    """Cuts PCM pieces into frames of exactly ``frame_ms`` like
    :class:`~aivtuber_common.audio.FrameCutter`, and gives each frame its viseme and word
    tracks.

    A stream is *timed* once a :class:`Speech` came: from then on every frame carries a
    viseme track (maybe empty), and a word track once a Speech with words came; a stream of
    plain bytes (sine, http) gets ``None`` tracks. Pieces follow each other on one timeline,
    so a task's words stay in order across its pieces.
    """

    def __init__(self, sample_rate: int, frame_ms: int) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = samples_per_frame(sample_rate, frame_ms)
        self.frame_bytes = self.frame_samples * SAMPLE_WIDTH
        self._pending = bytearray()
        self._pending_start = 0  # absolute sample index of _pending[0]
        self._marks: list[Mark] = []  # absolute sample offsets, not yet given to a frame
        self._words: list[WordMark] = []  # likewise
        self._timed = False
        self._worded = False

    def push(self, piece: bytes | Speech) -> Iterator[tuple[bytes, Track | None, WordTrack | None]]:
        base = self._pending_start + len(self._pending) // SAMPLE_WIDTH
        if isinstance(piece, Speech):
            self._timed = True
            self._marks.extend((base + offset, shape) for offset, shape in piece.marks)
            if piece.words is not None:
                self._worded = True
                self._words.extend((base + start, n, word) for start, n, word in piece.words)
            self._pending += piece.pcm
        else:
            self._pending += piece
        usable = len(self._pending) - len(self._pending) % self.frame_bytes
        for start in range(0, usable, self.frame_bytes):
            frame = bytes(self._pending[start : start + self.frame_bytes])
            yield frame, *self._tracks(len(frame) // SAMPLE_WIDTH)
        del self._pending[:usable]

    def flush(self) -> tuple[bytes, Track | None, WordTrack | None] | None:
        # An odd trailing byte cannot be a sample; drop it rather than send half a sample.
        whole = len(self._pending) - len(self._pending) % SAMPLE_WIDTH
        frame = bytes(self._pending[:whole]) if whole else None
        self._pending.clear()
        if frame is None:
            return None
        return frame, *self._tracks(len(frame) // SAMPLE_WIDTH)

    def _tracks(self, samples: int) -> tuple[Track | None, WordTrack | None]:
        """The marks and words inside the frame starting at ``_pending_start``; advances it."""
        start = self._pending_start
        end = start + samples
        self._pending_start = end
        if not self._timed:
            return None, None
        words = self._word_track(start, end) if self._worded else None
        return self._track(start, end), words

    def _word_track(self, start: int, end: int) -> WordTrack:
        words: WordTrack = []
        taken = 0
        for offset, samples, word in self._words:
            if offset >= end:
                break
            taken += 1
            # A word before the frame (none, unless a piece's words overlap) starts it.
            at = max(0, offset - start) * 1000 // self.sample_rate
            words.append((at, samples * 1000 // self.sample_rate, word))
        del self._words[:taken]
        return words

    def _track(self, start: int, end: int) -> Track:
        track: Track = []
        taken = 0
        for offset, shape in self._marks:
            if offset >= end:
                break
            taken += 1
            # Marks before the frame (none, unless a piece's marks overlap) start it.
            at = max(0, offset - start) * 1000 // self.sample_rate
            if track and track[-1][0] == at:
                track[-1] = (at, shape)
            else:
                track.append((at, shape))
        del self._marks[:taken]
        return track
