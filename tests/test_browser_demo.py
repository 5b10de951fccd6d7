"""The /demo page and aivtuber.js in a real Chromium against the real stack (gateway,
handlers, a worker with the ``sine`` voice; one test with the ``joe`` Piper voice).

Everything timing-related is read from the page's own audio clock through
``window.aivtuberDemo.stats()``; the tests only wait on conditions, with timeouts.
"""

from __future__ import annotations

import io
import wave

import httpx
import pytest

from tests.browser import (
    fnv1a,
    needs_chromium,
    open_page,
    screenshot,
    start_speaking,
    wait_stats,
)
from tests.test_end_to_end import HOLD, stack

pytestmark = needs_chromium

LINE = "Hello chat, the browser is speaking now. This line is heard from start to end."
LONG = (
    "This first sentence keeps the speaker busy for a good while, long enough to stop it "
    "in the middle of a word while the sound is still playing out of the speakers. "
    f"The rest would {HOLD} until the test lets go."
)


async def test_the_demo_page_loads_with_no_console_error_and_no_failed_request() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        # The voice picker is filled (or left at the default voice) once list_voices answered.
        await page.wait_for_function("window.aivtuberDemo !== undefined")
        await page.wait_for_function(
            "document.querySelector('#voice').options.length >= 1 && "
            "window.aivtuberDemo.client !== null"
        )
        assert await page.locator("#face").is_visible()
        await screenshot(page, "demo")
        log.assert_clean()


async def test_a_spoken_line_plays_every_chunk_while_the_mouth_moves() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await start_speaking(page, LINE, "sine")
        playing = await wait_stats(page, "s.state === 'playing' && s.mouthOpen > 0")
        await screenshot(page, "demo-speaking")
        done = await wait_stats(page, "s.state === 'done' && s.mouthOpen === 0")
    log.assert_clean()
    assert playing["mouthOpen"] > 0
    assert done["lastEnd"]["cancelled"] is False
    assert done["totalChunks"] == done["lastEnd"]["chunks"] > 10  # from audio_complete
    assert done["chunksPlayed"] == done["chunksReceived"] == done["totalChunks"]
    assert done["underruns"] == 0
    assert done["ttfaMs"] is not None and done["ttfaMs"] > 0
    assert done["sampleRate"] == 16000  # played at the stream's rate, whatever the context's


async def test_stop_during_a_long_line_silences_it_within_200_ms_and_ends_cancelled() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await start_speaking(page, LONG, "sine")
        await wait_stats(page, "s.state === 'playing' && s.mouthOpen > 0 && s.bufferMs > 500")
        await page.click("#stop")
        stopped = await wait_stats(page, "s.stopLatencyMs !== null && s.state === 'cancelled'")
        after = await wait_stats(page, "s.mouthOpen === 0")
    log.assert_clean()
    # Measured in the page: cancel() -> the output's analyser reads pure silence, by the
    # audio clock (AudioContext.currentTime), not by this process's clock.
    assert stopped["stopLatencyMs"] <= 200
    assert stopped["lastEnd"]["cancelled"] is True
    assert stopped["lastEnd"]["serverCancelled"] is True  # audio_complete "cancelled": true
    assert after["chunksPlayed"] < after["chunksReceived"]


async def test_a_dropped_output_socket_resumes_with_no_missing_and_no_repeated_chunk() -> None:
    text = f"The first part streams at once and plays. Then it waits, {HOLD}, and goes on."
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await start_speaking(page, text, "sine")
        before = await wait_stats(page, "s.state === 'playing' && s.chunksReceived >= 5")
        await page.evaluate("window.aivtuberDemo.dropOutput()")
        await wait_stats(page, "s.resumes >= 1")
        s.gates[0].release()  # the worker goes on; the resumed socket carries the rest
        done = await wait_stats(page, "s.state === 'done'")
        async with httpx.AsyncClient() as http:
            wav = await http.get(f"{s.output.http_url}/tasks/{done['taskId']}/audio.wav")
    log.assert_clean()
    with wave.open(io.BytesIO(wav.content)) as reader:
        pcm = reader.readframes(reader.getnframes())
    assert done["resumes"] == 1 and before["chunksReceived"] < done["totalChunks"]
    assert done["chunksReceived"] == done["chunksPlayed"] == done["totalChunks"]
    assert done["duplicateChunks"] == 0
    assert done["pcmDigest"] == fnv1a(pcm)  # every byte once, in order: no gap, no repeat


@pytest.mark.piper
@pytest.mark.timeout(180)
async def test_the_joe_piper_voice_plays_in_the_browser_with_the_mouth_moving() -> None:
    async with stack(piper=True) as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await start_speaking(page, "Hi chat! Welcome back.", "joe")
        playing = await wait_stats(page, "s.state === 'playing' && s.mouthOpen > 0", 120)
        done = await wait_stats(page, "s.state === 'done' && s.mouthOpen === 0", 60)
    log.assert_clean()
    assert playing["sampleRate"] == 22050
    assert done["chunksPlayed"] == done["totalChunks"] == done["lastEnd"]["chunks"] > 0
