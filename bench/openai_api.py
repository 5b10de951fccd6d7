"""Scenario ``openai``: time to first audio of ``POST /v1/audio/speech`` next to the WebSocket
path, the same lines, voice and stack, measured side by side.

On one running stack (the speech path's: four processes from their main.py), for every line
of ``bench/texts/lines-en.txt``, one after the other:

- **WebSocket**: as a frontend (both sockets open before the clock): ``speak`` sent -> first
  PCM byte (``bench.speech_client``);
- **HTTP**: the OpenAI-compatible endpoint through the gateway, ``response_format: pcm``, on a
  kept-alive connection (as an SDK's client keeps it): request sent -> first body byte,
  which is the first PCM byte (the answer starts with the first frame).

The two alternate which goes first from line to line, so neither always runs on a warmer
machine. Per line the ratio HTTP ÷ WebSocket; the table shows the median over lines, then over
rounds. Target: ≤ 1.2×.
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
from .procs import BenchError
from .speech_client import SpeechError, prepare, speak_and_listen
from .speech_path import TEXTS, read_lines
from .stats import Samples, percentile

__all__ = ["OpenAIParams", "openai_tables", "run_openai_api"]

TARGET = 1.2
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class OpenAIParams:
    rounds: int = 3
    lines: int = 0  # 0: every line
    voice: str = "joe"

    @classmethod
    def quick(cls) -> OpenAIParams:
        return cls(rounds=3, lines=4)

    @classmethod
    def smoke(cls) -> OpenAIParams:
        return cls(rounds=1, lines=2, voice="sine")


def run_openai_api(
    params: OpenAIParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    lines = read_lines()
    if params.lines:
        lines = lines[: params.lines]
    say(f"openai api: starting the stack (voice {params.voice!r})")
    with stack_mod.Stack(work_dir, params.voice) as stack:
        http_url = f"http://127.0.0.1:{stack.ports.gateway}/v1/audio/speech"
        try:
            per_line = uvloop.run(_measure(stack.gateway_ws, http_url, lines, params, say))
        except (SpeechError, httpx.HTTPError) as exc:
            raise BenchError(f"openai api: {exc}") from exc
    samples = Samples()
    for number in range(1, params.rounds + 1):
        rows = [row for row in per_line if row["round"] == number]
        ws = [row["ws_ttfa_ms"] for row in rows]
        http = [row["http_ttfb_ms"] for row in rows]
        samples.add_all(
            "openai",
            {
                "ws_ttfa_p50_ms": percentile(ws, 50),
                "ws_ttfa_p95_ms": percentile(ws, 95),
                "http_ttfb_p50_ms": percentile(http, 50),
                "http_ttfb_p95_ms": percentile(http, 95),
                "http_over_ws_p50": percentile([row["ratio"] for row in rows], 50),
            },
        )
    return {
        "params": {**asdict(params), "lines": len(lines), "texts": TEXTS.name},
        "voice": params.voice,
        "medians": samples.medians().get("openai", {}),
        "rounds": samples.rounds(),
        "per_line": per_line,
    }


async def _measure(
    gateway_ws: str, http_url: str, lines: list[str], params: OpenAIParams, say: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        # One request first: the kept-alive connection, as a client would have it.
        await _http_ttfb(client, http_url, lines[0], params.voice)
        for number in range(1, params.rounds + 1):
            say(f"openai api: round {number}/{params.rounds}: {len(lines)} lines")
            for index, text in enumerate(lines):
                if index % 2:
                    http = await _http_ttfb(client, http_url, text, params.voice)
                    ws = await _ws_ttfa(gateway_ws, text)
                else:
                    ws = await _ws_ttfa(gateway_ws, text)
                    http = await _http_ttfb(client, http_url, text, params.voice)
                rows.append(
                    {
                        "round": number,
                        "line": index + 1,
                        "ws_ttfa_ms": ws,
                        "http_ttfb_ms": http,
                        "ratio": http / ws if ws else None,
                    }
                )
    return rows


async def _ws_ttfa(gateway_ws: str, text: str) -> float:
    utterance = await speak_and_listen(await prepare(gateway_ws, text))
    if utterance.ttfa_ms is None:
        raise SpeechError(f"no audio over the WebSocket path for {text[:40]!r}")
    return utterance.ttfa_ms


async def _http_ttfb(client: httpx.AsyncClient, url: str, text: str, voice: str) -> float:
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm"}
    sent = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise SpeechError(f"/v1/audio/speech answered {response.status_code}: {response.text}")
        async for chunk in response.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter()
    if first is None:
        raise SpeechError(f"/v1/audio/speech sent no audio for {text[:40]!r}")
    return (first - sent) * 1000


def openai_tables(result: dict[str, Any]) -> list[str]:
    from .report import _check, _fmt, _ratio, markdown_table

    medians = result["medians"]
    ratio = medians.get("http_over_ws_p50")
    params = result["params"]
    rows = [
        [
            "time to first audio p50 (ms)",
            _fmt(medians.get("ws_ttfa_p50_ms"), "int"),
            _fmt(medians.get("http_ttfb_p50_ms"), "int"),
            _ratio(ratio),
            _check(ratio, f"≤ {TARGET}× WebSocket", upper=TARGET),
        ],
        [
            "time to first audio p95 (ms)",
            _fmt(medians.get("ws_ttfa_p95_ms"), "int"),
            _fmt(medians.get("http_ttfb_p95_ms"), "int"),
            "",
            "",
        ],
    ]
    heading = (
        f"### OpenAI speech API vs WebSocket path (voice {result['voice']}, "
        f"{params['lines']} lines, {params['rounds']} rounds)"
    )
    header = ["", "WebSocket (speak)", "POST /v1/audio/speech", "HTTP ÷ WS", "target"]
    return [heading, markdown_table(header, rows)]
