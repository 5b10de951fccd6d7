"""Scenario 3, the browser: time to first audio as heard in a real page, next to the Python
client's figure for the same lines, on one running stack.

The page is the gateway's ``/demo`` in Debian's Chromium (headless, driven by Playwright;
never a browser download). For each line, interleaved, one after the other:

- in the page: ``aivtuberDemo.speak(line)`` is pressed; the page reports when the line's
  first frame arrived (``firstFrameMs``), when its first sample was played and when its first
  audible sample (above -40 dBFS) was played, by the audio clock (``ttfaMs``,
  ``ttfaAudibleMs``: speak pressed -> that sample at the output, jitter buffer and the
  output device's latency included); the input socket stays open across lines, as in a real
  page, and the output socket opens per line;
- the Python client (``speech_client``): speak sent -> first PCM byte, and speak sent -> first
  audible sample (its playback model: playing starts with the first frame, no device), both
  sockets opened before the clock starts.

The target compares like with like: the page's first audible sample heard, p50, against the
Python client's first audible sample, p50, plus 30 ms.

One warm-up line in the page first (the AudioContext's first start is not a line's cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import stack as stack_mod
from .chromium import CHROMIUM_ARGS, find_chromium
from .procs import BenchError
from .speech_path import _run, _speak_one, read_lines
from .stats import Samples, percentile

__all__ = ["BrowserParams", "run_browser_path"]

LINE_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class BrowserParams:
    rounds: int = 3
    lines: int = 0  # how many lines of the text file; 0: all of them
    voice: str = "joe"

    @classmethod
    def quick(cls) -> BrowserParams:
        return cls(rounds=2, lines=4)

    @classmethod
    def smoke(cls) -> BrowserParams:
        return cls(rounds=1, lines=2, voice="sine")


def run_browser_path(
    params: BrowserParams, work_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start the stack and a Chromium, measure, stop both; the scenario's section."""
    chromium = find_chromium()
    if chromium is None:
        raise BenchError("browser scenario: no Chromium found (apt-get install -y chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        raise BenchError("browser scenario: playwright is not installed") from exc
    lines = read_lines()
    if params.lines:
        lines = lines[: params.lines]
    say(f"browser: starting the stack (voice {params.voice!r}) and Chromium")
    with stack_mod.Stack(work_dir, params.voice) as stack:
        per_line: list[dict[str, Any]] = _run(
            _measure(stack.gateway_ws, chromium, lines, params, say)
        )
    samples = Samples()
    for number in range(1, params.rounds + 1):
        samples.add_all("browser", _round_figures([r for r in per_line if r["round"] == number]))
    return {
        "params": {**asdict(params), "lines": len(lines)},
        "voice": params.voice,
        "chromium": chromium,
        "medians": samples.medians(),
        "rounds": samples.rounds(),
        "per_line": per_line,
    }


async def _measure(
    gateway_ws: str,
    chromium: str,
    lines: list[str],
    params: BrowserParams,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    http_url = gateway_ws.replace("ws://", "http://", 1)
    per_line: list[dict[str, Any]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{http_url}/demo", wait_until="load")
            await page.wait_for_function("() => window.aivtuberDemo !== undefined")
            await _speak_in_page(page, lines[0], params.voice)  # warm-up: not counted
            for number in range(1, params.rounds + 1):
                say(f"browser: round {number}/{params.rounds}: {len(lines)} lines")
                for index, text in enumerate(lines, 1):
                    heard = await _speak_in_page(page, text, params.voice)
                    python = (await _speak_one(gateway_ws, text)).summary()
                    per_line.append(
                        {
                            "round": number,
                            "line": index,
                            **heard,
                            "python_ttfa_ms": python["ttfa_ms"],
                            "python_audible_ms": python["ttfa_audible_ms"],
                        }
                    )
        except PlaywrightError as exc:
            raise BenchError(f"browser scenario: {exc}") from exc
        finally:
            await browser.close()
    return per_line


async def _speak_in_page(page: Any, text: str, voice: str) -> dict[str, Any]:
    await page.evaluate(
        "([text, voice]) => { window.aivtuberDemo.speak(text, voice).catch(() => {}); }",
        [text, voice],
    )
    await page.wait_for_function(
        "() => ['done', 'error', 'cancelled'].includes(window.aivtuberDemo.stats().state)",
        timeout=LINE_TIMEOUT_MS,
    )
    stats: dict[str, Any] = await page.evaluate("window.aivtuberDemo.stats()")
    if stats["state"] != "done":
        raise BenchError(f"browser scenario: the page ended the line {stats['state']}: {stats}")
    return {
        "browser_ttfa_ms": stats["ttfaMs"],
        "browser_audible_ms": stats["ttfaAudibleMs"],
        "browser_first_frame_ms": stats["firstFrameMs"],
        "jitter_ms": stats["jitterMs"],
        "late_ms": stats["lateMs"],
        "output_latency_ms": stats["outputLatencyMs"],
        "underruns": stats["underruns"],
        "chunks": stats["chunksPlayed"],
    }


def _round_figures(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    def col(key: str) -> list[float]:
        return [row[key] for row in rows if row.get(key) is not None]

    paired = [
        row["browser_ttfa_ms"] / row["python_ttfa_ms"]
        for row in rows
        if row.get("browser_ttfa_ms") and row.get("python_ttfa_ms")
    ]
    heard = percentile(col("browser_audible_ms"), 50)
    python = percentile(col("python_audible_ms"), 50)
    return {
        "heard_audible_p50_ms": heard,
        "python_audible_p50_ms": python,
        "heard_minus_python_audible_p50_ms": (
            None if heard is None or python is None else heard - python
        ),
        "heard_ttfa_p50_ms": percentile(col("browser_ttfa_ms"), 50),
        "heard_ttfa_p95_ms": percentile(col("browser_ttfa_ms"), 95),
        "first_frame_p50_ms": percentile(col("browser_first_frame_ms"), 50),
        "python_ttfa_p50_ms": percentile(col("python_ttfa_ms"), 50),
        "python_ttfa_p95_ms": percentile(col("python_ttfa_ms"), 95),
        "heard_over_python_p50": percentile(paired, 50),
        "jitter_p50_ms": percentile(col("jitter_ms"), 50),
        "late_max_ms": max(col("late_ms"), default=None),
        "output_latency_p50_ms": percentile(col("output_latency_ms"), 50),
        "underruns": float(sum(col("underruns"))),
    }
