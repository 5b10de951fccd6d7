"""The hibari engine (real model, short texts): pads trimmed exactly, loudness normalised,
mouth shapes timed, only the bundled voice, and the shared trimming on made-up audio."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from pydantic import ValidationError

from aivtuber_common.config import HibariVoice, PiperVoice
from aivtuber_tts.engines import HibariEngine, build_engine
from aivtuber_tts.engines.durations import FRAME_UNIT, timed_piece
from aivtuber_tts.engines.hibari import LEAD_KEEP, MAX_TAIL_PAUSE
from aivtuber_tts.errors import EngineError
from aivtuber_tts.visemes import ENGLISH, Speech
from tests.tts_fakes import running_recorder, running_worker, sine_settings


@pytest.fixture(scope="module")
def heart() -> HibariEngine:
    engine = build_engine("heart", HibariVoice(), warmup=False)
    assert isinstance(engine, HibariEngine)
    engine.load_and_warm_up()
    return engine


def test_heart_speaks_24_khz_normalised_speech_with_mouth_shapes(heart: HibariEngine) -> None:
    speech = heart.synthesize_piece("Hi chat! Welcome back to the stream.")
    assert isinstance(speech, Speech)
    pcm = np.frombuffer(speech.pcm, dtype="<i2")
    assert heart.sample_rate == 24000 and heart.language == "en-US"
    assert 1.0 < pcm.size / 24000 < 4.0
    # Piper's target: each call's peak at full scale. Within one step: the threads' sums
    # come in any order, so the peak before scaling (and its rounding) varies in the last bit.
    assert np.abs(pcm).max() >= 32766
    shapes = [shape for _, shape in speech.marks]
    assert shapes[0] == "n" and {"a", "e", "i"} <= set(shapes)
    offsets = [offset for offset, _ in speech.marks]
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < pcm.size


def test_heart_trims_exactly_what_the_durations_say(heart: HibariEngine) -> None:
    text = "Welcome back to the stream."
    tts = heart._tts
    [phonemes] = tts.phonemize(text)
    ids = tts.ids(phonemes)
    outputs = tts.sess.run(
        None, {"ids": np.asarray([ids], np.int64), "speed": np.asarray([1.0], np.float32)}
    )
    durations = outputs[6].astype(int)
    raw_samples = int(durations.sum()) * FRAME_UNIT
    lead = int(durations[0]) * FRAME_UNIT - LEAD_KEEP
    tail = int(durations[-1]) * FRAME_UNIT  # the end pad
    final_pause = int(durations[-2]) * FRAME_UNIT  # the "."
    expected = raw_samples - lead - tail - max(0, final_pause - MAX_TAIL_PAUSE)
    speech = heart.synthesize_piece(text)
    assert isinstance(speech, Speech)
    assert len(speech.pcm) // 2 == expected
    assert durations[0] * FRAME_UNIT >= 7200  # hibari's ~300 ms lead pad, now mostly gone


def test_timed_piece_trims_caps_the_pause_normalises_and_shifts_the_marks() -> None:
    unit = FRAME_UNIT
    symbols = ["^", "m", "a", ".", "$"]
    durations = np.array([10, 2, 4, 12, 3])
    audio = np.zeros(durations.sum() * unit, np.float32)
    audio[10 * unit : 16 * unit] = 0.25  # the spoken part, quiet like hibari
    speech, spoken = timed_piece(
        audio,
        durations,
        symbols,
        ENGLISH,
        sample_rate=24000,
        lead_keep=unit,
        max_tail_pause=2 * unit,
        pause_symbols=".",
    )
    pcm = np.frombuffer(speech.pcm, dtype="<i2")
    # 9 units of lead pad and the end pad go; the "." keeps 2 of its 12 units.
    assert pcm.size == (1 + 2 + 4 + 2) * unit
    assert pcm.max() == 32767  # 0.25 normalised to full scale
    assert pcm[0] == 0  # faded in: no click
    assert speech.marks == ((0, "n"), (3 * unit, "a"), (7 * unit, "n"))
    # The phonemes' timing in the trimmed piece: the lead pad starts before it.
    assert spoken[:4] == [
        ("^", -9 * unit, 10 * unit),
        ("m", unit, 2 * unit),
        ("a", 3 * unit, 4 * unit),
        (".", 7 * unit, 12 * unit),
    ]


def test_only_the_bundled_voice_is_accepted_and_nothing_is_downloaded() -> None:
    with pytest.raises(ValidationError, match="not bundled"):
        HibariVoice(speaker="emma")
    with pytest.raises(EngineError, match="not bundled"):
        HibariEngine("emma").load()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PiperVoice(speaker="heart")  # a piper voice has no speaker


async def test_heart_through_the_worker_sends_a_track_with_every_frame() -> None:
    async with running_recorder() as recorder:
        voices = {"heart": HibariVoice()}
        settings = sine_settings(recorder.url, voices=voices, frame_ms=40, warmup=False)
        async with running_worker(settings) as worker:
            task_id = str(uuid.uuid4())
            response = await worker.submit(
                "Okay, let us try this level one more time.", task_id=task_id
            )
            assert response.status_code == 202
            task = await recorder.ended(task_id)
    assert task.open.engine == "hibari" and task.open.sample_rate == 24000
    assert task.end is not None and task.end.status == "completed"
    frame_samples = 24000 * 40 // 1000
    marks = 0
    for frame in task.frames:
        assert frame.visemes is not None
        assert all(
            0 <= offset < len(frame.pcm) // 2 * 1000 // 24000 + 1 for offset, _ in frame.visemes
        )
        assert all(offset < 40 for offset, _ in frame.visemes)
        marks += len(frame.visemes)
    assert task.frames[0].visemes and task.frames[0].visemes[0] == (0, "n")
    assert all(len(frame.pcm) // 2 == frame_samples for frame in task.frames[:-1])
    assert marks >= 8  # a dozen syllables move the mouth
