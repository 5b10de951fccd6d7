"""aivtuber.js lines in a real Chromium against the real stack: ``speak(text, {queue: true})``
plays after the line heard now instead of cutting it, ``cancel()`` resolves with what was
heard, and the ``mouth`` event (VRM and Live2D parameters) follows the level of a voice
without visemes and the visemes of one that has them.

Times are read from the page's own audio clock (``time`` in the events); the tests only wait
on conditions, with timeouts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser import needs_chromium, open_page, start_speaking, wait_stats
from tests.test_end_to_end import HOLD, stack

pytestmark = needs_chromium

FIRST = "The first line is heard from its first word to its last one."
SECOND = "Then the second line follows it."
LONG = (
    "This line keeps the speaker busy for a good while, long enough to be stopped in the "
    f"middle. The rest would {HOLD} until the test lets go."
)
VRM = ("aa", "ih", "ou", "ee", "oh")

# Records a client's events (detail plus the audio clock) in window.seen, in order.
RECORD = """(types) => {
    window.seen = [];
    const client = window.aivtuberDemo.client;
    for (const type of types) {
        client.on(type, (e) => window.seen.push({ type, ...e.detail, pcm: undefined,
                                                  heard: client._heardTime() }));
    }
}"""


async def ready(page: Any, record: tuple[str, ...]) -> None:
    await page.wait_for_function("() => window.aivtuberDemo && window.aivtuberDemo.client !== null")
    await page.evaluate(RECORD, list(record))


async def seen(page: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate("window.seen")
    return events


async def test_a_queued_line_plays_right_after_the_current_one_without_cutting_it() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end"))
        ends = await page.evaluate(
            """async ([first, second]) => {
                const demo = window.aivtuberDemo;
                const one = demo.speak(first, "sine");
                const two = demo.speak(second, "sine", true);   // queue: true
                return Promise.all([one, two]);
            }""",
            [FIRST, SECOND],
        )
        events = await seen(page)
    log.assert_clean()
    first, second = ends
    assert first["cancelled"] is False and second["cancelled"] is False
    assert first["taskId"] != second["taskId"]
    assert [(e["type"], e["taskId"]) for e in events] == [
        ("start", first["taskId"]),
        ("end", first["taskId"]),
        ("start", second["taskId"]),
        ("end", second["taskId"]),
    ]
    # Back to back on the audio clock: the second line's first sample is scheduled exactly
    # where the first line's last sample ends (no gap, no overlap).
    start_second = events[2]["time"]
    assert start_second == pytest.approx(first["time"], abs=1e-9)
    assert first["underruns"] == 0 and second["underruns"] == 0
    # The first line was heard whole: 20 ms per character of the sine voice.
    assert first["heardText"] == FIRST
    assert first["heardMs"] == pytest.approx(len(FIRST) * 20, abs=45)


async def test_speak_without_queue_still_cuts_the_line_heard_now() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end"))
        await start_speaking(page, LONG, "sine")
        await wait_stats(page, "s.state === 'playing' && s.heardMs > 200")
        second = await page.evaluate("window.aivtuberDemo.speak('Barge in.', 'sine')")
        events = await seen(page)
    log.assert_clean()
    ends = [e for e in events if e["type"] == "end"]
    assert [e["cancelled"] for e in ends] == [True, False]
    assert ends[1]["taskId"] == second["taskId"]
    assert 200 <= ends[0]["heardMs"] < len(LONG) * 20


async def test_cancel_resolves_with_the_audio_heard_so_far() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await start_speaking(page, LONG, "sine")
        before = await wait_stats(page, "s.state === 'playing' && s.heardMs > 400")
        heard = await page.evaluate("window.aivtuberDemo.cancel()")
        after = await wait_stats(page, "s.state === 'cancelled'")
    log.assert_clean()
    # By the audio clock: at least what was heard when the test looked, at most what arrived.
    assert before["heardMs"] <= heard["heardMs"] < after["chunksReceived"] * 40
    assert heard["heardText"] is None  # the sine voice sends no word timing
    assert after["lastEnd"]["cancelled"] is True
    assert after["lastEnd"]["heardMs"] == heard["heardMs"]


async def test_the_mouth_follows_the_level_of_a_voice_without_visemes() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("mouth", "level", "end"))
        await page.evaluate("(text) => window.aivtuberDemo.speak(text, 'sine')", FIRST)
        await page.wait_for_function(
            "() => window.seen.filter((e) => e.type === 'mouth').at(-1)?.source === 'rest' &&"
            " window.aivtuberDemo.stats().mouthOpen === 0"
        )
        events = await seen(page)
    log.assert_clean()
    mouths = [e for e in events if e["type"] == "mouth"]
    speaking = [m for m in mouths if m["source"] == "level"]
    assert len(speaking) > 10
    assert {m["source"] for m in mouths} <= {"level", "rest"}
    for mouth in mouths:
        vrm, live2d = mouth["vrm"], mouth["live2d"]
        # Level only: one open/close axis; no vowel shape, no form.
        assert vrm["ih"] == vrm["ou"] == vrm["ee"] == vrm["oh"] == 0
        assert live2d["ParamMouthForm"] == 0
        assert live2d["ParamMouthOpenY"] == pytest.approx(vrm["aa"])
        assert 0 <= vrm["aa"] <= 1
    assert max(m["vrm"]["aa"] for m in speaking) > 0.5
    # The sine voice's loudness wobbles at 4 Hz: the mouth moves with it within the line.
    openings = [m["vrm"]["aa"] for m in speaking]
    middle = openings[len(openings) // 4 :]
    assert max(middle) - min(middle) > 0.05
    # Smoothed towards the level's openness, on the audio clock: it never overshoots the
    # loudest frame heard so far, and it rests shut at the end.
    levels = [e for e in events if e["type"] == "level" and e["level"] > 0]
    loudest = max(min(1.0, (e["level"] ** 0.5) * 2.2) for e in levels)
    assert max(openings) <= loudest + 1e-9
    assert mouths[-1]["vrm"] == dict.fromkeys(VRM, 0)
    assert mouths[-1]["live2d"] == {"ParamMouthOpenY": 0, "ParamMouthForm": 0}


async def test_mouth_targets_and_smoothing_are_the_documented_ones() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        values = await page.evaluate(
            """async () => {
                const m = await import("/static/aivtuber.js");
                const smoother = new m.MouthSmoother();
                const open = m.mouthTarget("a", 0.2);
                smoother.update(open, 10);
                const attacked = smoother.update(open, 10 + m.MOUTH_ATTACK_S).vrm.aa;
                for (let t = 10.05; t < 11; t += 0.01) smoother.update(open, t);
                const full = smoother.update(open, 11).vrm.aa;
                const shut = m.mouthTarget(null, 0);
                const released = smoother.update(shut, 11 + m.MOUTH_RELEASE_S).vrm.aa;
                return {
                    i: m.mouthTarget("i", 0.1), u: m.mouthTarget("u", 0.1),
                    n: m.mouthTarget("n", 0.1), quiet: m.mouthTarget("a", 0.001),
                    level: m.mouthTarget(null, 0.04), attacked, full, released,
                };
            }"""
        )
    log.assert_clean()
    assert values["i"]["vrm"] == {**dict.fromkeys(VRM, 0), "ih": 1}
    assert values["i"]["live2d"] == {"ParamMouthOpenY": 0.45, "ParamMouthForm": 0.7}
    assert values["u"]["vrm"] == {**dict.fromkeys(VRM, 0), "ou": 1}
    assert values["u"]["live2d"]["ParamMouthForm"] < 0
    assert values["n"]["vrm"] == dict.fromkeys(VRM, 0)  # the closed mouth
    assert values["n"]["live2d"]["ParamMouthOpenY"] == 0
    assert values["quiet"]["vrm"] == dict.fromkeys(VRM, 0)  # below the level gate: shut
    assert values["level"]["vrm"]["aa"] == pytest.approx(0.44)  # sqrt(0.04) * 2.2
    assert values["level"]["live2d"] == {
        "ParamMouthOpenY": pytest.approx(0.44),
        "ParamMouthForm": 0,
    }
    # One time constant: 1 - 1/e of the way there when opening, 1/e left when closing.
    assert values["attacked"] == pytest.approx(1 - 0.36788, abs=1e-3)
    assert values["full"] == 1
    assert values["released"] == pytest.approx(0.36788, abs=1e-3)


@pytest.mark.piper
@pytest.mark.timeout(180)
async def test_the_mouth_takes_the_vowel_shapes_of_a_voice_with_visemes() -> None:
    text = "Hi chat! See you soon, okay? We are going to eat some food."
    async with stack(piper=True) as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await page.wait_for_function(
            "() => window.aivtuberDemo && window.aivtuberDemo.client !== null", timeout=120_000
        )
        await page.evaluate(RECORD, ["mouth", "viseme", "end"])
        await page.evaluate("(text) => window.aivtuberDemo.speak(text, 'joe')", text)
        await page.wait_for_function(
            "() => { const m = window.seen.filter((e) => e.type === 'mouth').at(-1);"
            " return m?.source === 'rest' && Object.values(m.vrm).every((v) => v === 0); }",
            timeout=60_000,
        )
        events = await seen(page)
    log.assert_clean()
    mouths = [e for e in events if e["type"] == "mouth"]
    visemes = [e for e in events if e["type"] == "viseme"]
    assert visemes and any(m["source"] == "viseme" for m in mouths)
    # Each vowel the voice said shows as its VRM expression at some point.
    said = {v["shape"] for v in visemes} - {"n"}
    reached = {key for key in VRM for m in mouths if m["vrm"][key] > 0.5}
    expected = {"a": "aa", "i": "ih", "u": "ou", "e": "ee", "o": "oh"}
    assert len(said) >= 3
    assert {expected[shape] for shape in said} <= reached
    for mouth in mouths:
        assert all(0 <= mouth["vrm"][key] <= 1 for key in VRM)
        assert 0 <= mouth["live2d"]["ParamMouthOpenY"] <= 1
        assert -1 <= mouth["live2d"]["ParamMouthForm"] <= 1
    # Rounded vowels pull the Live2D form below zero, spread ones above.
    forms = [m["live2d"]["ParamMouthForm"] for m in mouths]
    assert min(forms) < -0.2 and max(forms) > 0.2
    assert mouths[-1]["vrm"] == dict.fromkeys(VRM, 0)


async def test_the_jitter_buffer_is_sized_from_the_lateness_measured_in_the_page() -> None:
    held = f"The first part streams at once and plays. Then it waits, {HOLD}, and goes on."
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await page.evaluate("(text) => window.aivtuberDemo.speak(text, 'sine')", FIRST)
        first = await wait_stats(page, "s.state === 'done'")
        await page.evaluate("(text) => window.aivtuberDemo.speak(text, 'sine')", SECOND)
        second = await wait_stats(page, "s.state === 'done'")
        # Now frames come late: the worker holds the second sentence until the page has
        # played everything it had (the output ran dry).
        await start_speaking(page, held, "sine")
        await wait_stats(page, "s.state === 'playing' && s.chunksReceived > 0 && s.bufferMs === 0")
        s.gates[0].release()
        late = await wait_stats(page, "s.state === 'done'")
        await page.evaluate("(text) => window.aivtuberDemo.speak(text, 'sine')", SECOND)
        after = await wait_stats(page, "s.state === 'done'")
    log.assert_clean()
    # The first line of a voice: 20 ms plus the connection's round trip (request -> answer;
    # the shortest seen, which can only have come down since).
    assert first["jitterMs"] >= 20 + first["rttMs"] - 1
    # Frames on time: it halves each line, down to the 10 ms floor.
    assert first["lateMs"] <= 0 and first["underruns"] == 0
    assert abs(second["jitterMs"] - max(10, first["jitterMs"] * 0.5)) <= 1
    # A line whose frames came late teaches the next one: at least that lateness + 10 ms,
    # and 1.5 times more after an underrun.
    assert late["underruns"] >= 1 and late["lateMs"] > 0
    assert after["jitterMs"] >= min(2000, late["lateMs"] + 10) - 1
    assert after["jitterMs"] >= round(late["jitterMs"] * 1.5) - 1
    assert after["underruns"] == 0
    # The AudioContext asked for the smallest output buffer; the device's latency is shown.
    assert isinstance(after["outputLatencyMs"], int) and after["outputLatencyMs"] >= 0
    assert isinstance(after["baseLatencyMs"], int) and after["baseLatencyMs"] >= 0
