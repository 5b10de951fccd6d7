"""Debian's Chromium, driven by Playwright for Python, for the tests/test_browser_*.py tests
(the Chromium is found by bench.chromium, shared with ``./benchmark --scenario browser``).

Never a browser download: Playwright's bundled driver talks to the system Chromium given by
``executable_path``. Headless, autoplay allowed (the pages play sound without a click), and
nothing that reaches for the network (the machine's network is closed). A page opened with
:func:`open_page` records every console error, uncaught exception and failed request, so a
test can assert there were none.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.chromium import CHROMIUM_ARGS, find_chromium

# Screenshots and other artifacts of the browser tests (gitignored).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _playwright_missing() -> bool:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return True
    return False


CHROMIUM = find_chromium()
SKIP_REASON = (
    "browser tests skipped: no Chromium found (apt-get install -y chromium, or set $CHROMIUM)"
    if CHROMIUM is None
    else "browser tests skipped: playwright is not installed (pip install -e '.[dev]')"
)
needs_chromium = pytest.mark.skipif(CHROMIUM is None or _playwright_missing(), reason=SKIP_REASON)


@dataclass
class PageLog:
    """What went wrong in the page: console errors, page errors, failed requests."""

    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    websockets: list[str] = field(default_factory=list)  # every WebSocket URL it opened

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@contextlib.asynccontextmanager
async def open_page(url: str, bypass_csp: bool = False) -> AsyncIterator[tuple[Any, PageLog]]:
    """A fresh headless Chromium with one page at ``url`` (loaded), and its problem log.
    ``bypass_csp`` lets a test's own script reach a server of its own."""
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None
    log = PageLog()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(bypass_csp=bypass_csp)
            page.on("websocket", lambda ws: log.websockets.append(ws.url))
            page.on(
                "console",
                lambda msg: msg.type == "error" and log.problems.append(f"console: {msg.text}"),
            )
            page.on("request", lambda request: log.requests.append(request.url))
            page.on("pageerror", lambda exc: log.problems.append(f"page error: {exc}"))
            page.on(
                "requestfailed",
                lambda req: log.problems.append(f"request failed: {req.url} {req.failure}"),
            )
            page.on(
                "response",
                lambda res: (
                    res.status >= 400 and log.problems.append(f"HTTP {res.status}: {res.url}")
                ),
            )
            await page.goto(url, wait_until="load")
            yield page, log
        finally:
            await browser.close()


async def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot of ``page`` as test-artifacts/<name>.png (a test artifact)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def wait_stats(page: Any, condition: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until ``condition`` (JS, over ``s = aivtuberDemo.stats()``) holds; return ``s``."""
    await page.wait_for_function(
        # A function, not an expression: the demo's CSP forbids eval.
        f"() => {{ const s = window.aivtuberDemo.stats(); return {condition}; }}",
        timeout=timeout_s * 1000,
        polling="raf",
    )
    stats: dict[str, Any] = await page.evaluate("window.aivtuberDemo.stats()")
    return stats


async def start_speaking(page: Any, text: str, voice: str | None = None) -> None:
    """Press speak through the test hook without waiting for the line to end."""
    await page.evaluate(
        "([text, voice]) => { window.aivtuberDemo.speak(text, voice).catch(() => {}); }",
        [text, voice],
    )


def fnv1a(data: bytes) -> int:
    """FNV-1a (32 bit), as the demo page digests the PCM it received."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value
