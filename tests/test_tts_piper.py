"""The real Piper voice through the worker, and the worker's start-up checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from aivtuber_common.config import PiperVoice
from aivtuber_tts.engines import Engine, PiperEngine, build_engine, measure
from aivtuber_tts.engines.piper import PiperVoice as LoadedVoice
from aivtuber_tts.engines.piper import session_options
from aivtuber_tts.visemes import Speech
from tests.support import eventually
from tests.tts_fakes import running_recorder, running_worker, sine_settings

TEXT = "Hello everyone, welcome back to the stream. Thank you for coming!"


@pytest.mark.piper
async def test_piper_task_streams_plausible_non_silent_speech_at_22050_hz() -> None:
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"joe": PiperVoice()})
        async with running_worker(settings) as worker:
            health = (await worker.health()).json()
            task_id = str(uuid.uuid4())
            assert (await worker.submit(TEXT, task_id=task_id)).status_code == 202
            task = await recorder.ended(task_id)
    assert health["voices"][0]["engine"] == "piper"
    assert health["voices"][0]["device"] == "cpu"  # no GPU on the test machine
    assert health["voices"][0]["sample_rate"] == 22050
    assert task.open.sample_rate == 22050 and task.open.engine == "piper"
    assert task.end is not None and task.end.status == "completed"
    assert [frame.chunk_id for frame in task.frames] == list(range(len(task.frames)))
    pcm = np.frombuffer(b"".join(frame.pcm for frame in task.frames), dtype="<i2")
    seconds = pcm.size / 22050
    assert 2.0 < seconds < 8.0  # 11 words of speech
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) / 32768
    assert rms > 0.03
    # Speech has pauses and loud parts: the mouth must move.
    levels = [frame.level for frame in task.frames]
    assert max(levels) > 0.1 and min(levels) < 0.05


class HeldWide(PiperEngine):
    """The real Piper engine whose wide session is built only once the test lets go, and
    which remembers whether each piece ran on it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.on_wide: list[bool] = []

    def load_wide(self) -> None:
        self.release.wait(60)
        super().load_wide()

    def _synthesize(self, voice: LoadedVoice | None, piece: str) -> bytes | Speech:
        self.on_wide.append(voice is not None and voice is self._wide)
        return super()._synthesize(voice, piece)


@pytest.mark.piper
@pytest.mark.timeout(300)
async def test_the_wide_session_is_built_after_the_worker_is_ready_and_then_takes_lone_pieces() -> (
    None
):
    engines: list[HeldWide] = []

    def factory(voice_id: str, voice: object, max_concurrent: int = 1, **_: object) -> Engine:
        engine = HeldWide(device="cpu", intra_op_threads=1, wide_threads=2)
        engines.append(engine)
        return engine

    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"joe": PiperVoice()}, max_concurrent=2)
        try:
            async with running_worker(settings, engine_factory=factory) as worker:
                # Ready, and speaking, while the wide session is not even built.
                (engine,) = engines
                assert engine._wide is None
                before = str(uuid.uuid4())
                assert (await worker.submit("Ready before it.", task_id=before)).status_code == 202
                spoken_before = await recorder.ended(before)
                engine.on_wide.clear()
                engine.release.set()
                async with asyncio.timeout(120):
                    await eventually(lambda: engine._wide is not None)
                after = str(uuid.uuid4())
                assert (await worker.submit("And alone after.", task_id=after)).status_code == 202
                spoken_after = await recorder.ended(after)
        finally:
            for engine in engines:
                engine.release.set()  # the worker's shutdown awaits the build
    for task in (spoken_before, spoken_after):
        assert task.end is not None and task.end.status == "completed" and task.frames
    # The warm-up of the wide session, then the lone piece, on it.
    assert engine.on_wide and engine.on_wide[-1] is True


@pytest.mark.piper
def test_engine_timing_measures_first_chunk_sentence_and_real_time_factor() -> None:
    engine = build_engine("joe", PiperVoice(), max_concurrent=2)
    assert isinstance(engine, PiperEngine)
    engine.load_and_warm_up()
    timing = measure(engine, "Hi chat! Welcome back to the stream, it is good to see you.")
    assert timing.pieces == 2  # "Hi chat!" alone, then the next sentence
    assert 0 < timing.first_chunk_ms <= timing.total_ms
    assert timing.audio_ms > 1000 and timing.rtf > 0
    assert engine.load_s is not None and engine.device == "cpu"


