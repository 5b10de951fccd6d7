"""Mora timing in VOICEVOX's terms from our engines' phoneme durations (no I/O).

Japanese (kokoro_ja), as VOICEVOX itself reads text:

1. OpenJTalk's full-context labels give the accent phrases, each mora's consonant and
   vowel in VOICEVOX's phoneme names (``ky`` + ``o``, ``N``, ``cl``, unvoiced ``U``...), the
   accent position, the pauses and whether a phrase is a question
   (:func:`read_labels`); the kana of each mora comes from OpenJTalk's reading.
2. :func:`kana_text` writes those moras back as katakana, accent phrases apart by a space,
   pauses as 、: the text the voice then speaks for both ``audio_query`` and ``synthesis``,
   so the timing describes exactly the audio that ``synthesis`` makes.
3. The model's own per-phoneme durations for that text (the played part of each piece:
   pads trimmed as the worker trims them) are cut into moras by :func:`ipa_moras`: misaki's
   alphabet writes one kana as consonant symbols then a vowel; ん (``ɴ``, or a nasal before
   a consonant), っ (``ʔ``) and ー (``ː``) are moras of their own; punctuation and the pads
   are pauses; a word space is added to the mora before it.
4. :func:`japanese_phrases` pairs the two mora by mora. When the counts differ (a reading
   the two sides split differently) the speech time is spread evenly over the moras and
   the result is marked approximate.

Pitch is VOICEVOX's log-F0 scale from the accent (Tokyo pattern: the accented mora and
those before it high, after it low; heiban rises after the first), unvoiced vowels and っ 0,
a question's last mora raised: our models take no pitch, so it is a sensible picture of the
audio, not a measurement.

English voices (:func:`shape_phrases`), a documented approximation: the moras are the
mouth shapes of the viseme track (``a i u e o``; ``N`` for closed lips inside speech), one
accent phrase per clause, pauses between clauses; lengths are exact, texts are shapes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from aivtuber_common.utterance import AccentPhrase, Mora

from .visemes import Mark

__all__ = [
    "ReadMora",
    "ReadPhrase",
    "Timeline",
    "ipa_moras",
    "japanese_phrases",
    "kana_moras",
    "kana_text",
    "read_labels",
    "shape_phrases",
]

VOWELS = frozenset({"a", "i", "u", "e", "o", "A", "I", "U", "E", "O", "N", "cl"})
UNVOICED = frozenset({"A", "I", "U", "E", "O", "cl"})
IPA_VOWELS = frozenset("aiɯeoɨu")
MORAIC = frozenset("ɴʔ")  # ん, っ
NASALS = frozenset("nmŋɲ")  # ん before a consonant, else an onset
LONG = "ː"
GLUE = frozenset(" ")
# Pauses: punctuation as misaki writes it, and the pads at both ends of every piece.
PAUSES = frozenset(".,!?;:…—«»“”()[]^$、。！？「」")
SMALL_KANA = frozenset("ァィゥェォャュョヮ")
PAUSE_TEXT = "、"
HIGH_STEP = 0.3  # log-F0 between a low and a high mora (~35 %, about 5 semitones)
QUESTION_RISE = 0.3
DECLINATION = 0.02  # each accent phrase starts a little lower than the one before

_P3 = re.compile(r"-([^+]+)\+")
_A2 = re.compile(r"/A:-?\d+\+(\d+)\+")
_F = re.compile(r"/F:(\d+)_(\d+)#(\d+)_")


@dataclass
class ReadMora:
    text: str
    consonant: str | None
    vowel: str


@dataclass
class ReadPhrase:
    moras: list[ReadMora]
    accent: int
    interrogative: bool
    pause: bool = False


@dataclass
class _Timed:
    consonant: int  # samples
    vowel: int
    has_consonant: bool


@dataclass
class Timeline:
    """Moras and pauses in the order they sound, plus what lies before and after."""

    lead: int = 0
    items: list[_Timed | int] = field(default_factory=list)  # int: a pause, in samples
    tail: int = 0

    @property
    def moras(self) -> list[_Timed]:
        return [item for item in self.items if isinstance(item, _Timed)]


def read_labels(labels: Sequence[str], kana: str) -> list[ReadPhrase]:
    """Accent phrases from OpenJTalk's full-context ``labels``, each mora's text from
    ``kana`` (OpenJTalk's katakana reading of the same text) when the counts agree."""
    phrases: list[ReadPhrase] = []
    onset: str | None = None
    for label in labels:
        found = _P3.search(label)
        if found is None:
            continue
        phoneme = found.group(1)
        if phoneme == "sil":
            continue
        if phoneme == "pau":
            if phrases:
                phrases[-1].pause = True
            onset = None
            continue
        if phoneme not in VOWELS:
            onset = phoneme
            continue
        position = _A2.search(label)
        shape = _F.search(label)
        if position is None or shape is None:
            continue  # not a label OpenJTalk writes
        if int(position.group(1)) == 1 or not phrases:
            phrases.append(ReadPhrase([], int(shape.group(2)), shape.group(3) == "1"))
        phrases[-1].moras.append(ReadMora(_romaji(onset, phoneme), onset, phoneme))
        onset = None
    texts = kana_moras(kana)
    moras = [mora for phrase in phrases for mora in phrase.moras]
    if len(texts) == len(moras):
        for mora, text in zip(moras, texts, strict=True):
            mora.text = text
    return phrases


def kana_moras(kana: str) -> list[str]:
    """Katakana cut into moras (small ャュョ... belong to the kana before); others dropped."""
    moras: list[str] = []
    for char in kana:
        if not ("\u30a1" <= char <= "\u30fa" or char == "ー"):
            continue
        if char in SMALL_KANA and moras:
            moras[-1] += char
        else:
            moras.append(char)
    return moras


def kana_text(phrases: Sequence[ReadPhrase]) -> str:
    """The moras as text to speak: phrases apart by a space, pauses 、, questions ？."""
    out: list[str] = []
    for index, phrase in enumerate(phrases):
        out.append("".join(mora.text for mora in phrase.moras))
        last = index == len(phrases) - 1
        if phrase.interrogative and (phrase.pause or last):
            out.append("？")
        elif last:
            out.append("。")
        else:
            out.append("、" if phrase.pause else " ")
    return "".join(out)


def ipa_moras(played: Sequence[tuple[str, int]]) -> Timeline:
    """Cut a played phoneme sequence (misaki's alphabet, samples each) into moras."""
    timeline = Timeline()
    onset = 0
    has_onset = False
    items = timeline.items
    for index, (symbol, samples) in enumerate(played):
        following = played[index + 1][0] if index + 1 < len(played) else ""
        if symbol in PAUSES:
            _pause(items, samples + onset)
            onset, has_onset = 0, False
        elif symbol in GLUE:
            if items and isinstance(items[-1], _Timed):
                items[-1].vowel += samples
            else:
                _pause(items, samples)
        elif symbol in IPA_VOWELS:
            items.append(_Timed(onset, samples, has_onset))
            onset, has_onset = 0, False
        elif (
            symbol == LONG
            or symbol in MORAIC
            or (symbol in NASALS and following not in IPA_VOWELS and following != "ʲ")
        ):
            items.append(_Timed(0, samples + onset, False))
            onset, has_onset = 0, False
        else:
            onset += samples
            has_onset = True
    if onset:
        _pause(items, onset)
    if items and isinstance(first := items[0], int):
        timeline.lead = first
        del items[0]
    if items and isinstance(last := items[-1], int):
        timeline.tail = last
        del items[-1]
    return timeline


def japanese_phrases(
    phrases: Sequence[ReadPhrase], timeline: Timeline, sample_rate: int, base_pitch: float
) -> tuple[list[AccentPhrase], bool]:
    """VOICEVOX's accent phrases with the timeline's lengths; True when approximate."""
    read = [(p, m) for p, phrase in enumerate(phrases) for m in range(len(phrase.moras))]
    timed = timeline.moras
    exact = len(timed) == len(read)
    consonant: list[float | None] = []
    vowel: list[float] = []
    pauses = [0.0] * len(phrases)
    if exact:
        position = -1
        for item in timeline.items:
            if isinstance(item, int):
                p, m = read[position]
                if phrases[p].pause and m == len(phrases[p].moras) - 1:
                    pauses[p] += item / sample_rate
                else:  # a pause OpenJTalk does not have: the mora before it lasts longer
                    vowel[position] += item / sample_rate
                continue
            position += 1
            p, m = read[position]
            mora = phrases[p].moras[m]
            if mora.consonant is None:
                consonant.append(None)
                vowel.append((item.consonant + item.vowel) / sample_rate)
            else:
                consonant.append(item.consonant / sample_rate)
                vowel.append(item.vowel / sample_rate)
    else:
        speech = sum(
            it if isinstance(it, int) else it.consonant + it.vowel for it in timeline.items
        )
        share = speech / sample_rate / max(1, len(read))
        for p, m in read:
            has = phrases[p].moras[m].consonant is not None
            consonant.append(share / 3 if has else None)
            vowel.append(share * 2 / 3 if has else share)
    out: list[AccentPhrase] = []
    index = 0
    for p, phrase in enumerate(phrases):
        moras: list[Mora] = []
        for m, mora in enumerate(phrase.moras):
            pitch = _pitch(phrase, m, base_pitch - DECLINATION * p)
            moras.append(
                Mora(
                    text=mora.text,
                    consonant=mora.consonant,
                    consonant_length=consonant[index],
                    vowel=mora.vowel,
                    vowel_length=vowel[index],
                    pitch=pitch,
                )
            )
            index += 1
        pause = (
            Mora(text=PAUSE_TEXT, vowel="pau", vowel_length=pauses[p], pitch=0.0)
            if phrase.pause
            else None
        )
        out.append(
            AccentPhrase(
                moras=moras,
                accent=phrase.accent or len(moras),  # heiban: as VOICEVOX writes it
                pause_mora=pause,
                is_interrogative=phrase.interrogative,
            )
        )
    return out, not exact


def shape_phrases(
    pieces: Sequence[tuple[int, Sequence[Mark]]], sample_rate: int, base_pitch: float
) -> tuple[list[AccentPhrase], float, float]:
    """The English approximation: each piece (its length in samples and its viseme marks)
    one accent phrase of mouth-shape moras. Returns the phrases, lead and tail seconds."""
    phrases: list[AccentPhrase] = []
    lead = 0
    carried = 0  # closed-mouth samples since the last vowel of the previous phrase
    for length, marks in pieces:
        segments = _segments(length, marks)
        voiced = [i for i, (_, shape) in enumerate(segments) if shape != "n"]
        if not voiced:
            carried += length
            continue
        before = sum(n for n, _ in segments[: voiced[0]])
        if phrases:
            _add_pause(phrases[-1], (carried + before) / sample_rate)
        else:
            lead = carried + before
        moras = [
            Mora(
                text=shape,
                vowel="N" if shape == "n" else shape,
                vowel_length=n / sample_rate,
                pitch=base_pitch,
            )
            for n, shape in segments[voiced[0] : voiced[-1] + 1]
        ]
        phrases.append(AccentPhrase(moras=moras, accent=1))
        carried = sum(n for n, _ in segments[voiced[-1] + 1 :])
    if not phrases:
        return [], carried / sample_rate, 0.0
    return phrases, lead / sample_rate, carried / sample_rate


def _segments(length: int, marks: Sequence[Mark]) -> list[tuple[int, str]]:
    """(samples, shape) runs covering the whole piece; before the first mark: closed."""
    bounds = [(0, "n")] + [(offset, shape) for offset, shape in marks if 0 <= offset < length]
    runs: list[tuple[int, str]] = []
    for (start, shape), (end, _) in zip(bounds, [*bounds[1:], (length, "n")], strict=True):
        if end <= start:
            continue
        if runs and runs[-1][1] == shape:
            runs[-1] = (runs[-1][0] + end - start, shape)
        else:
            runs.append((end - start, shape))
    return runs


def _add_pause(phrase: AccentPhrase, seconds: float) -> None:
    if phrase.pause_mora is None:
        phrase.pause_mora = Mora(text=PAUSE_TEXT, vowel="pau", vowel_length=0.0, pitch=0.0)
    phrase.pause_mora.vowel_length += seconds


def _pause(items: list[_Timed | int], samples: int) -> None:
    if items and isinstance(items[-1], int):
        items[-1] += samples
    else:
        items.append(samples)


def _pitch(phrase: ReadPhrase, index: int, base: float) -> float:
    mora = phrase.moras[index]
    if mora.vowel in UNVOICED:
        return 0.0
    accent = phrase.accent
    if accent == 1:
        high = index == 0
    else:  # heiban (0) rises after the first mora and stays; n: high up to mora n
        high = index > 0 and (accent == 0 or index < accent)
    pitch = base + (HIGH_STEP if high else 0.0)
    if phrase.interrogative and index == len(phrase.moras) - 1:
        pitch += QUESTION_RISE
    return round(pitch, 3)


def _romaji(consonant: str | None, vowel: str) -> str:
    """A mora's text when OpenJTalk's kana could not be matched: its phonemes."""
    return {"N": "ン", "cl": "ッ"}.get(vowel, (consonant or "") + vowel.lower())
