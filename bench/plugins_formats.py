"""Scenario ``plugins``, its VOICEVOX and formats rows: what the VOICEVOX-compatible API and
the Opus encoding cost next to the plain speech API, side by side on one stack.

One stack (the speech path's four processes) with ``jf_alpha`` (kokoro-ja) and ``heart``:

1. **VOICEVOX vs OpenAI WAV**, the Japanese lines of ``bench/texts/lines-ja.txt``: per line,
   ``POST /voicevox/audio_query`` (timed too), then ``POST /voicevox/synthesis`` with that
   query, total time (request sent -> last byte of the WAV), next to
   ``POST /v1/audio/speech`` with ``response_format: wav`` for the same voice and line,
   total time. The two alternate which goes first. Target: synthesis <= 1.2x.
2. **Opus vs PCM**, the English lines, voice ``heart``: the same request with
   ``response_format`` ``opus`` and ``pcm``, time to the first body byte (a kept-alive
   connection each), alternating; and Opus bytes per second of audio (the audio's length
   from the PCM answer). Target: first byte <= 1.2x.

Hook: ``run_plugins_formats(params, work_dir, say)`` and ``plugins_formats_tables(result)``
(the ``plugins`` scenario of ``bench/__main__.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop

from . import stack as stack_mod
from .procs import REPO_ROOT, BenchError
from .speech_path import read_lines
from .stats import Samples, percentile

__all__ = ["FormatsParams", "plugins_formats_tables", "run_plugins_formats"]

TARGET = 1.2
TEXTS_JA = REPO_ROOT / "bench" / "texts" / "lines-ja.txt"
TEXTS_EN = REPO_ROOT / "bench" / "texts" / "lines-en.txt"
TIMEOUT = httpx.Timeout(180.0)
ALPHA_STYLE = 0  # jf_alpha's default style id (input_handler.voicevox.style_ids)
PCM_RATE_HEART = 24000


@dataclass(frozen=True)
class FormatsParams:
    rounds: int = 2
    ja_lines: int = 6  # kokoro-ja costs ~0.5-2 s a line: a few lines
    en_lines: int = 0  # 0: every line
    ja_voice: str = "jf_alpha"
    en_voice: str = "heart"

    @classmethod
    def quick(cls) -> FormatsParams:
        return cls(rounds=1, ja_lines=3, en_lines=8)

    @classmethod
    def smoke(cls) -> FormatsParams:
        return cls(rounds=1, ja_lines=1, en_lines=2)


def run_plugins_formats(
    params: FormatsParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    ja = read_lines(TEXTS_JA)[: params.ja_lines or None]
    en = read_lines(TEXTS_EN)[: params.en_lines or None]

    def both_voices(data: dict[str, Any]) -> None:
        voices = data["tts_worker"]["voices"]
        voices[params.en_voice] = stack_mod.default_voice_config(params.en_voice)

    say(f"plugins formats: starting the stack ({params.ja_voice} and {params.en_voice})")
    with stack_mod.Stack(work_dir, params.ja_voice, both_voices) as stack:
        base = f"http://127.0.0.1:{stack.ports.gateway}"
        try:
            rows = uvloop.run(_measure(base, ja, en, params, say))
        except httpx.HTTPError as exc:
            raise BenchError(f"plugins formats: {exc}") from exc
    samples = Samples()
    for number in range(1, params.rounds + 1):
        vv = [row for row in rows["voicevox"] if row["round"] == number]
        fm = [row for row in rows["formats"] if row["round"] == number]
        samples.add_all(
            "plugins_formats",
            {
                "query_p50_ms": percentile([r["query_ms"] for r in vv], 50),
                "synthesis_p50_ms": percentile([r["synthesis_ms"] for r in vv], 50),
                "openai_wav_p50_ms": percentile([r["wav_ms"] for r in vv], 50),
                "synthesis_over_wav_p50": percentile([r["ratio"] for r in vv], 50),
                "opus_first_byte_p50_ms": percentile([r["opus_ms"] for r in fm], 50),
                "pcm_first_byte_p50_ms": percentile([r["pcm_ms"] for r in fm], 50),
                "opus_over_pcm_p50": percentile([r["ratio"] for r in fm], 50),
                "opus_bytes_per_s": sum(r["opus_bytes"] for r in fm)
                / max(1e-9, sum(r["audio_s"] for r in fm)),
            },
        )
    return {
        "params": {**asdict(params), "ja_lines": len(ja), "en_lines": len(en)},
        "medians": samples.medians().get("plugins_formats", {}),
        "rounds": samples.rounds(),
        "per_line": rows,
    }


async def _measure(
    base: str, ja: list[str], en: list[str], params: FormatsParams, say: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {"voicevox": [], "formats": []}
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
        # Warm connections and caches once, as a long-running client has them.
        await _speech(client, base, en[0], params.en_voice, "pcm")
        await _synthesis(client, base, ja[0])
        for number in range(1, params.rounds + 1):
            say(f"plugins formats: round {number}/{params.rounds}: VOICEVOX, {len(ja)} lines")
            for index, text in enumerate(ja):
                if index % 2:
                    wav_ms, _, _ = await _speech(client, base, text, params.ja_voice, "wav")
                    query_ms, synthesis_ms = await _synthesis(client, base, text)
                else:
                    query_ms, synthesis_ms = await _synthesis(client, base, text)
                    wav_ms, _, _ = await _speech(client, base, text, params.ja_voice, "wav")
                rows["voicevox"].append(
                    {
                        "round": number,
                        "line": index + 1,
                        "query_ms": query_ms,
                        "synthesis_ms": synthesis_ms,
                        "wav_ms": wav_ms,
                        "ratio": synthesis_ms / wav_ms,
                    }
                )
            say(f"plugins formats: round {number}/{params.rounds}: Opus, {len(en)} lines")
            for index, text in enumerate(en):
                order = ("opus", "pcm") if index % 2 else ("pcm", "opus")
                got = {
                    fmt: await _speech(client, base, text, params.en_voice, fmt) for fmt in order
                }
                (_, opus_ms, opus_bytes), (_, pcm_ms, pcm_bytes) = got["opus"], got["pcm"]
                rows["formats"].append(
                    {
                        "round": number,
                        "line": index + 1,
                        "opus_ms": opus_ms,
                        "pcm_ms": pcm_ms,
                        "ratio": opus_ms / pcm_ms,
                        "opus_bytes": opus_bytes,
                        "audio_s": pcm_bytes / 2 / PCM_RATE_HEART,
                    }
                )
    return rows


async def _speech(
    client: httpx.AsyncClient, base: str, text: str, voice: str, response_format: str
) -> tuple[float, float, int]:
    """(total ms, first byte ms, body bytes) of one ``/v1/audio/speech``."""
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": response_format}
    sent = time.perf_counter()
    first: float | None = None
    size = 0
    async with client.stream("POST", f"{base}/v1/audio/speech", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise BenchError(f"/v1/audio/speech answered {response.status_code}: {response.text}")
        async for chunk in response.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter()
            size += len(chunk)
    done = time.perf_counter()
    if first is None:
        raise BenchError(f"/v1/audio/speech sent no audio for {text[:40]!r}")
    return (done - sent) * 1000, (first - sent) * 1000, size


async def _synthesis(client: httpx.AsyncClient, base: str, text: str) -> tuple[float, float]:
    """(audio_query ms, synthesis ms) of one line through the VOICEVOX API."""
    params: dict[str, str | int] = {"text": text, "speaker": ALPHA_STYLE}
    sent = time.perf_counter()
    query = await client.post(f"{base}/voicevox/audio_query", params=params)
    queried = time.perf_counter()
    if query.status_code != 200:
        raise BenchError(f"/voicevox/audio_query answered {query.status_code}: {query.text}")
    started = time.perf_counter()
    wav = await client.post(
        f"{base}/voicevox/synthesis", params={"speaker": ALPHA_STYLE}, json=query.json()
    )
    done = time.perf_counter()
    if wav.status_code != 200 or wav.content[:4] != b"RIFF":
        raise BenchError(f"/voicevox/synthesis answered {wav.status_code}: {wav.text[:200]}")
    return (queried - sent) * 1000, (done - started) * 1000


def plugins_formats_tables(result: dict[str, Any]) -> list[str]:
    from .report import _check, _fmt, _ratio, markdown_table

    m = result["medians"]
    params = result["params"]
    vv_ratio, opus_ratio = m.get("synthesis_over_wav_p50"), m.get("opus_over_pcm_p50")
    rows = [
        [
            f"{params['ja_voice']}: VOICEVOX /synthesis vs /v1/audio/speech wav, total (ms)",
            _fmt(m.get("synthesis_p50_ms"), "int"),
            _fmt(m.get("openai_wav_p50_ms"), "int"),
            _ratio(vv_ratio),
            _check(vv_ratio, f"≤ {TARGET}×", upper=TARGET),
        ],
        [
            f"{params['ja_voice']}: VOICEVOX /audio_query (ms)",
            _fmt(m.get("query_p50_ms"), "int"),
            "",
            "",
            "",
        ],
        [
            f"{params['en_voice']}: opus vs pcm, first byte (ms)",
            _fmt(m.get("opus_first_byte_p50_ms"), "int"),
            _fmt(m.get("pcm_first_byte_p50_ms"), "int"),
            _ratio(opus_ratio),
            _check(opus_ratio, f"≤ {TARGET}×", upper=TARGET),
        ],
        [
            f"{params['en_voice']}: opus bytes per second of audio",
            _fmt(m.get("opus_bytes_per_s"), "int"),
            "",
            "",
            "",
        ],
    ]
    heading = (
        f"### VOICEVOX API and Opus ({params['ja_lines']} Japanese, {params['en_lines']} "
        f"English lines, {params['rounds']} rounds, p50)"
    )
    header = ["", "measured", "baseline", "ratio", "target"]
    return [heading, markdown_table(header, rows)]
