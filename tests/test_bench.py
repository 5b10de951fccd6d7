"""The benchmark suite keeps working: its smallest configuration of each scenario runs here.

Only the structure of the results is checked, never a speed: the numbers of a smoke run on a
shared machine mean nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import main
from bench.nginx import find_nginx
from bench.procs import BenchError, Proc
from bench.speech_client import Utterance
from bench.speech_path import TEXTS, read_lines, realtime_streams
from bench.stats import Samples, percentile

# A smoke run starts whole stacks of service processes: far over the default 60 s pytest
# timeout on a loaded 2-core machine (a hang guard, never a speed check).
pytestmark = pytest.mark.timeout(300)

HOP_METRICS = {
    "rtt1_p50_us",
    "rtt1_p99_us",
    "conns_p50_us",
    "conns_p99_us",
    "conns_round_trips_per_s",
    "stream_messages_per_s",
    "stream_mb_per_s",
    "idle_kb_per_conn",
    "cpu_us_per_msg_1conn",
    "cpu_us_per_msg_conns",
    "cpu_us_per_msg_stream",
}


def run_bench(tmp_path: Path, *args: str) -> dict:
    output = tmp_path / "latest.json"
    assert main(["--smoke", "--output", str(output), *args]) == 0
    return json.loads(output.read_text(encoding="utf-8"))


def test_gateway_hop_smoke_run_measures_every_variant_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "gateway")

    assert results["mode"] == "smoke"
    assert results["machine"]["cpu_count"] >= 1
    assert results["machine"]["python"].startswith("3.")
    hop = results["scenarios"]["gateway"]
    expected = ["direct", "gateway", "gateway-plain"] + (["nginx"] if find_nginx() else [])
    assert hop["variants"] == expected
    for variant in expected:
        assert HOP_METRICS <= hop["medians"][variant].keys()
        assert all(value is not None for value in hop["medians"][variant].values())
    assert hop["medians"]["gateway"]["rtt1_added_p50_us"] is not None
    assert "conns_round_trips_per_s" in hop["ratios"]["gateway"]["direct"]
    # The fast path against the plain path, side by side in the same rounds.
    assert "cpu_us_per_msg_1conn" in hop["ratios"]["gateway"]["gateway-plain"]
    table = capsys.readouterr().out
    assert "| gateway hop" in table
    assert "gateway ÷ gateway-plain" in table
    assert "round trips/s" in table


def test_speech_path_smoke_run_goes_through_the_whole_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "speech")

    speech = results["scenarios"]["speech"]
    assert speech["voice"] == "sine"
    assert speech["worker_start_s"]["median"] > 0
    stack, engine = speech["medians"]["stack"], speech["medians"]["engine"]
    assert stack["ttfa_p50_ms"] > 0 and stack["rtf_p50"] > 0
    assert engine["first_chunk_p50_ms"] > 0 and engine["first_sentence_p50_ms"] > 0
    assert [row["level"] for row in speech["level_rounds"]] == [1, 2]
    assert all(row["ttfa_p50_ms"] > 0 for row in speech["level_rounds"])
    assert speech["per_line"] and all(row["frames"] > 0 for row in speech["per_line"])
    table = capsys.readouterr().out
    assert "time to first byte p50" in table
    assert "time to first audible sample p50" in table
    assert "Real-time streams on this machine" in table


def test_edge_smoke_run_measures_authentication_next_to_the_anonymous_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "edge")

    auth = results["scenarios"]["edge"]["auth"]
    assert auth["variants"] == ["anonymous", "bearer", "api_key", "ticket"]
    for variant in auth["variants"]:
        medians = auth["medians"][variant]
        assert medians["connect_p50_us"] > 0 and medians["rtt_p50_us"] > 0
        assert medians["cpu_us_per_connect"] is not None
    assert auth["ratios"]["ticket"]["connect_p50_us"] is not None
    fairness = results["scenarios"]["edge"]["fairness"]
    assert fairness["alone_ttfa_ms"] > 0 and fairness["flood_ttfa_ms"] > 0
    memory = results["scenarios"]["edge"]["memory"]
    assert memory["baseline_mb"] > 0 and memory["fragments_mb"] > 0 and memory["headers_mb"] > 0
    refused = results["scenarios"]["edge"]["refused"]
    assert refused["rest_mb"] > 0 and refused["answers"] == {"4401": refused["params"]["conns"]}
    limits = results["scenarios"]["edge"]["limits"]
    assert limits == {"skipped": "not in a smoke run"}
    table = capsys.readouterr().out
    assert "Edge: the cost of authentication" in table and "bearer ÷ anonymous" in table
    assert "Fair sharing" in table and "gateway memory under attack" in table
    assert "Edge: keyless clients" in table and "Edge: limits shared on Redis" in table


def test_report_without_nginx_shows_the_skip_reason_and_no_nginx_column() -> None:
    medians = {metric: 1.0 for metric in HOP_METRICS}
    params = {"rounds": 3, "text_bytes": 100, "conns": 50, "stream_bytes": 4096}
    hop = {
        "params": {**params, "idle_conns": 1000},
        "variants": ["direct", "gateway"],
        "skipped": {"nginx": "nginx is not installed: apt-get install -y nginx"},
        "medians": {"direct": medians, "gateway": {**medians, "rtt1_added_p50_us": 5.0}},
        "ratios": {"gateway": {"direct": {"conns_round_trips_per_s": 1.0}}},
    }

    text = "\n".join(report.gateway_tables(hop))

    assert "gateway ÷ nginx" not in text
    assert "nginx skipped: nginx is not installed" in text
    assert "≥ 0.8× nginx: n/a" in text


def test_a_service_that_dies_at_start_fails_the_bench_with_its_last_log_lines(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('config error: no such voice')"]
    proc = Proc("dying", argv, tmp_path).start()
    try:
        with pytest.raises(BenchError, match="no such voice") as caught:
            proc.wait_port(1, timeout_s=10)
        assert "dying exited" in str(caught.value)
    finally:
        proc.stop()


def test_playback_model_counts_frames_that_arrive_after_they_are_due() -> None:
    utterance = Utterance("hi", sample_rate=1000)
    # 100 ms frames: played from t=0, frame 1 is due at 0.1 s, frame 2 at 0.2 s.
    utterance.frame_arrivals = [0.0, 0.05, 0.25]
    utterance.frame_samples = [100, 100, 100]

    late, worst, silence = utterance.underruns()

    assert late == 1
    assert worst == pytest.approx(50.0)
    assert silence == pytest.approx(50.0)


def test_playback_resumes_after_a_gap_so_one_hiccup_counts_once() -> None:
    utterance = Utterance("hi", sample_rate=1000)
    # Frame 1 is 200 ms late; playing it from 0.3 s makes frame 2 due at 0.4 s, not 0.2 s.
    utterance.frame_arrivals = [0.0, 0.3, 0.35]
    utterance.frame_samples = [100, 100, 100]

    assert utterance.underruns()[0] == 1


def test_realtime_streams_is_the_largest_level_with_no_late_frame_at_or_below_it() -> None:
    rows = [
        {"level": 1, "late_frames": 0},
        {"level": 2, "late_frames": 0},
        {"level": 4, "late_frames": 2},
        {"level": 8, "late_frames": 0},
    ]
    assert realtime_streams(rows, (1, 2, 4, 8)) == 2


def test_ratios_are_paired_by_round_and_percentiles_interpolate() -> None:
    samples = Samples()
    for gateway, nginx in [(8.0, 10.0), (4.0, 10.0), (9.0, 10.0)]:
        samples.add("gateway", "rate", gateway)
        samples.add("nginx", "rate", nginx)

    assert samples.paired_ratios("gateway", "nginx") == {"rate": pytest.approx(0.8)}
    assert samples.median("gateway", "rate") == 8.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_the_bench_texts_ship_with_the_repository() -> None:
    assert TEXTS.is_relative_to(Path(__file__).resolve().parent.parent / "bench")
    assert len(read_lines()) >= 10


def test_openai_smoke_run_times_the_http_endpoint_next_to_the_websocket_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "openai")

    api = results["scenarios"]["openai"]
    assert api["voice"] == "sine" and api["params"]["lines"] == 2
    assert [(row["round"], row["line"]) for row in api["per_line"]] == [(1, 1), (1, 2)]
    assert all(row["ws_ttfa_ms"] > 0 and row["http_ttfb_ms"] > 0 for row in api["per_line"])
    assert api["medians"]["http_over_ws_p50"] > 0
    table = capsys.readouterr().out
    assert "POST /v1/audio/speech" in table and "HTTP ÷ WS" in table


@pytest.mark.timeout(400)  # the kokoro-ja model is built and loaded for the Japanese line
def test_plugins_smoke_run_times_frameworks_voicevox_and_opus_next_to_their_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_bench(tmp_path, "--scenario", "plugins")

    frameworks = results["scenarios"]["plugins"]["frameworks"]
    assert frameworks["voice"] == "sine" and frameworks["params"]["lines"] == 1
    (row,) = frameworks["per_line"]
    for method in ("raw", "livekit", "pipecat"):
        assert row[f"{method}_ttfa_ms"] > 0 and row[f"{method}_ttfa_audible_ms"] > 0
    assert frameworks["medians"]["livekit_over_raw_p50"] > 0
    assert frameworks["medians"]["pipecat_over_raw_p50"] > 0
    formats = results["scenarios"]["plugins"]["formats"]
    assert formats["params"]["ja_lines"] == 1 and formats["params"]["en_lines"] == 2
    (voicevox,) = formats["per_line"]["voicevox"]
    assert voicevox["synthesis_ms"] > 0 and voicevox["wav_ms"] > 0 and voicevox["query_ms"] > 0
    opus = formats["per_line"]["formats"]
    assert all(row["opus_bytes"] > 0 and row["audio_s"] > 0 for row in opus)
    assert formats["medians"]["opus_bytes_per_s"] > 0
    table = capsys.readouterr().out
    assert "LiveKit stream()" in table and "Pipecat" in table and "≤ 1.3× raw" in table
    assert "VOICEVOX /synthesis" in table and "opus bytes per second" in table
