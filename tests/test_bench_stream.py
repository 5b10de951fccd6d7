"""``./benchmark --scenario stream`` keeps working (its smoke run, structure only: never a
speed), and its pieces: the simulated LLM's tokens and the jitter-buffer playback model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.speech_path import read_lines
from bench.stream import REPLIES, _Heard, first_boundary, tokens

# A smoke run starts whole stacks of service processes: far over the default 60 s pytest
# timeout on a loaded 2-core machine (a hang guard, never a speed check).
pytestmark = pytest.mark.timeout(300)


def test_stream_smoke_run_speaks_a_reply_three_ways_and_prints_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "latest.json"
    assert main(["--smoke", "--scenario", "stream", "--output", str(output)]) == 0
    stream = json.loads(output.read_text(encoding="utf-8"))["scenarios"]["stream"]
    rows = stream["voices"]["sine"]["rows"]
    assert sorted(row["mode"] for row in rows) == ["sentences", "stream", "whole"]
    assert all(row["first_audible_ms"] > 0 and row["audio_ms"] > 0 for row in rows)
    assert all(row["late_frames"] >= 0 for row in rows)
    assert next(row for row in rows if row["mode"] == "stream")["after_boundary_ms"] is not None
    assert stream["voices"]["sine"]["flush_p50_ms"] > 0
    assert {row["rate"] for row in stream["max_wait"]} == {5, 50}
    table = capsys.readouterr().out
    assert "Streaming an LLM's reply" in table and "stream ÷ whole" in table


def test_the_simulated_llm_writes_every_reply_back_exactly() -> None:
    replies = read_lines(REPLIES)
    assert len(replies) >= 10
    for reply in replies:
        pieces = tokens(reply)
        assert "".join(pieces) == reply
        assert len(pieces) > len(reply.split())  # word pieces and punctuation
    pieces = tokens("Oh, you're back! I missed you.")
    # "Oh," is an interjection: the splitter may cut once the white space after it came.
    assert "".join(pieces[: first_boundary(pieces) + 1]) == "Oh, you'"


def test_the_jitter_buffer_playback_counts_late_frames_and_the_silence() -> None:
    heard = _Heard(sample_rate=1000, first_audible=150)
    # 100 ms frames arriving at 0, 0.05, 0.35 (due at 0.3 with a 0.1 s buffer), 0.36.
    heard.arrivals = [0.0, 0.05, 0.35, 0.36]
    heard.samples = [100, 100, 100, 100]
    first, ends, late, silence = heard.playback_both()
    assert first == pytest.approx(0.15)  # played from the first frame on: its 150th sample
    assert late == 1 and silence == pytest.approx(0.05)
    assert ends == pytest.approx(0.35 + 0.2)
