"""Scenario ``plugins``, part ``frameworks``: the LiveKit and Pipecat plugins next to the raw
streaming protocol, the same reply, voice and stack, measured side by side.

On one running stack (the speech path's: four processes from their main.py, voice ``heart``),
each line of ``bench/texts/lines-en.txt`` is cut into word pieces as an LLM streams them
(each word with its following space) and sent three ways, pieces back to back, one after the
other (the order rotates from line to line, so none always runs on a warmer machine):

- **raw**: the protocol by hand (``/ws/input`` open before the clock): ``speak`` with
  ``"stream": true`` and the first piece; on the answer the other pieces as ``append``, then
  ``end``, then ``/ws/output/{task_id}`` opened;
- **LiveKit**: ``AIVTuberTTS.stream()`` (connection prewarmed): ``push_text`` per piece,
  ``end_input()``; frames as the stream yields them;
- **Pipecat**: ``AIVTuberTTSService`` in a running Pipecat pipeline (connected at start): an
  LLM turn as Pipecat's LLM services push it, one ``LLMTextFrame`` per piece; frames as they
  reach the processor after the service.

Clock: from the first piece handed over (sent, pushed, queued) to the first audio frame, and
to the first audible sample under the playback model of ``bench.speech_client`` (playing
starts with the first frame). Per line the ratio plugin ÷ raw; the table shows the median over
lines, then over rounds. Target: ≤ 1.3× raw.

Other parts of this scenario (the VOICEVOX API, Opus) add their own keys next to
``frameworks`` in ``results["scenarios"]["plugins"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from aivtuber_integrations.client import AIVTuberError

from . import stack as stack_mod
from .procs import BenchError
from .speech_client import AUDIBLE, SpeechError, Utterance
from .speech_path import TEXTS, read_lines
from .stats import Samples, percentile

__all__ = ["FrameworkParams", "framework_tables", "pieces", "run_frameworks"]

TARGET = 1.3
METHODS = ("raw", "livekit", "pipecat")
NAMES = {"raw": "raw protocol", "livekit": "LiveKit stream()", "pipecat": "Pipecat"}
TURN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FrameworkParams:
    rounds: int = 3
    lines: int = 0  # 0: every line
    voice: str = "heart"

    @classmethod
    def quick(cls) -> FrameworkParams:
        return cls(rounds=2, lines=4)

    @classmethod
    def smoke(cls) -> FrameworkParams:
        return cls(rounds=1, lines=1, voice="sine")


def pieces(text: str) -> list[str]:
    """``text`` as an LLM streams it: each word with the spaces after it."""
    return re.findall(r"\S+\s*", text)


def run_frameworks(
    params: FrameworkParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    lines = read_lines()
    if params.lines:
        lines = lines[: params.lines]
    say(f"plugins: starting the stack (voice {params.voice!r})")
    with stack_mod.Stack(work_dir, params.voice) as stack:
        try:
            per_line = uvloop.run(_measure(stack.gateway_ws, lines, params, say))
        except (SpeechError, AIVTuberError, TimeoutError) as exc:
            raise BenchError(f"plugins: {exc}") from exc
    samples = Samples()
    for number in range(1, params.rounds + 1):
        rows = [row for row in per_line if row["round"] == number]
        values: dict[str, float | None] = {}
        for method in METHODS:
            for key in ("ttfa_ms", "ttfa_audible_ms"):
                values[f"{method}_{key}_p50"] = percentile([r[f"{method}_{key}"] for r in rows], 50)
        for method in ("livekit", "pipecat"):
            ratios = [r[f"{method}_ratio"] for r in rows if r[f"{method}_ratio"] is not None]
            values[f"{method}_over_raw_p50"] = percentile(ratios, 50)
        samples.add_all("frameworks", values)
    return {
        "params": {**asdict(params), "lines": len(lines), "texts": TEXTS.name},
        "voice": params.voice,
        "medians": samples.medians().get("frameworks", {}),
        "rounds": samples.rounds(),
        "per_line": per_line,
    }


async def _measure(
    gateway_ws: str, lines: list[str], params: FrameworkParams, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    from .plugins_drivers import LiveKitDriver, PipecatDriver

    rows: list[dict[str, Any]] = []
    async with (
        contextlib.AsyncExitStack() as stack,
        connect(f"{gateway_ws}/ws/input", compression=None) as control,
    ):
        await control.recv()  # task_id_assigned
        livekit = await stack.enter_async_context(LiveKitDriver(gateway_ws, params.voice))
        pipecat = await stack.enter_async_context(PipecatDriver(gateway_ws, params.voice))
        drivers: dict[str, Callable[[list[str]], Awaitable[Utterance]]] = {
            "raw": lambda parts: _raw(control, gateway_ws, parts, params.voice),
            "livekit": livekit.speak,
            "pipecat": pipecat.speak,
        }
        for method in METHODS:  # one turn each first: connections and code paths warm
            await drivers[method](pieces(lines[0]))
        for number in range(1, params.rounds + 1):
            say(f"plugins: round {number}/{params.rounds}: {len(lines)} lines")
            for index, text in enumerate(lines):
                order = METHODS[index % 3 :] + METHODS[: index % 3]
                heard = {method: await drivers[method](pieces(text)) for method in order}
                row: dict[str, Any] = {"round": number, "line": index + 1}
                for method, utterance in heard.items():
                    row[f"{method}_ttfa_ms"] = utterance.ttfa_ms
                    row[f"{method}_ttfa_audible_ms"] = utterance.ttfa_audible_ms
                raw = row["raw_ttfa_ms"]
                for method in ("livekit", "pipecat"):
                    value = row[f"{method}_ttfa_ms"]
                    row[f"{method}_ratio"] = value / raw if value and raw else None
                rows.append(row)
    return rows


async def _raw(
    control: ClientConnection, gateway_ws: str, parts: list[str], voice: str
) -> Utterance:
    """The streaming protocol by hand, the way a plugin would ideally speak it."""
    utterance = Utterance(text="".join(parts), voice=voice)
    speak = {"type": "speak", "text": parts[0], "stream": True, "voice": voice}
    utterance.sent_at = time.perf_counter()
    await control.send(json.dumps(speak))
    answer = json.loads(await control.recv())
    if answer.get("action") != "upload_processed":
        raise SpeechError(f"raw: speak refused: {answer}")
    task_id = answer["task_id"]
    # The rest of the text goes out at once (as the plugins send it while their listener
    # connects); the output handler keeps the frames for a subscriber that comes after them.
    for part in parts[1:]:
        await control.send(json.dumps({"type": "append", "task_id": task_id, "text": part}))
    await control.send(json.dumps({"type": "end", "task_id": task_id}))
    async with connect(f"{gateway_ws}/ws/output/{task_id}", compression=None) as output:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            async for message in output:
                if isinstance(message, bytes):
                    record(utterance, message, utterance.sample_rate)
                    continue
                data = json.loads(message)
                if data["type"] == "audio_start":
                    utterance.sample_rate = int(data["sample_rate"])
                elif data["type"] == "audio_complete":
                    break
                elif data["type"] == "error":
                    raise SpeechError(f"raw: {data}")
    return utterance


def record(utterance: Utterance, pcm: bytes, sample_rate: int) -> None:
    """One frame heard: its arrival, its length, and where the first audible sample is."""
    now = time.perf_counter()
    if utterance.first_pcm_at is None:
        utterance.first_pcm_at = now
    utterance.sample_rate = sample_rate
    samples = np.frombuffer(pcm, dtype="<i2")
    if utterance.first_audible_sample is None:
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > AUDIBLE)
        if loud.size:
            utterance.first_audible_sample = sum(utterance.frame_samples) + int(loud[0])
    utterance.frame_arrivals.append(now)
    utterance.frame_samples.append(len(samples))


def framework_tables(result: dict[str, Any]) -> list[str]:
    from .report import _check, _fmt, _ratio, markdown_table

    medians = result["medians"]
    params = result["params"]
    rows = []
    for method, name in NAMES.items():
        ratio = medians.get(f"{method}_over_raw_p50")
        rows.append(
            [
                name,
                _fmt(medians.get(f"{method}_ttfa_ms_p50"), "int"),
                _fmt(medians.get(f"{method}_ttfa_audible_ms_p50"), "int"),
                _ratio(ratio) if method != "raw" else "",
                _check(ratio, f"≤ {TARGET}× raw", upper=TARGET) if method != "raw" else "",
            ]
        )
    heading = (
        f"### Framework plugins vs the raw streaming protocol (voice {result['voice']}, "
        f"{params['lines']} lines cut into word pieces, {params['rounds']} rounds)"
    )
    header = [
        "",
        "first piece -> first frame p50 (ms)",
        "-> first audible p50 (ms)",
        "÷ raw (first frame)",
        "target",
    ]
    return [heading, markdown_table(header, rows)]
