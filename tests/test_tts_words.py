"""Word timing: which written word each phoneme belongs to (aivtuber_tts.words), the word
track per frame and on the wire, the real timed voices against the text (every shared line
for the English voices), and the track through the whole stack on both buses, resumed too."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from aivtuber_common.config import BusSettings
from aivtuber_common.internal import FrameHeader, TaskOpen, decode_frame, encode_frame
from aivtuber_common.protocol import AudioChunk, dump
from aivtuber_common.words import MAX_WORD_BYTES, MAX_WORDS, decode_words, encode_words
from aivtuber_output.store import TaskStore
from aivtuber_tts.engines import HibariEngine, PiperEngine
from aivtuber_tts.engines.base import LocalEngine
from aivtuber_tts.visemes import Speech, TrackCutter
from aivtuber_tts.words import japanese_words, phones, time_words, written_words
from bench.speech_client import Utterance
from bench.voices import word_agreement
from tests.frontend import Heard, frontend, listen, speak
from tests.test_end_to_end import stack
from tests.test_streaming import append, end, open_stream

TEXTS = Path(__file__).resolve().parents[1] / "bench" / "texts"


def english_lines() -> list[str]:
    lines = (TEXTS / "lines-en.txt").read_text("utf-8").splitlines()
    replies = TEXTS / "replies-en.txt"
    if replies.exists():
        lines += replies.read_text("utf-8").splitlines()
    return [line for line in lines if line.strip()]


# --- what a word is, and tying phonemes to words ---------------------------------------------


def test_english_words_are_the_pieces_between_spaces_that_hold_a_letter_or_digit() -> None:
    text = "Hi chat!  It's 7:30 — the U.S. & “you”…"
    assert written_words(text) == ["Hi", "chat!", "It's", "7:30", "the", "U.S.", "“you”…"]


def test_japanese_words_are_accent_phrases_spelled_as_in_the_text() -> None:
    pyopenjtalk = pytest.importorskip("pyopenjtalk")

    def words(text: str) -> list[str]:
        nodes = pyopenjtalk.run_frontend(text)
        return japanese_words(text, [(n["string"], n["chain_flag"]) for n in nodes])

    assert words("こんにちは、今日も配信に来てくれてありがとう。") == [
        "こんにちは、",
        "今日も",
        "配信に",
        "来てくれて",
        "ありがとう。",
    ]
    # OpenJTalk reads "42" as 四十二 and writes VTuber full-width: the text's spelling is kept,
    # and the number is not cut in two.
    spoken = words("VTuberの配信は42回目です！")
    assert spoken[0] == "VTuberの" and "".join(spoken) == "VTuberの配信は42回目です！"
    assert words("「今日は」いい天気ですね") == ["「今日は」", "いい", "天気ですね"]


def test_time_words_ties_merged_and_expanded_words_to_their_phonemes() -> None:
    # espeak-ng runs "of the" together and reads "42" as two words; stress marks and
    # spaces are not compared.
    words = ["of", "the", "42", "cats."]
    own = ["ʌv", "ðə", "fˈɔːɹɾi tˈuː", "kˈæts."]
    said = "ʌvðə fˈɔːɹɾi tˈuː kˈæts."
    spoken = phones([(symbol, 10) for symbol in said])
    marks = time_words(words, own, spoken, total=10 * len(said))
    assert [word for _, _, word in marks] == words
    start_of = {word: start for start, _, word in marks}
    assert start_of["of"] == 0 and start_of["the"] == 20  # ʌ v | ð ə
    assert start_of["42"] == said.index("f") * 10
    assert start_of["cats."] == said.index("k") * 10
    # A stress mark's time goes with the sound after it, a length mark's with the one before:
    # "tˈuː" ends where the space starts.
    end_of_42 = next(start + n for start, n, word in marks if word == "42")
    assert end_of_42 == said.index(" k") * 10


def test_a_word_no_phoneme_matches_takes_no_time_where_the_last_one_ended() -> None:
    spoken = phones([("h", 100), ("a", 100), ("ɪ", 100)])
    marks = time_words(["Hi", "—ok"], ["haɪ", "zzz"], spoken, total=300)
    assert marks == ((0, 300, "Hi"), (299, 0, "—ok"))  # never past the audio's last sample


# --- the track per frame, and on the wire ----------------------------------------------------


def test_track_cutter_gives_each_word_to_the_frame_it_starts_in_across_pieces() -> None:
    rate, frame_ms = 1000, 40  # 40 samples a frame, 1 ms a sample
    cutter = TrackCutter(rate, frame_ms)
    first = Speech(b"\x00\x00" * 70, ((0, "a"),), ((5, 30, "Hello"), (45, 20, "there,")))
    second = Speech(b"\x00\x00" * 45, ((0, "o"),), ((2, 40, "chat!"),))
    frames = list(cutter.push(first)) + list(cutter.push(second))
    last = cutter.flush()
    assert last is not None
    frames.append(last)
    # The second piece starts at sample 70: its word at 2 is sample 72, in frame 40-80.
    assert [words for _, _, words in frames] == [
        [(5, 30, "Hello")],
        [(5, 20, "there,"), (32, 40, "chat!")],
        [],
    ]


def test_word_tracks_round_trip_in_the_ingest_frame_and_untracked_frames_stay_identical() -> None:
    task_id = str(uuid.uuid4())
    pcm = bytes(range(256)) * 2
    words = [(0, 210, "配信に"), (12, 80, "chat!")]
    both = decode_frame(encode_frame(task_id, 9, 0.5, pcm, [(0, "a")], words))
    assert (both.chunk_id, both.visemes, both.words, bytes(both.pcm)) == (
        9,
        [(0, "a")],
        words,
        pcm,
    )
    only_words = decode_frame(encode_frame(task_id, 10, 0.5, pcm, None, []))
    assert (only_words.chunk_id, only_words.visemes, only_words.words) == (10, None, [])
    assert bytes(only_words.pcm) == pcm
    plain = encode_frame(task_id, 11, 0.5, pcm)
    assert len(plain) == FrameHeader.SIZE + len(pcm)  # byte for byte the old layout
    assert decode_frame(plain).words is None


def test_a_word_track_is_bounded_and_a_bad_one_is_a_value_error() -> None:
    long_word = "あ" * 200  # 600 bytes of UTF-8: cut at a character boundary
    data = encode_words([(0, 1, long_word)] * (MAX_WORDS + 10))
    decoded, end = decode_words(data)
    assert end == len(data) and len(decoded) == MAX_WORDS
    assert decoded[0][2] == "あ" * (MAX_WORD_BYTES // 3)
    with pytest.raises(ValueError, match="more than"):
        decode_words(bytes([MAX_WORDS + 1]) + b"\x00" * 600)
    with pytest.raises(ValueError, match="cut short"):
        decode_words(encode_words([(0, 5, "word")])[:-1])
    with pytest.raises(ValueError, match="not UTF-8"):
        decode_words(b"\x01\x00\x00\x05\x00\x02\xff\xfe")


async def test_the_output_store_counts_words_against_its_memory_bound() -> None:
    store = TaskStore(task_wait_s=1, task_ttl_s=60, task_timeout_s=60, max_buffered_bytes=1 << 20)
    task_id = str(uuid.uuid4())
    store.open(TaskOpen(task_id=task_id, text="x", voice="v", engine="e", sample_rate=16000))
    store.append(task_id, 0, 0.1, b"\x00" * 100, [], [(0, 10, "w" * 200)] * 3)
    store.append(task_id, 1, 0.1, b"\x00" * 100)
    try:
        assert store.buffered_bytes == 100 + 600 + 100
    finally:
        store.close()


def test_audio_chunk_json_has_words_only_when_the_engine_is_timed() -> None:
    plain = dump(AudioChunk(task_id="t", chunk_id=0, samples=10, level=0.5))
    assert "words" not in plain
    timed = dump(
        AudioChunk(
            task_id="t", chunk_id=0, samples=10, level=0.5, visemes=[], words=[(3, 250, "Hi")]
        )
    )
    assert '"words":[[3,250,"Hi"]]' in timed


# --- the real voices against the text --------------------------------------------------------


def assert_words_match(engine: LocalEngine, text: str, expected: list[str]) -> None:
    """Piece by piece as the worker speaks: the track's words are exactly the words sent, in
    order (and see :func:`spoken_words`)."""
    assert spoken_words(engine, text) == expected


def spoken_words(engine: LocalEngine, text: str) -> list[str]:
    """The track's words piece by piece as the worker speaks, each checked to start inside
    its piece's audio, starts never going back."""
    got: list[str] = []
    for piece in engine.split(text):
        speech = engine.synthesize_piece(piece)
        assert isinstance(speech, Speech)
        samples = len(speech.pcm) // 2
        starts = [start for start, _, _ in speech.words]
        assert starts == sorted(starts), piece
        assert all(0 <= start < samples and start + n <= samples for start, n, _ in speech.words)
        # Most words take time: a word with none is one the alignment could not place.
        assert sum(1 for _, n, _ in speech.words if n > 0) >= len(speech.words) - 1, piece
        got += [word for _, _, word in speech.words]
    return got