def test_multi_threaded_piper_sessions_do_not_spin_while_idle() -> None:
    spinning = "session.intra_op.allow_spinning"
    two = session_options(2)
    assert two.intra_op_num_threads == 2 and two.get_session_config_entry(spinning) == "0"
    # One thread has no pool to spin: onnxruntime's defaults stay.
    assert session_options(1).intra_op_num_threads == 1


def run_worker(tmp_path: Path, config: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "aivtuber_tts", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_device_cuda_without_a_gpu_stops_at_start_with_one_line(tmp_path: Path) -> None:
    result = run_worker(
        tmp_path,
        {"tts_worker": {"voices": {"joe": {"engine": "piper", "device": "cuda"}}}},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tts_worker.voices.joe.device" in lines[0] and "'cuda'" in lines[0]
    assert "onnxruntime-gpu" in lines[0]


def test_a_missing_piper_model_stops_at_start_with_one_line(tmp_path: Path) -> None:
    model = tmp_path / "nobody.onnx"
    result = run_worker(
        tmp_path,
        {
            "tts_worker": {
                "voices": {"joe": {"engine": "piper", "model": str(model)}},
            }
        },
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tts-worker: config error: tts_worker.voices.joe.model: no such Piper model file {model}"
    ]


@pytest.mark.piper
def test_piper_alignments_give_mouth_shapes_inside_the_audio() -> None:
    from aivtuber_tts.visemes import Speech

    engine = build_engine("joe", PiperVoice(), max_concurrent=2, warmup=False)
    assert isinstance(engine, PiperEngine)
    engine.load()
    assert engine.language == "en-US"
    voice = engine._voice
    assert voice is not None
    [chunk] = list(voice.synthesize("Hi chat!", include_alignments=True))
    assert chunk.phoneme_alignments  # the model was patched in memory at load
    assert sum(a.num_samples for a in chunk.phoneme_alignments) == len(chunk.audio_float_array)
    speech = engine.synthesize_piece("Hello everyone, welcome back.")
    assert isinstance(speech, Speech)
    samples = len(speech.pcm) // 2
    offsets = [offset for offset, _ in speech.marks]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < samples
    assert {"e", "o", "a"} <= {shape for _, shape in speech.marks}
    # visemes: false skips the alignment work and sends plain PCM
    plain = build_engine("joe", PiperVoice(visemes=False), warmup=False)
    assert isinstance(plain, PiperEngine)
    plain.load()
    assert isinstance(plain.synthesize_piece("Hello."), bytes)


def test_piper_lead_cut_takes_the_pads_silence_but_never_sound() -> None:
    from aivtuber_tts.engines.piper import LEAD_GUARD, _lead_cut

    audio = np.zeros(3000, np.int16)
    audio[:600] = 20  # the pad: -64 dBFS, silence to the ear
    audio[600:1000] = 100  # an onset the vocoder spread into the pad (-50 dBFS)
    audio[1000:] = 5000  # the phoneme, loud
    # The pad's silence goes, up to a short guard before the onset (kept whole)...
    assert _lead_cut(audio, bos_samples=1024) == 600 - LEAD_GUARD
    # ...never past the pad, even when the phoneme starts quietly...
    assert _lead_cut(audio, bos_samples=300) == 300
    # ...and a sound from the first samples on keeps everything.
    audio[:600] = 100
    assert _lead_cut(audio, bos_samples=1024) == 0


@pytest.mark.piper
def test_a_timed_piper_piece_starts_sooner() -> None:
    from aivtuber_tts.engines import first_audible_sample
    from aivtuber_tts.visemes import Speech

    engine = build_engine("joe", PiperVoice(), max_concurrent=2, warmup=False)
    assert isinstance(engine, PiperEngine)
    engine.load()
    assert engine._voice is not None
    [chunk] = list(engine._voice.synthesize("Hello everyone.", include_alignments=True))
    assert chunk.phoneme_alignments
    bos = chunk.phoneme_alignments[0].num_samples
    speech = engine.synthesize_piece("Hello everyone.")
    assert isinstance(speech, Speech)
    plain_start = first_audible_sample(chunk.audio_int16_bytes)
    timed_start = first_audible_sample(speech.pcm)
    assert plain_start is not None and timed_start is not None
    assert bos >= 768  # Piper's BOS pad: 35 ms or more of near silence
    assert timed_start < plain_start  # most of it cut (the onset itself never)
