"""A task's captions.vtt and audio.wav on port 8000: through the gateway with the tenant's
key, on both buses, for a task still being spoken; another tenant's task and an unknown one
are 404 task_not_found, no key is 401. The WebVTT layout is checked without sockets."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
import wave

import httpx
from structlog.testing import capture_logs

from aivtuber_common.config import BusSettings
from aivtuber_output.captions import MAX_CUE_WORDS, webvtt
from aivtuber_tts.words import written_words
from tests.edge_support import ALICE_KEY, BOB_KEY
from tests.frontend import ask, listen
from tests.redis_support import RedisServer, redis_bus_settings
from tests.test_end_to_end import HOLD
from tests.test_tenant_isolation import speaker, tenant_stack

TEXT = "Hi chat! Welcome back to the stream, it is so good to see you all."
STAMP = re.compile(r"<(\d\d:\d\d:\d\d\.\d\d\d)>")
TIMEOUT_S = 30.0


def ms(clock: str) -> int:
    hours, minutes, rest = clock.split(":")
    seconds, millis = rest.split(".")
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(millis)


def cues(vtt: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) of each cue of a WebVTT document."""
    assert vtt.startswith("WEBVTT\n\n")
    out = []
    for block in vtt.strip().split("\n\n")[1:]:
        number, timing, text = block.split("\n")
        assert number.isdigit()
        start, end = timing.split(" --> ")
        out.append((ms(start), ms(end), text))
    return out


def http_url(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://", 1)


async def get(url: str, task_id: str, file: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        return await client.get(f"{http_url(url)}/v1/tasks/{task_id}/{file}", headers=headers)


# --- through the gateway ---------------------------------------------------------------------


async def test_captions_and_wav_of_a_running_task_come_through_port_8000_with_the_key(
    bus: BusSettings,
) -> None:
    async with tenant_stack(bus, heart=True) as (url, _, _gate):
        async with speaker(url, ALICE_KEY) as alice:
            reply = await ask(alice, {"type": "speak", "text": TEXT, "voice": "heart"})
            task_id = reply["task_id"]
            # Asked at once, while it is being spoken: answered when it has ended.
            vtt, wav = await asyncio.gather(
                get(url, task_id, "captions.vtt", ALICE_KEY),
                get(url, task_id, "audio.wav", ALICE_KEY),
            )
            heard = await listen(url, task_id, query=f"?api_key={ALICE_KEY}")
    assert vtt.status_code == 200, vtt.text
    assert vtt.headers["content-type"].startswith("text/vtt")
    found = cues(vtt.text)
    # One cue per clause, its words exactly the words sent.
    assert [STAMP.sub("", text) for _, _, text in found] == [
        "Hi chat!",
        "Welcome back to the stream,",
        "it is so good to see you all.",
    ]
    assert written_words(" ".join(STAMP.sub("", text) for _, _, text in found)) == (
        written_words(TEXT)
    )
    previous = 0
    for start, end, text in found:
        stamps = [ms(stamp) for stamp in STAMP.findall(text)]
        assert len(stamps) == len(text.split()) - 1  # every word after the cue's first
        assert previous <= start <= min(stamps or [end]) and stamps == sorted(stamps)
        assert max(stamps or [start]) < end
        previous = start
    assert heard.end is not None
    assert found[-1][1] <= heard.end["duration_ms"] + 1
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as audio:
        assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (24000, 1, 2)
        assert audio.readframes(audio.getnframes()) == heard.audio  # what a subscriber heard


async def test_another_tenants_task_is_task_not_found_and_no_key_is_401(bus: BusSettings) -> None:
    async with tenant_stack(bus) as (url, _, gate):
        async with speaker(url, ALICE_KEY) as alice:
            task_id = (await ask(alice, {"type": "speak", "text": f"{HOLD} it, chat."}))["task_id"]
            unknown = str(uuid.uuid4())
            with capture_logs() as logs:
                answers = await asyncio.gather(
                    get(url, task_id, "captions.vtt", BOB_KEY),
                    get(url, task_id, "audio.wav", BOB_KEY),
                    get(url, unknown, "audio.wav", BOB_KEY),
                    get(url, task_id, "audio.wav", None),
                )
            gate.release()
            own = await get(url, task_id, "captions.vtt", ALICE_KEY)
    for theirs in answers[:3]:
        assert theirs.status_code == 404
        assert theirs.json()["code"] == "task_not_found"
    assert answers[1].json()["error"].replace(task_id, "<id>") == answers[2].json()[
        "error"
    ].replace(unknown, "<id>")
    assert answers[3].status_code == 401
    # The gateway logs each request with the task id shortened: a whole one lets a reader in.
    requests = [event for event in logs if event["event"] == "http_request"]
    assert len(requests) == 4 and not [e for e in requests if task_id in str(e)]
    # A voice without word timing: one cue, the whole text over the whole audio.
    assert own.status_code == 200
    ((start, end, text),) = cues(own.text)
    assert start == 0 and end > 0 and text == f"{HOLD} it, chat."


async def test_any_output_handler_replica_serves_a_tasks_files_on_redis(
    redis_server: RedisServer,
) -> None:
    bus = redis_bus_settings(redis_server.url)
    async with tenant_stack(bus, heart=True, replicas=2) as (url, _, _gate):
        async with speaker(url, ALICE_KEY) as alice:
            reply = await ask(alice, {"type": "speak", "text": TEXT, "voice": "heart"})
            # The route takes turns (round_robin): one request to each replica, alike.
            first = await get(url, reply["task_id"], "captions.vtt", ALICE_KEY)
            second = await get(url, reply["task_id"], "captions.vtt", ALICE_KEY)
    assert first.status_code == second.status_code == 200
    assert first.text == second.text and len(cues(first.text)) == 3


# --- the document ----------------------------------------------------------------------------


def test_webvtt_cuts_cues_at_clauses_stamps_words_and_escapes_text() -> None:
    words = [
        (30, 200, "Hi"),
        (275, 300, "chat!"),
        (950, 300, "Fish"),
        (1300, 100, "&"),
        (1450, 400, "<chips>,"),
        (3_723_004, 500, "later"),
    ]
    assert webvtt(words) == (
        "WEBVTT\n\n"
        "1\n00:00:00.030 --> 00:00:00.575\nHi <00:00:00.275>chat!\n\n"
        "2\n00:00:00.950 --> 00:00:01.850\n"
        "Fish <00:00:01.300>&amp; <00:00:01.450>&lt;chips&gt;,\n\n"
        "3\n01:02:03.004 --> 01:02:03.504\nlater\n"
    )


def test_japanese_cues_join_words_without_spaces_and_long_clauses_are_cut() -> None:
    words = [
        (0, 100, "今日も"),
        (100, 100, "配信に"),
        (200, 100, "来てくれて"),
        (300, 50, "ありがとう。"),
    ]
    ((_, _, text),) = cues(webvtt(words, timestamps=False))
    assert text == "今日も配信に来てくれてありがとう。"
    many = [(i * 100, 90, f"w{i}") for i in range(MAX_CUE_WORDS + 3)]
    assert [len(text.split()) for _, _, text in cues(webvtt(many))] == [MAX_CUE_WORDS, 3]
