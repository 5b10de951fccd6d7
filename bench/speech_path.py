"""Scenario 2, the speech path: the whole stack through the gateway, next to the engine alone.

Three parts, in this order, on one running stack:

1. worker start: process start -> ``/health`` 200 (voice loaded and warmed up); the stack's own
   worker is the first sample, full mode starts a few more workers beside it;
2. one utterance at a time over the lines of ``bench/texts/lines-en.txt``, interleaved per line:
   through the stack (time to first audio, real-time factor, late frames), then the same text
   on the engine loaded in this process, split exactly as the worker splits (its first-chunk
   time, its time for the whole first sentence, its real-time factor);
3. concurrent streams: for each level (1, 2, 4, ...) that many utterances start together;
   levels interleave within a round, rounds repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from . import stack as stack_mod
from .procs import REPO_ROOT, BenchError, free_port
from .speech_client import SpeechError, Utterance, close, prepare, speak_and_listen
from .stats import Samples, median, percentile

__all__ = ["TEXTS", "SpeechParams", "read_lines", "run_speech_path"]

TEXTS = REPO_ROOT / "bench" / "texts" / "lines-en.txt"


@dataclass(frozen=True)
class SpeechParams:
    rounds: int = 3
    lines: int = 0  # how many lines of the text file; 0: all of them
    levels: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32)
    worker_starts: int = 3  # timed worker starts, the stack's own included
    voice: str = "joe"

    @classmethod
    def quick(cls) -> SpeechParams:
        return cls(rounds=3, lines=4, levels=(1, 4, 16), worker_starts=1)

    @classmethod
    def smoke(cls) -> SpeechParams:
        """The smallest run through every step (the test suite's): the sine voice."""
        return cls(rounds=1, lines=2, levels=(1, 2), worker_starts=1, voice="sine")


def read_lines(path: Path = TEXTS) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise BenchError(f"cannot read the bench texts: {exc}") from exc
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise BenchError(f"{path} has no lines to speak")
    return lines


def run_speech_path(
    params: SpeechParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start the stack, measure, stop it; the scenario's section of latest.json."""
    lines = read_lines()
    if params.lines:
        lines = lines[: params.lines]
    say(f"speech path: starting the stack (voice {params.voice!r})")
    with stack_mod.Stack(work_dir, params.voice) as stack:
        assert stack.worker_ready_s is not None
        starts = [stack.worker_ready_s]
        for number in range(2, params.worker_starts + 1):
            say(f"speech path: worker start {number}/{params.worker_starts}")
            starts.append(_extra_worker_start(stack, work_dir, number))
        say("speech path: loading the engine in the bench process")
        engine = _load_engine(stack)
        utterances = Samples()
        per_line: list[dict[str, Any]] = []
        for number in range(1, params.rounds + 1):
            say(f"speech path: round {number}/{params.rounds}: {len(lines)} lines, one at a time")
            round_rows = [
                {"line": index, **_one_line(stack.gateway_ws, engine, text)}
                for index, text in enumerate(lines, 1)
            ]
            per_line.extend({"round": number, **row} for row in round_rows)
            _add_round(utterances, round_rows)
        levels = Samples()
        level_rounds: list[dict[str, Any]] = []
        for number in range(1, params.rounds + 1):
            say(f"speech path: round {number}/{params.rounds}: streams {params.levels}")
            for level in params.levels:
                row = _run_level(stack, lines, level, offset=number)
                level_rounds.append({"round": number, **row})
                numbers = {k: v for k, v in row.items() if isinstance(v, int | float)}
                levels.add_all(str(level), {k: v for k, v in numbers.items() if k != "level"})
    return {
        "params": {**asdict(params), "lines": len(lines), "texts": str(TEXTS.name)},
        "voice": params.voice,
        "engine": {"name": engine.name, "device": engine.device, "load_s": engine.load_s},
        "worker_settings": _worker_settings(stack),
        "worker_start_s": {"samples": starts, "median": median(starts)},
        "medians": utterances.medians(),
        "rounds": utterances.rounds(),
        "per_line": per_line,
        "levels": levels.medians(),
        "level_rounds": level_rounds,
        "realtime_streams": realtime_streams(level_rounds, params.levels),
    }


def realtime_streams(level_rounds: list[dict[str, Any]], levels: tuple[int, ...]) -> int:
    """The largest level such that it and every level below it had no late frame, ever."""
    best = 0
    for level in sorted(levels):
        late = sum(row["late_frames"] for row in level_rounds if row["level"] == level)
        if late:
            break
        best = level
    return best


def _load_engine(stack: stack_mod.Stack) -> Any:
    # The worker's own engine code and settings: same splitting, same thread count.
    from aivtuber_tts.engines import LocalEngine, build_engine

    worker = stack.settings.tts_worker
    voice = worker.default_voice
    engine = build_engine(
        voice, worker.voices[voice], max_concurrent=worker.max_concurrent, warmup=worker.warmup
    )
    if not isinstance(engine, LocalEngine):
        raise BenchError(f"voice {voice!r} is not an in-process engine: no engine-alone column")
    engine.load_and_warm_up()
    return engine


def _worker_settings(stack: stack_mod.Stack) -> dict[str, Any]:
    worker = stack.settings.tts_worker
    return {"max_concurrent": worker.max_concurrent, "frame_ms": worker.frame_ms}


def _extra_worker_start(stack: stack_mod.Stack, work_dir: Path, number: int) -> float:
    """A second worker beside the stack's (same output handler, its own port), timed."""
    ports = stack_mod.Ports(
        stack.ports.gateway,
        stack.ports.input_handler,
        stack.ports.output_handler,
        free_port(),
    )
    data = stack_mod.stack_config(ports, stack.settings.tts_worker.default_voice)
    path, settings = stack_mod.write_config(work_dir, data, f"worker-{number}.json")
    proc, ready_s = stack_mod.start_worker(path, settings, work_dir, f"tts_worker-{number}")
    proc.stop()
    return ready_s


def _one_line(gateway_ws: str, engine: Any, text: str) -> dict[str, Any]:
    from aivtuber_tts.engines import measure

    utterance = _run(_speak_one(gateway_ws, text))
    summary: dict[str, Any] = utterance.summary()
    timing = measure(engine, text)
    summary.update(
        engine_first_chunk_ms=timing.first_chunk_ms,
        engine_first_audible_ms=timing.first_audible_ms,
        engine_first_sentence_ms=timing.first_sentence_ms,
        engine_rtf=timing.rtf,
        engine_audio_ms=timing.audio_ms,
        pieces=timing.pieces,
    )
    return summary


async def _speak_one(gateway_ws: str, text: str) -> Utterance:
    return await speak_and_listen(await prepare(gateway_ws, text))


def _add_round(samples: Samples, rows: list[dict[str, Any]]) -> None:
    def col(key: str) -> list[float]:
        return [row[key] for row in rows if row.get(key) is not None]

    stack_ttfa, engine_first = col("ttfa_ms"), col("engine_first_chunk_ms")
    paired = [
        row["ttfa_ms"] / row["engine_first_chunk_ms"]
        for row in rows
        if row.get("ttfa_ms") and row.get("engine_first_chunk_ms")
    ]
    samples.add_all(
        "stack",
        {
            "ttfa_p50_ms": percentile(stack_ttfa, 50),
            "ttfa_p95_ms": percentile(stack_ttfa, 95),
            # the first sample above -40 dBFS, where the listener hears it
            "ttfa_audible_p50_ms": percentile(col("ttfa_audible_ms"), 50),
            "rtf_p50": percentile(col("rtf"), 50),
            "late_frames": float(sum(col("late_frames"))),
            "ttfa_over_engine_p50": percentile(paired, 50),
        },
    )
    samples.add_all(
        "engine",
        {
            "first_chunk_p50_ms": percentile(engine_first, 50),
            "first_chunk_p95_ms": percentile(engine_first, 95),
            "first_audible_p50_ms": percentile(col("engine_first_audible_ms"), 50),
            "first_sentence_p50_ms": percentile(col("engine_first_sentence_ms"), 50),
            "first_sentence_p95_ms": percentile(col("engine_first_sentence_ms"), 95),
            "rtf_p50": percentile(col("engine_rtf"), 50),
        },
    )


def _run_level(stack: stack_mod.Stack, lines: list[str], level: int, offset: int) -> dict[str, Any]:
    texts = [lines[(offset + i) % len(lines)] for i in range(level)]
    # Where the CPU goes at this level: each service, and this process (the clients).
    cpu_before = {proc.name: proc.cpu_exact_seconds() for proc in stack.procs}
    own_before, started = time.process_time(), time.perf_counter()
    utterances = _run(_speak_together(stack.gateway_ws, texts))
    wall = time.perf_counter() - started
    cpu = {proc.name: proc.cpu_exact_seconds() - cpu_before[proc.name] for proc in stack.procs}
    cpu["bench_clients"] = time.process_time() - own_before
    ttfa = [u.ttfa_ms for u in utterances if u.ttfa_ms is not None]
    late = [u.underruns() for u in utterances]
    audio_s = sum(u.audio_ms for u in utterances) / 1000
    return {
        "level": level,
        "ttfa_p50_ms": percentile(ttfa, 50),
        "ttfa_p95_ms": percentile(ttfa, 95),
        "rtf_p50": percentile([u.rtf for u in utterances if u.rtf is not None], 50),
        "late_frames": sum(count for count, _, _ in late),
        "streams_with_late_frames": sum(1 for count, _, _ in late if count),
        "worst_late_ms": max(worst for _, worst, _ in late),
        "silence_ms_p50": percentile([silence for _, _, silence in late], 50),
        "audio_s": audio_s,
        "wall_s": wall,
        # CPU seconds per second of audio: the worker's bounds the streams the cores carry.
        "worker_cpu_per_audio_s": cpu.get("tts_worker", 0.0) / audio_s if audio_s else None,
        "proxying_cpu_per_audio_s": sum(
            cpu.get(name, 0.0) for name in ("gateway", "input_handler", "output_handler")
        )
        / audio_s
        if audio_s
        else None,
        "cpu_s": cpu,
    }


async def _speak_together(gateway_ws: str, texts: list[str]) -> list[Utterance]:
    """Open every client's sockets first, then send every speak at once."""
    results = await asyncio.gather(*(prepare(gateway_ws, t) for t in texts), return_exceptions=True)
    prepared = [u for u in results if isinstance(u, Utterance)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(close(u) for u in prepared))
        raise failures[0]
    return list(await asyncio.gather(*(speak_and_listen(u) for u in prepared)))


def _run(coro: Any) -> Any:
    try:
        return uvloop.run(coro)
    except SpeechError as exc:
        raise BenchError(f"speech path: {exc}") from exc
