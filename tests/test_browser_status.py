"""The status page ``/`` in a real Chromium against the real stack: it loads cleanly, draws
the speech view from ``/speech`` (tasks, first-audio chart, workers and voices) and passes
``?admin_key=`` on to every fetch it makes."""

from __future__ import annotations

import asyncio

import httpx

from tests.browser import needs_chromium, open_page, screenshot
from tests.frontend import frontend, listen, speak
from tests.test_end_to_end import HOLD, stack

pytestmark = needs_chromium

DATA_PATHS = ("/health", "/connections", "/speech")


async def test_the_status_page_draws_the_speech_view_with_no_console_error() -> None:
    async with stack(audio_metrics=True) as s:
        async with frontend(s.url) as (ws, _):
            for line in ("One line for the chart.", "And a second one."):
                await listen(s.url, await speak(ws, line))
        async with open_page(f"{s.gateway.http_url}/") as (page, log):
            await page.wait_for_function(
                "() => document.querySelector('#ttfa-p50').textContent.endsWith('ms') && "
                "document.querySelectorAll('#workers tr').length === 1 && "
                "document.querySelectorAll('#ttfa-chart circle').length === 2"
            )
            cells = await page.locator("#workers td").all_inner_texts()
            in_flight = await page.locator("#in-flight").inner_text()
            await screenshot(page, "status")
        async with httpx.AsyncClient() as http:
            speech = (await http.get(f"{s.gateway.http_url}/speech")).json()
    log.assert_clean()
    worker = speech["workers"][0]
    # The voices column shows the worker's ready voices, as the input handler's probe of
    # its /health found them.
    voices = ", ".join(voice["name"] for voice in worker["voices"])
    assert voices and cells == [worker["url"], "ok", "0", "0", "2", voices]
    assert in_flight == "0" and speech["time_to_first_audio"]["count"] == 2


async def test_the_status_page_keeps_its_admin_key_out_of_urls() -> None:
    async with stack() as s, frontend(s.url) as (ws, _):
        # Held mid-line: its output stream stays open while the page refreshes.
        task_id = await speak(ws, f"A task id that must not show in full. {HOLD} on.")
        listener = asyncio.create_task(listen(s.url, task_id))
        try:
            async with open_page(f"{s.gateway.http_url}/?admin_key=k3y") as (page, log):
                await page.wait_for_function(
                    "() => document.querySelector('#connections').textContent"
                    ".includes('/ws/output/')",
                    timeout=15000,
                )
                text = await page.locator("body").inner_text()
                address = page.url
        finally:
            s.gates[0].release()
            await listener
    log.assert_clean()
    data = [url for url in log.requests if url.split("?")[0].endswith(DATA_PATHS)]
    assert len(data) >= 3, log.requests
    # The key travels as a Bearer header, never in a URL, and leaves the address bar at once.
    assert not any("admin_key" in url for url in data), data
    assert "admin_key" not in address, address
    assert task_id not in text and task_id[:8] in text  # short prefixes only
