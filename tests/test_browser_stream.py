"""``client.stream()`` in a real Chromium against the real stack's streaming protocol
(``speak`` with ``"stream": true``, ``append``, ``end``): a reply written piece by piece, as an
LLM writes it, is one task heard as one stream; with the Piper voice its words come as
``word`` events on the audio clock and as the demo's captions, and ``cancel()`` says which
text was heard.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser import needs_chromium, open_page, screenshot, wait_stats
from tests.test_end_to_end import stack

pytestmark = needs_chromium

REPLY = (
    "Hi chat! Thanks for waiting, the new overlay is finally working. "
    "Tonight we are going to try the hardest level again, so wish me luck."
)
RECORD = """(types) => {
    window.seen = [];
    const client = window.aivtuberDemo.client;
    for (const type of types) {
        client.on(type, (e) => window.seen.push({ type, ...e.detail, pcm: undefined,
                                                  heard: client._heardTime() }));
    }
}"""


def words_of(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


async def ready(page: Any, record: tuple[str, ...], timeout_s: float = 30) -> None:
    await page.wait_for_function(
        "() => window.aivtuberDemo && window.aivtuberDemo.client !== null",
        timeout=timeout_s * 1000,
    )
    await page.evaluate(RECORD, list(record))


def output_sockets(websockets: list[str]) -> list[str]:
    return [url for url in websockets if urlsplit(url).path.startswith("/ws/output/")]


async def test_a_reply_written_piece_by_piece_is_heard_as_one_stream() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end"))
        pieces = await page.evaluate("(text) => window.aivtuberDemo.tokens(text)", REPLY)
        end = await page.evaluate(
            "(text) => window.aivtuberDemo.streamReply(text, {tokensPerSecond: 60, voice: 'sine'})",
            REPLY,
        )
        done = await wait_stats(page, "s.state === 'done'")
        events = await page.evaluate("window.seen")
    log.assert_clean()
    # LLM-like pieces: they split words ("Tonig" + "ht"), and joined they are the reply.
    assert "".join(pieces) == REPLY and any(not p.startswith(" ") for p in pieces[1:])
    # One task, one output socket, one start and one end: one continuous stream.
    assert [e["type"] for e in events] == ["start", "end"]
    assert len(output_sockets(log.websockets)) == 1
    assert end["cancelled"] is False and end["taskId"] == done["taskId"]
    # end() resolved once everything was heard.
    assert done["chunksPlayed"] == done["chunksReceived"] == done["totalChunks"] == end["chunks"]
    assert done["writing"] is False
    # The worker spoke the text as written, the split words whole again.
    spoken = " ".join(s.gates[0].pieces)
    assert words_of(spoken) == words_of(REPLY)


async def test_flush_speaks_text_without_a_boundary_before_the_end() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end"))
        await page.evaluate(
            """() => {
                const line = window.aivtuberDemo.client.stream({ voice: "sine" });
                line.append("Hello the").append("re my friends and all of chat").flush();
                window.line = line;
            }"""
        )
        # Heard while the line is still open: flush did not wait for a boundary or end().
        playing = await wait_stats(page, "s.state === 'playing'")
        end = await page.evaluate("window.line.end()")
    log.assert_clean()
    assert playing["taskId"] == end["taskId"] and end["cancelled"] is False
    assert words_of(" ".join(s.gates[0].pieces)) == words_of(
        "Hello there my friends and all of chat"
    )


@pytest.mark.piper
@pytest.mark.timeout(180)
async def test_the_words_of_a_streamed_reply_are_heard_in_order_and_captioned() -> None:
    async with stack(piper=True) as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("word", "start", "end"), timeout_s=120)
        end = await page.evaluate(
            "(text) => window.aivtuberDemo.streamReply(text, {tokensPerSecond: 50, voice: 'joe'})",
            REPLY,
        )
        done = await wait_stats(page, "s.state === 'done'")
        events = await page.evaluate("window.seen")
        await screenshot(page, "demo-stream-captions")
    log.assert_clean()
    words = [e for e in events if e["type"] == "word"]
    # Exactly the words sent, in order, each fired once the audio clock reached it.
    assert words_of(" ".join(w["word"] for w in words)) == words_of(REPLY)
    assert [w["index"] for w in words] == list(range(len(words)))
    heard = [w["heard"] for w in words]
    assert heard == sorted(heard)
    start = next(e for e in events if e["type"] == "start")
    last = next(e for e in events if e["type"] == "end")
    assert start["time"] <= heard[0] and heard[-1] <= last["heard"]
    # Spelled as sent: each word is found in the reply where the captions say it was heard.
    for word in words:
        assert REPLY.startswith(word["heardText"]) and word["heardText"].endswith(word["word"])
    # The demo's captions: everything heard, up to the last word (the final "." follows).
    assert REPLY.startswith(done["captionHeard"]) and len(done["captionHeard"]) >= len(REPLY) - 1
    assert done["captionShown"] == REPLY
    assert end["heardText"] == REPLY and end["cancelled"] is False


@pytest.mark.piper
@pytest.mark.timeout(180)
async def test_cancel_mid_stream_resolves_with_the_text_heard_so_far() -> None:
    async with stack(piper=True) as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("word", "end"), timeout_s=120)
        await page.evaluate(
            "(text) => { window.aivtuberDemo.streamReply(text, {tokensPerSecond: 30, voice: 'joe'})"
            ".catch(() => {}); }",
            REPLY,
        )
        await wait_stats(page, "s.wordsHeard >= 4", 60)
        heard = await page.evaluate("window.aivtuberDemo.cancel()")
        after = await wait_stats(page, "s.state === 'cancelled'")
        events = await page.evaluate("window.seen")
    log.assert_clean()
    words = [e["word"] for e in events if e["type"] == "word"]
    # What the listener heard, as written: a prefix of the reply ending with the last word
    # heard, and no further than that.
    assert len(words) >= 4 and len(words) < len(words_of(REPLY))
    assert REPLY.startswith(heard["heardText"])
    assert words_of(heard["heardText"]) == words_of(" ".join(words))
    assert heard["heardText"].endswith(words[-1])
    assert heard["heardMs"] > 0
    assert after["lastEnd"]["cancelled"] is True and after["lastCancel"] == heard


async def test_a_stream_whose_input_socket_closes_plays_what_was_sent_and_takes_no_more() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end", "error"))
        outcome = await page.evaluate(
            """async () => {
                const client = window.aivtuberDemo.client;
                const line = client.stream({ voice: "sine" });
                line.append("This much was sent before the connection went away. ");
                while (!line.taskId) await new Promise((r) => setTimeout(r, 5));
                const closed = new Promise((r) => client._input.addEventListener("close", r));
                client._input.close(1000, "the page hung up");
                await closed;
                let thrown = null;
                try { line.append("This never goes out."); } catch (e) { thrown = e.code; }
                const end = await line.end();
                let afterEnd = null;
                try { line.append("Nor this."); } catch (e) { afterEnd = e.code; }
                return { thrown, afterEnd, end, text: line.text };
            }"""
        )
    log.assert_clean()
    assert outcome["thrown"] == "connection_lost"
    assert outcome["afterEnd"] == "connection_lost"
    # The gateway ended the stream when its input closed and spoke what it had got.
    assert outcome["end"]["cancelled"] is False and outcome["end"]["chunks"] > 0
    assert words_of(" ".join(s.gates[0].pieces)) == words_of(
        "This much was sent before the connection went away."
    )


async def test_append_after_end_throws_task_ended() -> None:
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("end",))
        outcome = await page.evaluate(
            """async () => {
                const line = window.aivtuberDemo.client.stream({ voice: "sine" });
                line.append("Short and done.");
                const ended = line.end();
                let thrown = null;
                try { line.append(" More?"); } catch (e) { thrown = e.code; }
                return { thrown, end: await ended };
            }"""
        )
    log.assert_clean()
    assert outcome["thrown"] == "task_ended"
    assert outcome["end"]["cancelled"] is False
    assert words_of(" ".join(s.gates[0].pieces)) == words_of("Short and done.")


async def test_the_demos_llm_mode_streams_the_text_box_at_the_chosen_rate() -> None:
    text = "Streamed from the page itself, token by token, then ended."
    async with stack() as s, open_page(f"{s.gateway.http_url}/demo") as (page, log):
        await ready(page, ("start", "end"))
        await page.fill("#text", text)
        await page.check("#streaming")
        await page.fill("#rate", "40")  # a range input: fill sets its value and fires input
        await page.select_option("#voice", "sine")
        shown = await page.text_content("#rate-shown")
        await page.click("#speak")
        done = await wait_stats(page, "s.state === 'done' && s.writing === false")
        events = await page.evaluate("window.seen")
    log.assert_clean()
    assert shown == "40 tokens/s"
    assert [e["type"] for e in events] == ["start", "end"]  # one stream
    assert len(output_sockets(log.websockets)) == 1
    assert done["captionShown"] == text  # written; the sine voice has no word timing
    assert done["chunksPlayed"] == done["totalChunks"] > 0
    assert words_of(" ".join(s.gates[0].pieces)) == words_of(text)
