"""The viseme mapping tables, marks from durations, trimming, and the per-frame track."""

from __future__ import annotations

import uuid

import pytest

from aivtuber_common.internal import FrameHeader, decode_frame, encode_frame
from aivtuber_common.protocol import AudioChunk, dump
from aivtuber_common.visemes import SHAPES, decode_track, encode_track
from aivtuber_tts.visemes import (
    ENGLISH,
    JAPANESE,
    Speech,
    TrackCutter,
    marks_from_durations,
    shape_of,
    table_for,
    trim_marks,
)

# --- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phoneme", "shape"),
    [
        ("ɑ", "a"),
        ("æ", "a"),
        ("ʌ", "a"),
        ("ə", "a"),
        ("I", "a"),  # misaki aɪ
        ("i", "i"),
        ("ɪ", "i"),
        ("u", "u"),
        ("ʊ", "u"),
        ("w", "u"),
        ("ɛ", "e"),
        ("A", "e"),  # misaki eɪ
        ("ɔ", "o"),
        ("O", "o"),  # misaki oʊ
        ("m", "n"),
        ("b", "n"),
        ("p", "n"),
        (".", "n"),
        ("^", "n"),  # Piper BOS
        ("$", "n"),  # Piper EOS
        ("ˈa", "a"),  # stress folded into the vowel it marks
    ],
)
def test_english_table_maps_vowels_bilabials_and_pauses(phoneme: str, shape: str) -> None:
    assert shape_of(phoneme, ENGLISH) == shape


@pytest.mark.parametrize("phoneme", ["ˈ", "ˌ", "ː", " ", "t", "s", "ɹ", "k", "ð"])
def test_english_table_folds_stress_length_spaces_and_other_consonants(phoneme: str) -> None:
    assert shape_of(phoneme, ENGLISH) is None


@pytest.mark.parametrize(
    ("phoneme", "shape"),
    [
        ("a", "a"),
        ("i", "i"),
        ("ɯ", "u"),
        ("ɨ", "u"),
        ("e", "e"),
        ("o", "o"),
        ("ɴ", "n"),
        ("ʔ", "n"),
        ("m", "n"),
        ("、", "n"),
        ("。", "n"),
        ("か", "a"),
        ("き", "i"),
        ("ス", "u"),
        ("ね", "e"),
        ("ト", "o"),
        ("ん", "n"),
        ("kʲ", None),
        ("ː", None),
    ],
)
def test_japanese_table_maps_phonemes_and_kana(phoneme: str, shape: str | None) -> None:
    assert shape_of(phoneme, JAPANESE) == shape


def test_every_table_entry_is_a_known_shape_and_languages_pick_their_table() -> None:
    for table in (ENGLISH, JAPANESE):
        assert {shape for shape in table.values() if shape is not None} <= set(SHAPES)
    assert table_for("ja") is JAPANESE and table_for("ja-JP") is JAPANESE
    assert table_for("en-US") is ENGLISH and table_for("und") is ENGLISH


# --- marks ---------------------------------------------------------------------------------


def test_marks_start_at_each_new_shape_and_fold_repeats_and_consonants() -> None:
    # "^ h ˈ ɛ l oʊ $" as (phoneme, samples)
    segments = [("^", 100), ("h", 50), ("ˈ", 0), ("ɛ", 80), ("l", 40), ("O", 90), ("$", 60)]
    assert marks_from_durations(segments, ENGLISH) == [(0, "n"), (150, "e"), (270, "o"), (360, "n")]
    # the same shape twice in a row is one mark; a zero-length phoneme gives way
    assert marks_from_durations([("a", 10), ("ɑ", 10), ("m", 0), ("i", 5)], ENGLISH) == [
        (0, "a"),
        (20, "i"),
    ]


def test_trim_marks_keeps_the_shape_active_at_the_cut_and_drops_what_is_cut() -> None:
    marks = [(0, "n"), (150, "e"), (270, "o"), (360, "n")]
    assert trim_marks(marks, 100, 300) == [(0, "n"), (50, "e"), (170, "o")]
    assert trim_marks(marks, 150, 400) == [(0, "e"), (120, "o"), (210, "n")]


