"""Scenario ``voices``: each shipped voice through the whole stack, next to its engine alone.

For each voice (``heart``: hibari, ``joe``: Piper, ``jf_alpha``: kokoro-ja), on a stack that
loads only that voice (config.json's settings):

1. one line at a time (``bench/texts/lines-en.txt``, or ``lines-ja.txt`` for Japanese),
   interleaved per line: through the stack, then the same text on the engine in this process
   with its viseme timing on, then off. Time to first byte and time to the first *audible*
   sample (above -40 dBFS, where a listener playing from the first frame hears it) side by
   side, so padding or quiet onsets cannot hide in a fast first byte;
2. concurrent streams started together (levels), the largest level with no late frame;
3. ``heart`` only: arrivals spread over time (Poisson) at half that capacity, time to first
   audio under a realistic load;
4. from the utterances of 1.: how well the viseme track agrees with the audio: the share of
   vowel shapes that start in a frame louder than the utterance's median frame, next to the
   same share for ``n`` (closed). A track that follows the speech has the first well above
   the second;
5. from the same utterances: whether the word track holds exactly the words sent, in order,
   each starting inside the audio (English: the text's words; Japanese: the phrases put
   together are the text).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from . import stack as stack_mod
from .procs import REPO_ROOT, BenchError
from .speech_client import SpeechError, Utterance, close, prepare, speak_and_listen
from .speech_path import read_lines, realtime_streams
from .stats import percentile

__all__ = ["VoicesParams", "run_voices", "viseme_agreement", "word_agreement"]

TEXTS_JA = REPO_ROOT / "bench" / "texts" / "lines-ja.txt"
TEXTS_EN = REPO_ROOT / "bench" / "texts" / "lines-en.txt"


@dataclass(frozen=True)
class VoicePlan:
    voice: str
    japanese: bool
    levels: tuple[int, ...]
    poisson: bool = False


@dataclass(frozen=True)
class VoicesParams:
    lines: int = 0  # per text file; 0: all
    rounds: int = 2
    heart_levels: tuple[int, ...] = (1, 16, 32, 64, 96, 128)
    joe_levels: tuple[int, ...] = (1, 4, 8, 16)
    ja_levels: tuple[int, ...] = (1, 2, 4)
    poisson_arrivals: int = 60
    voices: tuple[str, ...] = ("heart", "joe", "jf_alpha")

    @classmethod
    def quick(cls) -> VoicesParams:
        return cls(
            lines=8,
            rounds=1,
            heart_levels=(1, 32, 64),
            joe_levels=(1, 8),
            ja_levels=(4,),
            poisson_arrivals=30,
        )

    def plan(self) -> list[VoicePlan]:
        plans = {
            "heart": VoicePlan("heart", False, self.heart_levels, poisson=True),
            "joe": VoicePlan("joe", False, self.joe_levels),
            "jf_alpha": VoicePlan("jf_alpha", True, self.ja_levels),
        }
        return [plans[voice] for voice in self.voices if voice in plans]


def run_voices(
    params: VoicesParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    results: dict[str, Any] = {"params": asdict(params), "voices": {}}
    for plan in params.plan():
        results["voices"][plan.voice] = _run_voice(params, plan, work_dir, say)
    return results


def _run_voice(
    params: VoicesParams, plan: VoicePlan, work_dir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    lines = read_lines(TEXTS_JA if plan.japanese else TEXTS_EN)
    if params.lines:
        lines = lines[: params.lines]
    say(f"voices: {plan.voice}: starting the stack")
    voice_dir = work_dir / plan.voice
    voice_dir.mkdir(exist_ok=True)
    with stack_mod.Stack(voice_dir, plan.voice) as stack:
        say(f"voices: {plan.voice}: loading the engine in the bench process (timed and not)")
        timed, plain = _load_engines(stack)
        rows: list[dict[str, Any]] = []
        utterances: list[Utterance] = []
        for number in range(1, params.rounds + 1):
            say(f"voices: {plan.voice}: round {number}/{params.rounds}, {len(lines)} lines")
            for index, text in enumerate(lines, 1):
                utterance = _run(_speak_one(stack.gateway_ws, text))
                utterances.append(utterance)
                rows.append(
                    {"round": number, "line": index, **_line_row(utterance, timed, plain, text)}
                )
        level_rows: list[dict[str, Any]] = []
        for number in range(1, params.rounds + 1):
            for level in plan.levels:
                say(f"voices: {plan.voice}: {level} streams together (round {number})")
                level_rows.append(
                    {"round": number, **_run_level(stack.gateway_ws, lines, level, number)}
                )
        capacity = realtime_streams(level_rows, plan.levels)
        poisson = None
        if plan.poisson and capacity:
            say(f"voices: {plan.voice}: Poisson arrivals at half of {capacity} streams")
            mean_audio_s = statistics.mean(u.audio_ms for u in utterances) / 1000
            poisson = _run_poisson(
                stack.gateway_ws, lines, capacity, params.poisson_arrivals, mean_audio_s
            )
        worker = stack.settings.tts_worker
    return {
        "engine": {"name": timed.name, "load_s": timed.load_s},
        "worker": {"max_concurrent": worker.max_concurrent, "frame_ms": worker.frame_ms},
        "one_at_a_time": _summarise(rows),
        "per_line": rows,
        "levels": level_rows,
        "realtime_streams": capacity,
        "poisson": poisson,
        "visemes": viseme_agreement(utterances),
        "words": word_agreement(utterances, plan.japanese),
    }


def _load_engines(stack: stack_mod.Stack) -> tuple[Any, Any]:
    from aivtuber_tts.engines import LocalEngine, build_engine
    from aivtuber_tts.voices import _with_data_dir

    worker = stack.settings.tts_worker
    voice_id = worker.default_voice
    settings = _with_data_dir(worker)[voice_id]
    engines = []
    for visemes in (True, False):
        engine = build_engine(
            voice_id,
            settings.model_copy(update={"visemes": visemes}),
            max_concurrent=worker.max_concurrent,
            warmup=worker.warmup,
        )
        if not isinstance(engine, LocalEngine):
            raise BenchError(f"voice {voice_id!r} is not an in-process engine")
        engine.load_and_warm_up()
        engines.append(engine)
    return engines[0], engines[1]


def _line_row(utterance: Utterance, timed: Any, plain: Any, text: str) -> dict[str, Any]:
    from aivtuber_tts.engines import measure

    # Alternate which goes first: the second of two runs back to back is a little faster.
    if len(text) % 2:
        with_timing, without = measure(timed, text), measure(plain, text)
    else:
        without, with_timing = measure(plain, text), measure(timed, text)
    return {
        **utterance.summary(),
        "engine_first_chunk_ms": with_timing.first_chunk_ms,
        "engine_first_audible_ms": with_timing.first_audible_ms,
        "engine_rtf": with_timing.rtf,
        "engine_plain_first_chunk_ms": without.first_chunk_ms,
        "engine_plain_rtf": without.rtf,
    }


def _summarise(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    def col(key: str) -> list[float]:
        return [row[key] for row in rows if row.get(key) is not None]

    def p(key: str, q: float) -> float | None:
        return percentile(col(key), q)

    audible_ratio = [
        row["ttfa_audible_ms"] / row["engine_first_audible_ms"]
        for row in rows
        if row.get("ttfa_audible_ms") and row.get("engine_first_audible_ms")
    ]
    return {
        "stack_ttfb_p50_ms": p("ttfa_ms", 50),
        "stack_ttfa_audible_p50_ms": p("ttfa_audible_ms", 50),
        "stack_ttfa_audible_p95_ms": p("ttfa_audible_ms", 95),
        "engine_first_chunk_p50_ms": p("engine_first_chunk_ms", 50),
        "engine_first_audible_p50_ms": p("engine_first_audible_ms", 50),
        "stack_over_engine_audible_p50": percentile(audible_ratio, 50),
        "engine_rtf_p50": p("engine_rtf", 50),
        "engine_without_timing_first_chunk_p50_ms": p("engine_plain_first_chunk_ms", 50),
        "engine_without_timing_rtf_p50": p("engine_plain_rtf", 50),
        "late_frames": float(sum(col("late_frames"))),
    }


def viseme_agreement(utterances: list[Utterance]) -> dict[str, Any]:
    """Share of vowel / closed marks that start in a frame louder than the utterance's median."""
    counts = {"vowel": [0, 0], "n": [0, 0]}  # [in a loud frame, all]
    timed = 0
    for utterance in utterances:
        frames = utterance.frame_tracks
        if not frames or any(track is None for _, track in frames):
            continue
        timed += 1
        median = statistics.median(level for level, _ in frames)
        for level, track in frames:
            for _, shape in track or []:
                kind = "n" if shape == "n" else "vowel"
                counts[kind][1] += 1
                counts[kind][0] += level > median
    if not timed:
        return {"timed": False}
    return {
        "timed": True,
        "utterances": timed,
        "vowel_marks": counts["vowel"][1],
        "n_marks": counts["n"][1],
        "vowel_share_loud": counts["vowel"][0] / counts["vowel"][1] if counts["vowel"][1] else None,
        "n_share_loud": counts["n"][0] / counts["n"][1] if counts["n"][1] else None,
    }