@pytest.fixture(scope="module")
def heart() -> HibariEngine:
    engine = HibariEngine(warmup=False)
    engine.load()
    return engine


def test_heart_times_exactly_the_words_sent_on_every_shared_line(heart: HibariEngine) -> None:
    for line in english_lines():
        assert_words_match(heart, line, written_words(line))


@pytest.mark.piper
def test_joe_times_exactly_the_words_sent_on_every_shared_line() -> None:
    joe = PiperEngine(device="cpu", warmup=False)
    joe.load()
    for line in english_lines():
        assert_words_match(joe, line, written_words(line))
    # Numbers, abbreviations and symbols expand to several spoken words, or none.
    odd = "I have 42 items in the U.S. at 7:30 pm, of the kind Dr. Smith's friends like — really."
    assert_words_match(joe, odd, written_words(odd))


# --- through the stack -----------------------------------------------------------------------


def words_of(heard: Heard) -> list[tuple[int, int, str]]:
    """Each word with its start in ms from the task's first sample, from the chunks."""
    rate = heard.start["sample_rate"] if heard.start else 0
    out, at = [], 0
    for chunk in heard.chunks:
        for offset, duration, word in chunk.get("words", []):
            assert 0 <= offset < chunk["samples"] * 1000 // rate + 1
            out.append((at * 1000 // rate + offset, duration, word))
        at += chunk["samples"]
    return out


async def test_the_word_track_reaches_subscribers_on_both_buses_and_on_resume(
    bus: BusSettings,
) -> None:
    text = "Okay, let us try this level one more time. I think I have got it now."
    async with stack(bus, heart=True) as s, frontend(s.url) as (ws, _):
        task_id = await speak(ws, text, voice="heart")
        heard = await listen(s.url, task_id)
        resumed = await listen(s.url, task_id, query="?from_chunk=20")
    assert heard.end is not None and heard.end["type"] == "audio_complete"
    assert all("words" in chunk for chunk in heard.chunks)  # a timed voice: every frame
    timed = words_of(heard)
    assert [word for _, _, word in timed] == written_words(text)
    starts = [start for start, _, _ in timed]
    assert starts == sorted(starts) and starts[-1] < heard.end["duration_ms"]
    # A late subscriber from chunk 20 gets exactly the words of those frames.
    assert [c["chunk_id"] for c in resumed.chunks][0] == 20
    later = [w for c in heard.chunks[20:] for w in c["words"]]
    assert [w for c in resumed.chunks for w in c["words"]] == later and later


async def test_a_streamed_reply_keeps_its_words_whole_and_in_order_across_clauses(
    bus: BusSettings,
) -> None:
    pieces = ["Okay, let us ", "try this le", "vel one more time. I th", "ink I have got it now."]
    text = "".join(pieces)
    async with stack(bus, heart=True) as s, frontend(s.url) as (ws, _):
        task_id = await open_stream(ws, voice="heart")
        listener = asyncio.create_task(listen(s.url, task_id))
        for piece in pieces:
            await append(ws, task_id, piece)
        await end(ws, task_id)
        async with asyncio.timeout(30):
            heard = await listener
    assert [c["chunk_id"] for c in heard.chunks] == list(range(len(heard.chunks)))
    timed = words_of(heard)
    assert [word for _, _, word in timed] == written_words(text)
    starts = [start for start, _, _ in timed]
    assert starts == sorted(starts) and heard.end is not None
    assert starts[-1] < heard.end["duration_ms"]


async def test_an_untimed_voice_sends_no_word_track(bus: BusSettings) -> None:
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        heard = await listen(s.url, await speak(ws, "Just a tone, no words."))
    assert heard.chunks and not any("words" in chunk for chunk in heard.chunks)


def test_the_bench_counts_an_utterance_exact_only_with_every_word_in_order_inside_the_audio() -> (
    None
):
    def heard(text: str, tracks: list[list[list[Any]] | None]) -> Utterance:
        utterance = Utterance(text=text, sample_rate=1000)
        utterance.frame_words, utterance.frame_samples = tracks, [100] * len(tracks)
        return utterance

    good = heard("Hi chat!", [[[5, 50, "Hi"]], [[20, 80, "chat!"]]])
    reordered = heard("Hi chat!", [[[5, 50, "chat!"]], [[20, 80, "Hi"]]])
    missing = heard("Hi chat!", [[[5, 50, "Hi"]], []])
    untimed = heard("Hi chat!", [None, None])
    assert word_agreement([good, reordered, missing, untimed], japanese=False) == {
        "timed": True,
        "utterances": 3,
        "exact": 1,
    }
    ja = heard("今日も 配信に", [[[0, 90, "今日も"], [95, 90, "配信に"]]])
    assert word_agreement([ja], japanese=True)["exact"] == 1
