"""PCM framing, loudness and WAV headers shared by the worker and the output handler."""

from __future__ import annotations

import io
import wave

import numpy as np

from aivtuber_common.audio import FrameCutter, level, samples_per_frame, wav_bytes


def test_frame_cutter_emits_whole_frames_as_pieces_arrive_and_a_shorter_last_one() -> None:
    cutter = FrameCutter(sample_rate=1000, frame_ms=10)  # 10 samples = 20 bytes a frame
    assert cutter.frame_bytes == 20
    assert list(cutter.push(b"\x01" * 15)) == []
    frames = list(cutter.push(b"\x02" * 30))
    assert [len(f) for f in frames] == [20, 20]
    assert frames[0] == b"\x01" * 15 + b"\x02" * 5
    assert cutter.flush() == b"\x02" * 4  # the odd fifth byte is half a sample


def test_frame_cutter_flush_returns_the_remainder_without_a_half_sample() -> None:
    cutter = FrameCutter(sample_rate=1000, frame_ms=10)
    assert list(cutter.push(b"\x00" * 27)) == [b"\x00" * 20]
    assert cutter.flush() == b"\x00" * 6
    assert cutter.flush() is None


def test_samples_per_frame_follows_rate_and_duration() -> None:
    assert samples_per_frame(22050, 40) == 882
    assert samples_per_frame(16000, 10) == 160


def test_level_is_zero_for_silence_and_one_for_a_full_scale_square_wave() -> None:
    assert level(b"") == 0.0
    assert level(np.zeros(100, dtype="<i2").tobytes()) == 0.0
    square = np.array([32767, -32768] * 50, dtype="<i2").tobytes()
    assert level(square) == 1.0
    half = np.array([16384, -16384] * 50, dtype="<i2").tobytes()
    assert 0.49 < level(half) < 0.51


def test_wav_bytes_is_a_valid_wav_holding_the_pcm() -> None:
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    with wave.open(io.BytesIO(wav_bytes(22050, pcm))) as reader:
        assert reader.getframerate() == 22050
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.readframes(reader.getnframes()) == pcm
