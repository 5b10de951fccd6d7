"""The /demo page and aivtuber.js in a real Chromium against the real stack (gateway,
handlers, a worker with the ``sine`` voice; one test with the ``joe`` Piper voice).

Everything timing-related is read from the page's own audio clock through
``window.aivtuberDemo.stats()``; the tests only wait on conditions, with timeouts.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import wave
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

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


async def evaluate_against(
    handler: Callable[[ServerConnection], Awaitable[None]], script: str
) -> Any:
    """Run ``script`` (a function of the server's URL) in the demo page, its client talking to
    a scripted server (``handler``) that stands in for the gateway; the page's log must stay
    clean."""
    async with (
        stack() as s,
        serve(handler, "127.0.0.1", 0) as server,
        open_page(f"{s.gateway.http_url}/demo", bypass_csp=True) as (page, log),
    ):
        port = server.sockets[0].getsockname()[1]
        result = await page.evaluate(script, f"ws://127.0.0.1:{port}")
    log.assert_clean()
    return result


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


async def test_a_ticket_in_the_address_goes_on_every_socket_and_leaves_the_address_bar() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo?ticket=t0k") as (page, log):
        await start_speaking(page, "With a ticket.", "sine")
        await wait_stats(page, "s.state === 'done'")
        search = await page.evaluate("location.search")
    log.assert_clean()
    assert search == ""
    paths = sorted(urlsplit(url).path.split("/")[2] for url in log.websockets)
    assert paths == ["input", "output"]
    assert all(parse_qs(urlsplit(url).query) == {"ticket": ["t0k"]} for url in log.websockets)


@pytest.mark.parametrize(
    ("close_code", "error_code"),
    [(4401, "unauthorized"), (4403, "origin_forbidden"), (4429, "too_many_connections")],
)
async def test_a_gateway_refusal_is_one_clear_error_event(close_code: int, error_code: str) -> None:
    async def refuse(ws: ServerConnection) -> None:
        await ws.close(close_code, "refused by the test")

    events = await evaluate_against(
        refuse,
        """async (url) => {
            const { AIVTuberClient } = await import("/static/aivtuber.js");
            const client = new AIVTuberClient({ url });
            const events = [];
            client.on("error", (e) => events.push(e.detail));
            const outcome = await client.speak("Hello?").then(() => "spoke", (e) => e.code);
            return { events, outcome };
        }""",
    )
    assert events["outcome"] == error_code
    assert len(events["events"]) == 1
    event = events["events"][0]
    assert event["code"] == error_code and event["closeCode"] == close_code
    assert "refused by the test" in event["message"]


async def test_visemes_fire_on_the_audio_clock_and_drive_the_mouth() -> None:
    """The viseme contract (``"visemes": [[offset_ms, shape], ...]`` on ``audio_chunk``), from a
    server speaking the protocol as the stack will once an engine sends them."""
    rate, frame, frames = 24000, 960, 12
    shapes = ["a", "o"]

    async def handler(ws: ServerConnection) -> None:
        task_id = "0b7e4f9e-0000-4000-8000-000000000001"
        if ws.request is not None and ws.request.path.startswith("/ws/input"):
            await ws.send(
                json.dumps({"type": "system", "action": "task_id_assigned", "task_id": task_id})
            )
            async for message in ws:
                request = json.loads(message)
                if request.get("type") == "speak":
                    reply = {"type": "system", "action": "upload_processed", "status": "queued"}
                    await ws.send(
                        json.dumps(
                            {**reply, "task_id": task_id, "request_id": request["request_id"]}
                        )
                    )
            return
        start = {
            "type": "audio_start",
            "task_id": task_id,
            "sample_rate": rate,
            "voice": "v",
            "engine": "e",
        }
        await ws.send(json.dumps(start))
        pcm = (np.sin(np.arange(frame) * 0.1) * 8000).astype("<i2").tobytes()
        for chunk_id in range(frames):
            visemes = [[0, shapes[0]], [20, shapes[1]]]
            chunk = {
                "type": "audio_chunk",
                "task_id": task_id,
                "chunk_id": chunk_id,
                "samples": frame,
                "level": 0.2,
                "visemes": visemes,
            }
            await ws.send(json.dumps(chunk))
            await ws.send(pcm)
        await ws.send(
            json.dumps(
                {
                    "type": "audio_complete",
                    "task_id": task_id,
                    "chunks": frames,
                    "duration_ms": frames * 40,
                    "cancelled": False,
                }
            )
        )
        await ws.close()

    seen = await evaluate_against(
        handler,
        """async (url) => {
            const { AIVTuberClient } = await import("/static/aivtuber.js");
            const client = new AIVTuberClient({ url });
            const seen = [];
            client.on("viseme", (e) => seen.push({
                shape: e.detail.shape, openness: e.detail.openness,
                lagMs: (client._heardTime() - client._line.startTime) * 1000,
                chunkId: e.detail.chunkId,
            }));
            const end = await client.speak("Visemes, please.");
            return { seen, end };
        }""",
    )
    events = seen["seen"]
    assert [e["shape"] for e in events] == shapes * frames
    assert events[0]["openness"] == 1.0 and events[1]["openness"] == 0.8
    for index, event in enumerate(events):
        due_ms = event["chunkId"] * 40 + (20 if index % 2 else 0)
        # Fired once the audio clock reached it, and no later than the next animation frame
        # or timer tick (by the page's audio clock).
        assert due_ms <= event["lagMs"] < due_ms + 100, (index, event)
    assert seen["end"]["chunks"] == frames and seen["end"]["cancelled"] is False


async def _speak_tone(ws: ServerConnection, task_id: str, frames: int = 3) -> None:
    """One short line of a 24 kHz tone on an output socket, as the output handler sends it."""
    await ws.send(
        json.dumps(
            {"type": "audio_start", "task_id": task_id, "sample_rate": 24000, "voice": "v"}
            | {"engine": "e"}
        )
    )
    pcm = (np.sin(np.arange(960) * 0.1) * 8000).astype("<i2").tobytes()
    for chunk_id in range(frames):
        chunk = {"type": "audio_chunk", "task_id": task_id, "chunk_id": chunk_id}
        await ws.send(json.dumps(chunk | {"samples": 960, "level": 0.2}))
        await ws.send(pcm)
    complete = {"type": "audio_complete", "task_id": task_id, "chunks": frames}
    await ws.send(json.dumps(complete | {"duration_ms": frames * 40, "cancelled": False}))
    await ws.close()


async def test_every_line_listens_on_its_id_before_its_speak_is_answered() -> None:
    """``upload_processed`` tells the id of the connection's next line (``next_task_id``):
    the page opens that line's output socket as it sends the speak, as it does for the first
    line with the id of ``task_id_assigned``, so no line waits a round trip to listen."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    listening = {task_id: asyncio.Event() for task_id in ids}
    early: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path.startswith("/ws/input"):
            await ws.send(
                json.dumps({"type": "system", "action": "task_id_assigned"} | {"task_id": ids[0]})
            )
            async for message in ws:
                request = json.loads(message)
                if request.get("type") != "speak":
                    continue
                task_id = ids[len(early)]
                try:  # answer once the page listens on the line's id (or give up waiting)
                    await asyncio.wait_for(listening[task_id].wait(), 5)
                except TimeoutError:
                    pass
                early.append(listening[task_id].is_set())
                reply = {"type": "system", "action": "upload_processed", "status": "queued"}
                reply |= {"task_id": task_id, "request_id": request["request_id"]}
                await ws.send(json.dumps(reply | {"next_task_id": ids[len(early)]}))
            return
        task_id = urlsplit(ws.request.path).path.rsplit("/", 1)[-1]
        listening[task_id].set()
        await _speak_tone(ws, task_id)

    ends = await evaluate_against(
        handler,
        """async (url) => {
            const { AIVTuberClient } = await import("/static/aivtuber.js");
            const client = new AIVTuberClient({ url });
            return [await client.speak("One."), await client.speak("Two.")];
        }""",
    )
    assert [end["chunks"] for end in ends] == [3, 3]
    assert early == [True, True]
