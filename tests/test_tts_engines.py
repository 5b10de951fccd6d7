"""Engines without the worker around them: the sine tone, the engine factory, the timer."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from structlog.testing import capture_logs

from aivtuber_common.audio import level
from aivtuber_common.config import (
    HibariVoice,
    HttpVoice,
    KokoroJaVoice,
    PiperVoice,
    SineVoice,
)
from aivtuber_tts.engines import (
    HttpEngine,
    PiperEngine,
    SineEngine,
    build_engine,
    intra_op_threads,
    measure,
    wide_threads,
)
from aivtuber_tts.errors import EngineError
from aivtuber_tts.splitting import split_text


def test_sine_is_deterministic_audible_and_as_long_as_its_text() -> None:
    engine = SineEngine(sample_rate=16000, frequency_hz=220.0, ms_per_char=50.0)
    first = engine.synthesize_piece("Hello there.")
    assert first == engine.synthesize_piece("Hello there.")
    assert len(first) // 2 == 12 * 50 * 16  # 12 characters, 50 ms each, 16 samples per ms
    assert level(first) > 0.1
    samples = np.frombuffer(first, dtype="<i2")
    assert abs(int(samples[0])) < 100 and abs(int(samples[-1])) < 100  # faded, no click


def test_sine_streams_one_piece_per_split_of_the_text() -> None:
    engine = SineEngine(sample_rate=8000, frequency_hz=300.0, ms_per_char=10.0)
    text = "Hi chat! Welcome back to the stream, it is so good to see you all. Bye!"
    pieces = list(engine.synthesize(text))
    assert [len(p) // 2 for p in pieces] == [len(s) * 80 for s in split_text(text)]


async def test_local_engines_run_each_piece_through_the_slot_they_are_given() -> None:
    engine = SineEngine(sample_rate=8000, frequency_hz=300.0, ms_per_char=10.0)
    asked: list[int] = []

    async def run(work, chars):  # type: ignore[no-untyped-def]
        asked.append(chars)
        return work()

    pieces = [pcm async for pcm in engine.stream("Hi chat! How are you all doing?", run)]
    assert asked == [8, 22] and len(pieces) == 2


async def test_a_failing_piece_becomes_an_engine_error_with_one_sentence() -> None:
    class Broken(SineEngine):
        def synthesize_piece(self, piece: str) -> bytes:
            raise RuntimeError("no espeak data")

    engine = Broken(sample_rate=8000, frequency_hz=300.0, ms_per_char=10.0)

    async def run(work, chars):  # type: ignore[no-untyped-def]
        return work()

    with (
        capture_logs() as logs,
        pytest.raises(EngineError, match="^The sine engine failed: no espeak data$"),
    ):
        async for _ in engine.stream("Hello.", run):
            pass
    assert [(log["event"], log["piece"]) for log in logs] == [("engine_failed", "Hello.")]


def test_measure_times_the_pieces_as_the_worker_makes_them() -> None:
    engine = SineEngine(sample_rate=8000, frequency_hz=300.0, ms_per_char=10.0)
    timing = measure(engine, "Hi chat! Welcome back to the stream, it is so good to see you.")
    assert timing.pieces == 2
    assert timing.audio_ms == pytest.approx((8 + 53) * 10.0)
    assert 0 < timing.first_chunk_ms <= timing.total_ms
    assert timing.rtf == pytest.approx(timing.total_ms / timing.audio_ms)
    # the tone fades in over 5 ms: its first audible sample comes right after the first chunk
    assert timing.first_audible_ms is not None
    assert timing.first_chunk_ms <= timing.first_audible_ms <= timing.first_chunk_ms + 5.0
    assert set(timing.as_dict()) == {
        "first_chunk_ms",
        "first_audible_ms",
        "first_sentence_ms",
        "total_ms",
        "audio_ms",
        "rtf",
        "pieces",
    }


def test_threads_are_shared_evenly_among_engine_slots_unless_set() -> None:
    assert intra_op_threads(PiperVoice(), max_concurrent=2, cpus=2) == 1
    assert intra_op_threads(PiperVoice(), max_concurrent=1, cpus=2) == 2
    assert intra_op_threads(PiperVoice(), max_concurrent=8, cpus=2) == 1
    assert intra_op_threads(PiperVoice(intra_op_threads=3), max_concurrent=2, cpus=2) == 3
    # hibari runs on one thread; kokoro_ja's long calls get every core
    assert intra_op_threads(HibariVoice(), max_concurrent=1, cpus=8) == 1
    assert intra_op_threads(KokoroJaVoice(), max_concurrent=2, cpus=4) == 4


def test_piper_gets_a_two_thread_session_for_lone_pieces_unless_threads_are_set() -> None:
    assert wide_threads(PiperVoice(), cpus=2) == 2
    assert wide_threads(PiperVoice(), cpus=1) == 1  # no wider than one: none (below)
    assert wide_threads(PiperVoice(intra_op_threads=1), cpus=8) == 0
    engine = PiperEngine(device="cpu", intra_op_threads=1, wide_threads=2, warmup=False)
    engine.load()
    assert engine._voice is not None and engine._wide is None  # built after the voice is ready
    engine.load_wide()
    assert engine._wide is not None
    assert engine._voice.session.get_session_options().intra_op_num_threads == 1
    assert engine._wide.session.get_session_options().intra_op_num_threads == 2
    assert PiperEngine(device="cpu", intra_op_threads=1, wide_threads=1).wide_threads == 0


async def test_the_factory_builds_each_engine_from_its_voice() -> None:
    async with httpx.AsyncClient() as client:
        piper = build_engine("joe", PiperVoice(device="cpu"), 1, client)
        sine = build_engine("tone", SineVoice(sample_rate=16000), 1, client)
        remote = build_engine(
            "gpu",
            HttpVoice(url="http://gpu:9000/tts", remote_voice="narrator"),
            1,
            client,
        )
    assert isinstance(piper, PiperEngine) and piper.model_path.name == "en_US-joe-medium.onnx"
    assert piper.intra_op_threads >= 1
    assert isinstance(sine, SineEngine) and sine.sample_rate == 16000
    assert isinstance(remote, HttpEngine) and remote.voice == "narrator"
    assert remote.device == "remote"