# --- the track per frame -------------------------------------------------------------------


def test_track_cutter_puts_each_mark_in_its_frame_with_its_offset_inside_it() -> None:
    rate, frame_ms = 1000, 40  # 40 samples a frame, 1 ms a sample: offsets are readable
    cutter = TrackCutter(rate, frame_ms)
    first = Speech(b"\x00\x00" * 70, ((0, "n"), (10, "a"), (45, "i"), (69, "n")))
    second = Speech(b"\x00\x00" * 45, ((0, "o"), (30, "u")))
    frames = list(cutter.push(first)) + list(cutter.push(second))
    last = cutter.flush()
    assert last is not None
    frames.append(last)
    assert [len(pcm) // 2 for pcm, _, _ in frames] == [40, 40, 35]
    assert [track for _, track, _ in frames] == [
        [(0, "n"), (10, "a")],
        [(5, "i"), (29, "n"), (30, "o")],  # the second piece starts at sample 70
        [(20, "u")],
    ]
    for pcm, track, _ in frames:
        assert track is not None
        assert all(0 <= offset < len(pcm) // 2 for offset, _ in track)
    # Shapes add up to the audio: every mark landed in exactly one frame.
    assert sum(len(track or []) for _, track, _ in frames) == 6


def test_plain_pcm_pieces_carry_no_track() -> None:
    cutter = TrackCutter(16000, 40)
    frames = list(cutter.push(b"\x01\x00" * 1000))
    assert frames and all(track is None and words is None for _, track, words in frames)


def test_a_timed_stream_gives_every_frame_a_track_even_an_empty_one() -> None:
    cutter = TrackCutter(1000, 10)
    frames = list(cutter.push(Speech(b"\x00\x00" * 30, ((0, "a"),))))
    assert [track for _, track, _ in frames] == [[(0, "a")], [], []]
    # An engine that times phonemes but not words sends no word track.
    assert [words for _, _, words in frames] == [None, None, None]
    worded = TrackCutter(1000, 10)
    frames = list(worded.push(Speech(b"\x00\x00" * 30, ((0, "a"),), ())))
    assert [words for _, _, words in frames] == [[], [], []]


# --- on the wire ---------------------------------------------------------------------------


def test_a_track_round_trips_through_the_ingest_frame_and_pcm_stays_byte_identical() -> None:
    task_id = str(uuid.uuid4())
    pcm = bytes(range(256)) * 4
    track = [(0, "n"), (12, "a"), (39, "o")]
    frame = decode_frame(encode_frame(task_id, 5, 0.5, pcm, track))  # type: ignore[arg-type]
    assert (frame.task_id, frame.chunk_id, frame.level) == (task_id, 5, 0.5)
    assert bytes(frame.pcm) == pcm and frame.visemes == track
    # No track: exactly the old layout, header then PCM.
    plain = encode_frame(task_id, 5, 0.5, pcm)
    assert len(plain) == FrameHeader.SIZE + len(pcm)
    assert decode_frame(plain).visemes is None
    empty = decode_frame(encode_frame(task_id, 6, 0.5, pcm, []))
    assert empty.visemes == [] and bytes(empty.pcm) == pcm


def test_a_cut_short_or_corrupt_track_is_a_value_error() -> None:
    data = encode_track([(0, "a"), (5, "i")])
    assert decode_track(data) == ([(0, "a"), (5, "i")], len(data))
    with pytest.raises(ValueError, match="cut short"):
        decode_track(data[:-1])
    with pytest.raises(ValueError, match="shape code"):
        decode_track(b"\x01\x00\x00\x09")


def test_audio_chunk_json_has_visemes_only_when_the_engine_is_timed() -> None:
    plain = dump(AudioChunk(task_id="t", chunk_id=0, samples=10, level=0.5))
    assert "visemes" not in plain and '"total_chunks":null' in plain
    timed = dump(
        AudioChunk(task_id="t", chunk_id=0, samples=10, level=0.5, visemes=[(0, "a"), (7, "n")])
    )
    assert '"visemes":[[0,"a"],[7,"n"]]' in timed
