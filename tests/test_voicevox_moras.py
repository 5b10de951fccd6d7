"""Mora timing for the VOICEVOX API without a model: OpenJTalk's reading cut into accent
phrases, misaki's phonemes cut into moras, the two paired, the English approximation, and
the text ``synthesis`` speaks back."""

from __future__ import annotations

import pyopenjtalk
import pytest
from pydantic import ValidationError

from aivtuber_common.config import InputHandlerSettings, Settings, VoicevoxSettings
from aivtuber_common.utterance import AccentPhrase, Mora
from aivtuber_input.metrics import InputMetrics
from aivtuber_input.speech import SpeechApi
from aivtuber_input.voicevox import AudioQuery, VoicevoxApi, spoken_text
from aivtuber_tts.moras import (
    ipa_moras,
    japanese_phrases,
    kana_moras,
    kana_text,
    read_labels,
    shape_phrases,
)

RATE = 24000


def reading(text: str) -> list:  # type: ignore[type-arg]
    return read_labels(pyopenjtalk.extract_fullcontext(text), pyopenjtalk.g2p(text, kana=True))


def test_openjtalk_labels_become_accent_phrases_with_kana_moras_pauses_and_questions() -> None:
    phrases = reading("こんにちは、元気ですか？")
    assert ["".join(m.text for m in p.moras) for p in phrases] == ["コンニチワ", "ゲンキデスカ"]
    assert phrases[0].pause and not phrases[0].interrogative
    assert phrases[1].interrogative
    assert [(m.consonant, m.vowel) for m in phrases[0].moras] == [
        ("k", "o"),
        (None, "N"),
        ("n", "i"),
        ("ch", "i"),
        ("w", "a"),
    ]
    assert kana_text(phrases) == "コンニチワ、ゲンキデスカ？"


def test_small_kana_belong_to_the_mora_before_and_long_vowels_are_moras() -> None:
    assert kana_moras("キョーハ、ッテ？") == ["キョ", "ー", "ハ", "ッ", "テ"]


def test_misaki_phonemes_are_cut_into_moras_with_their_own_lengths() -> None:
    # ^ k o ɲ ɲ i ʔ t e ː (space) m o . $ : こ ん に っ て ー も
    played = [
        ("^", 1200),
        ("k", 100),
        ("o", 200),
        ("ɲ", 300),  # ん: before a consonant
        ("ɲ", 50),  # onset of に
        ("i", 150),
        ("ʔ", 400),  # っ
        ("t", 60),
        ("e", 140),
        ("ː", 500),
        (" ", 20),  # a word space: the mora before lasts longer
        ("m", 70),
        ("o", 230),
        (".", 900),
    ]
    timeline = ipa_moras(played)
    assert timeline.lead == 1200 and timeline.tail == 900
    assert [(m.consonant, m.vowel) for m in timeline.moras] == [
        (100, 200),
        (0, 300),
        (50, 150),
        (0, 400),
        (60, 140),
        (0, 520),
        (70, 230),
    ]
    total = timeline.lead + timeline.tail + sum(m.consonant + m.vowel for m in timeline.moras)
    assert total == sum(samples for _, samples in played)


def test_moras_that_cannot_be_paired_share_the_time_and_say_so() -> None:
    phrases = reading("はい。")  # two moras; the timeline below has three
    timeline = ipa_moras([("h", 10), ("a", 20), ("i", 30), ("i", 40)])
    accent_phrases, approximate = japanese_phrases(phrases, timeline, RATE, 5.8)
    assert approximate
    moras = accent_phrases[0].moras
    assert sum((m.consonant_length or 0) + m.vowel_length for m in moras) * RATE == 100


def test_an_english_piece_becomes_one_phrase_of_mouth_shapes_with_pauses_between() -> None:
    first = ((0, "n"), (100, "a"), (400, "n"), (500, "i"), (900, "n"))
    pieces = [(1000, first), (600, ((300, "o"),))]
    phrases, lead, tail = shape_phrases(pieces, 1000, 5.5)
    assert lead == 0.1 and tail == 0.0
    assert [(m.vowel, m.vowel_length) for m in phrases[0].moras] == [
        ("a", 0.3),
        ("N", 0.1),
        ("i", 0.4),
    ]
    assert phrases[0].pause_mora is not None and phrases[0].pause_mora.vowel_length == 0.4
    assert [(m.vowel, m.vowel_length) for m in phrases[1].moras] == [("o", 0.3)]


def test_synthesis_speaks_the_moras_back_as_kana_or_the_text_of_an_english_query() -> None:
    def mora(text: str) -> Mora:
        return Mora(text=text, vowel="a", vowel_length=0.1, pitch=5.5)

    pause = Mora(text="、", vowel="pau", vowel_length=0.2, pitch=0)
    japanese = AudioQuery(
        accent_phrases=[
            AccentPhrase(moras=[mora("コ"), mora("ン")], accent=1, pause_mora=pause),
            AccentPhrase(moras=[mora("キョ"), mora("ー")], accent=1),
            AccentPhrase(moras=[mora("ゲ"), mora("ン")], accent=1, is_interrogative=True),
        ]
    )
    assert spoken_text(japanese) == "コン、キョー ゲン？"
    english = AudioQuery(accent_phrases=[AccentPhrase(moras=[mora("a")], accent=1)], kana="Hi!")
    assert spoken_text(english) == "Hi!"


def test_style_ids_come_from_config_and_unlisted_voices_get_a_stable_one() -> None:
    settings = Settings(
        input_handler=InputHandlerSettings(voicevox=VoicevoxSettings(style_ids={"heart": 7}))
    )
    api = VoicevoxApi(settings, SpeechApi(settings, InputMetrics()))
    assert api.style_id("heart") == 7
    other = api.style_id("my_voice")
    assert other >= 1000 and other == api.style_id("my_voice") != api.style_id("my_voice2")
    with pytest.raises(ValidationError, match="same style id"):
        VoicevoxSettings(style_ids={"a": 1, "b": 1})