def word_agreement(utterances: list[Utterance], japanese: bool) -> dict[str, Any]:
    """How many utterances' word tracks are exactly the words sent, in order, each starting
    inside the audio."""
    from aivtuber_tts.words import written_words

    timed = exact = 0
    for utterance in utterances:
        tracks = utterance.frame_words
        if not tracks or any(track is None for track in tracks):
            continue
        timed += 1
        starts, words, at = [], [], 0
        for track, samples in zip(tracks, utterance.frame_samples, strict=False):
            for offset, _, word in track or []:
                starts.append(at * 1000 // utterance.sample_rate + int(offset))
                words.append(str(word))
            at += samples
        duration_ms = at * 1000 // max(1, utterance.sample_rate)
        if japanese:
            same = "".join(words) == "".join(utterance.text.split())
        else:
            same = words == written_words(utterance.text)
        exact += same and starts == sorted(starts) and all(s < duration_ms for s in starts)
    return {"timed": bool(timed), "utterances": timed, "exact": exact}


async def _speak_one(gateway_ws: str, text: str) -> Utterance:
    return await speak_and_listen(await prepare(gateway_ws, text))


def _run_level(gateway_ws: str, lines: list[str], level: int, offset: int) -> dict[str, Any]:
    texts = [lines[(offset + i) % len(lines)] for i in range(level)]
    utterances = _run(_speak_together(gateway_ws, texts))
    return {"level": level, **_group_row(utterances)}


def _group_row(utterances: list[Utterance]) -> dict[str, Any]:
    late = [u.underruns() for u in utterances]
    return {
        "streams": len(utterances),
        "ttfb_p50_ms": percentile([u.ttfa_ms for u in utterances if u.ttfa_ms is not None], 50),
        "ttfa_audible_p50_ms": percentile(
            [u.ttfa_audible_ms for u in utterances if u.ttfa_audible_ms is not None], 50
        ),
        "ttfa_audible_p95_ms": percentile(
            [u.ttfa_audible_ms for u in utterances if u.ttfa_audible_ms is not None], 95
        ),
        "late_frames": sum(count for count, _, _ in late),
        "streams_with_late_frames": sum(1 for count, _, _ in late if count),
        "worst_late_ms": max((worst for _, worst, _ in late), default=0.0),
    }


async def _speak_together(gateway_ws: str, texts: list[str]) -> list[Utterance]:
    results = await asyncio.gather(*(prepare(gateway_ws, t) for t in texts), return_exceptions=True)
    prepared = [u for u in results if isinstance(u, Utterance)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(close(u) for u in prepared))
        raise failures[0]
    return list(await asyncio.gather(*(speak_and_listen(u) for u in prepared)))


def _run_poisson(
    gateway_ws: str, lines: list[str], capacity: int, arrivals: int, mean_audio_s: float
) -> dict[str, Any]:
    """``arrivals`` utterances whose starts are a Poisson process with, on average, half
    ``capacity`` streams speaking at once (rate = capacity / 2 / mean utterance length)."""
    rate = capacity / 2 / mean_audio_s
    rng = random.Random(7)  # the same arrival pattern every run
    gaps = [rng.expovariate(rate) for _ in range(arrivals)]
    texts = [lines[i % len(lines)] for i in range(arrivals)]
    started = time.perf_counter()
    utterances = _run(_arrive(gateway_ws, texts, gaps))
    wall = time.perf_counter() - started
    audio_s = sum(u.audio_ms for u in utterances) / 1000
    return {
        "arrivals": arrivals,
        "rate_per_s": rate,
        "mean_concurrent": audio_s / wall if wall else None,
        **_group_row(utterances),
    }


async def _arrive(gateway_ws: str, texts: list[str], gaps: list[float]) -> list[Utterance]:
    async def one(text: str, delay: float) -> Utterance:
        await asyncio.sleep(delay)  # the arrival schedule itself, not a wait for an event
        return await speak_and_listen(await prepare(gateway_ws, text))

    at = 0.0
    starts = []
    for gap in gaps:
        at += gap
        starts.append(at)
    return list(await asyncio.gather(*(one(t, s) for t, s in zip(texts, starts, strict=True))))


def _run(coro: Any) -> Any:
    try:
        return uvloop.run(coro)
    except SpeechError as exc:
        raise BenchError(f"voices: {exc}") from exc
