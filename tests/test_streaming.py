"""Streaming input on /ws/input (``speak`` with ``"stream": true``, ``append``, ``end``),
through the whole stack on both buses, and a stream of the real ``heart`` voice through
the worker.

The sine voice is the held one of tests/test_end_to_end.py: a piece containing HOLD waits
until the test lets go, so a stream is reliably mid-speech for cancel; what the engine was
given to speak (``Gate.pieces``) shows how the pieces were joined and cut.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from aivtuber_common.config import (
    BusSettings,
    HibariVoice,
    KokoroJaVoice,
    LimitsSettings,
    VoiceSettings,
)
from aivtuber_tts import streaming, tasks
from tests.edge_support import ALICE_KEY, BOB_KEY
from tests.frontend import ask, frontend
from tests.support import eventually
from tests.test_end_to_end import HOLD, MS_PER_CHAR, SINE_RATE, stack
from tests.test_tenant_isolation import speaker, tenant_stack, without_id
from tests.tts_fakes import WorkerClient, running_recorder, running_worker, sine_settings

TIMEOUT_S = 20.0
# A real neural voice loading and speaking on a loaded 2-core machine (a hang guard).
MODEL_WAIT_S = 120.0
# No boundary-less text is spoken by the clock in these tests unless they say so: what is
# spoken early is spoken because of a boundary, a flush or the end.
NEVER_MS = 60000


@dataclass
class Stream:
    """Everything a listener of one task got: every JSON message in order, and the PCM."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    pcm: list[bytes] = field(default_factory=list)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [message for message in self.messages if message["type"] == "audio_chunk"]

    @property
    def end(self) -> dict[str, Any]:
        return self.messages[-1]

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.pcm), dtype="<i2")


async def hear(url: str, task_id: str, stream: Stream | None = None) -> Stream:
    stream = stream or Stream()
    async with connect(f"{url}/ws/output/{task_id}") as ws:
        async for message in ws:
            if isinstance(message, bytes):
                stream.pcm.append(message)
                stream.first_frame.set()
            else:
                stream.messages.append(json.loads(message))
    return stream


async def open_stream(ws: ClientConnection, text: str = "", **extra: Any) -> str:
    reply = await ask(ws, {"type": "speak", "text": text, "stream": True, **extra})
    assert reply["action"] == "upload_processed", reply
    return str(reply["task_id"])


async def append(ws: ClientConnection, task_id: str, text: str, flush: bool = False) -> None:
    """An append that is taken gets no reply: sent, not asked."""
    await ws.send(json.dumps({"type": "append", "task_id": task_id, "text": text, "flush": flush}))


async def end(ws: ClientConnection, task_id: str) -> None:
    await ws.send(json.dumps({"type": "end", "task_id": task_id}))


def assert_one_continuous_stream(heard: Stream) -> None:
    """One audio_start, chunk ids 0..n-1 in order, one audio_complete that counts them."""
    assert heard.types.count("audio_start") == 1 and heard.types[0] == "audio_start"
    assert heard.types.count("audio_complete") == 1 and heard.types[-1] == "audio_complete"
    assert [chunk["chunk_id"] for chunk in heard.chunks] == list(range(len(heard.chunks)))
    assert heard.end["chunks"] == len(heard.chunks) == len(heard.pcm)
    assert heard.end["cancelled"] is False


def words(pieces: list[str]) -> list[str]:
    return " ".join(pieces).split()


async def test_pieces_that_split_words_and_characters_are_spoken_as_one_stream(
    bus: BusSettings,
) -> None:
    pieces = [
        "Hel",
        "lo every",
        "one, welcome ",
        "back to the str",
        "eam! Café ",
        "☕ and ",
        "日本",
        "語 too.",
    ]
    text = "".join(pieces)
    async with stack(bus, worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, assigned):
            task_id = await open_stream(ws)
            listener = asyncio.create_task(hear(s.url, task_id))
            for piece in pieces:
                await append(ws, task_id, piece)
            await end(ws, task_id)
            async with asyncio.timeout(TIMEOUT_S):
                heard = await listener
        spoken = s.gates[0].pieces
    assert task_id == assigned, "the connection's assigned id goes to its first task"
    assert_one_continuous_stream(heard)
    assert "reason" not in heard.end
    # Every word once, whole and in order: no piece boundary shows in what was spoken.
    assert words(spoken) == text.split()
    assert len(spoken) >= 2, "spoken clause by clause, not all at the end"
    audible = sum(len(piece) for piece in spoken) * MS_PER_CHAR
    assert heard.end["duration_ms"] == round(len(heard.samples) * 1000 / SINE_RATE, 1)
    assert abs(heard.end["duration_ms"] - audible) <= 5
    assert np.abs(heard.samples).max() > 1000


async def test_flush_speaks_text_without_a_boundary_before_the_end(bus: BusSettings) -> None:
    async with stack(bus, worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await open_stream(ws, "So what we are going to")
            heard = Stream()
            listener = asyncio.create_task(hear(s.url, task_id, heard))
            await append(ws, task_id, " do", flush=True)
            flushed = "So what we are going to do".split()
            async with asyncio.timeout(TIMEOUT_S):
                await heard.first_frame.wait()  # before any end: the flush spoke it
                await eventually(lambda: words(s.gates[0].pieces) == flushed)
            spoken_before_end = list(s.gates[0].pieces)
            await append(ws, task_id, " next is simple.")
            await end(ws, task_id)
            async with asyncio.timeout(TIMEOUT_S):
                await listener
    assert words(spoken_before_end) == "So what we are going to do".split()
    assert_one_continuous_stream(heard)
    assert words(s.gates[0].pieces) == "So what we are going to do next is simple.".split()


async def test_a_flushed_long_buffer_starts_with_a_short_piece_and_the_rest_follows() -> None:
    # A neural engine makes a piece whole before its first sample: speaking all fourteen
    # words at once made the listener wait for all of them.
    text = f"{HOLD} so what we are going to do next is rather simple and quick"
    async with stack(worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await open_stream(ws, text)
            heard = asyncio.create_task(hear(s.url, task_id))
            await append(ws, task_id, "", flush=True)
            async with asyncio.timeout(TIMEOUT_S):
                # The first piece is held in the engine: nothing after it has started.
                await eventually(lambda: s.gates[0].pieces)
                first = list(s.gates[0].pieces)
                s.gates[0].release()
                await eventually(lambda: words(s.gates[0].pieces) == text.split())
            await end(ws, task_id)  # only now: the flush alone spoke every word
            async with asyncio.timeout(TIMEOUT_S):
                stream = await heard
        spoken = s.gates[0].pieces
    assert len(first) == 1 and len(first[0]) <= streaming.FIRST_PIECE_CHARS
    assert len(spoken) >= 2 and spoken[0] == first[0]
    assert words(spoken) == text.split(), "every word once, in order"
    assert_one_continuous_stream(stream)


async def test_text_with_no_boundary_goes_out_at_its_last_word_before_the_listener_runs_dry() -> (
    None
):
    # The next clause has no boundary yet (a slow LLM) and the stream waits for one
    # (NEVER_MS); a short first clause plays out, and the words written so far are spoken
    # before it ends rather than leaving the listener in silence.
    async with stack(worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, _):
            # About two seconds of audio (the sine voice: 20 ms a character).
            first = "Okay, this first sentence keeps the listener busy for about two seconds. "
            task_id = await open_stream(ws, first)
            heard = Stream()
            listener = asyncio.create_task(hear(s.url, task_id, heard))
            async with asyncio.timeout(TIMEOUT_S):
                await heard.first_frame.wait()
            await append(ws, task_id, "quick recap for the ne")
            async with asyncio.timeout(TIMEOUT_S):
                await eventually(lambda: "recap" in " ".join(s.gates[0].pieces))
            early = list(s.gates[0].pieces)
            await append(ws, task_id, "w people: we lost the map.")
            await end(ws, task_id)
            async with asyncio.timeout(TIMEOUT_S):
                await listener
    assert words(early) == f"{first} quick recap for the".split()
    rest = "quick recap for the new people: we lost the map."
    assert words(s.gates[0].pieces) == f"{first} {rest}".split()
    assert_one_continuous_stream(heard)


async def test_text_with_no_boundary_is_spoken_at_its_last_word_after_the_wait(
    bus: BusSettings,
) -> None:
    async with stack(bus, worker_options={"stream_max_wait_ms": 50}) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await open_stream(ws, "and then we went all the way to the sta")
            heard = Stream()
            listener = asyncio.create_task(hear(s.url, task_id, heard))
            waited_out = "and then we went all the way to the".split()
            async with asyncio.timeout(TIMEOUT_S):
                await heard.first_frame.wait()
                # In pieces, the first one short (see the flush test below).
                await eventually(lambda: words(s.gates[0].pieces) == waited_out)
            spoken_early = list(s.gates[0].pieces)
            await append(ws, task_id, "tion.")
            await end(ws, task_id)
            async with asyncio.timeout(TIMEOUT_S):
                await listener
    # The unfinished word waited for the rest of it.
    assert words(spoken_early) == "and then we went all the way to the".split()
    assert words(s.gates[0].pieces)[-1] == "station."
    assert_one_continuous_stream(heard)


async def test_cancel_mid_stream_drops_the_unspoken_text_and_later_pieces_are_task_ended(
    bus: BusSettings,
) -> None:
    async with stack(bus, worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await open_stream(ws, f"{HOLD} on one second, chat. ")
            heard = Stream()
            listener = asyncio.create_task(hear(s.url, task_id, heard))
            await append(ws, task_id, "This sentence must never be spoken. And nor this")
            reply = await ask(ws, {"type": "cancel", "task_id": task_id})
            s.gates[0].release()
            async with asyncio.timeout(TIMEOUT_S):
                await listener
            after = await ask(ws, {"type": "append", "task_id": task_id, "text": "More."})
            ended = await ask(ws, {"type": "end", "task_id": task_id})
    assert reply == {"type": "system", "action": "cancelled", "task_id": task_id}
    assert heard.end["type"] == "audio_complete" and heard.end["cancelled"] is True
    assert not any("never" in piece for piece in s.gates[0].pieces)
    assert after["code"] == ended["code"] == "task_ended"
    assert after["task_id"] == task_id


async def test_append_or_end_after_the_end_is_task_ended_and_unknown_ids_task_not_found(
    bus: BusSettings,
) -> None:
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        task_id = await open_stream(ws, "Short and sweet.")
        await end(ws, task_id)
        after_end = await ask(ws, {"type": "append", "task_id": task_id, "text": "Oops."})
        second_end = await ask(ws, {"type": "end", "task_id": task_id})
        unknown = str(uuid.uuid4())
        nobody = await ask(ws, {"type": "append", "task_id": unknown, "text": "Hi."})
        not_a_stream = await ask(ws, {"type": "speak", "text": "A plain line."})
        plain = await ask(ws, {"type": "end", "task_id": not_a_stream["task_id"]})
        missing = await ask(ws, {"type": "append", "task_id": task_id})
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)
    assert after_end["code"] == second_end["code"] == "task_ended"
    assert nobody["code"] == "task_not_found" and nobody["task_id"] == unknown
    assert plain["code"] == "task_not_found", "a plain speak takes no more text"
    assert missing["code"] == "missing_text"
    assert_one_continuous_stream(heard)


async def test_another_tenants_stream_is_not_found_exactly_like_an_unknown_one(
    bus: BusSettings,
) -> None:
    async with tenant_stack(bus) as (url, _, _gate):
        async with speaker(url, ALICE_KEY) as alice, speaker(url, BOB_KEY) as bob:
            task_id = await open_stream(alice, "Hello ")
            unknown = str(uuid.uuid4())
            theirs = await ask(bob, {"type": "append", "task_id": task_id, "text": "hacked"})
            nobody = await ask(bob, {"type": "append", "task_id": unknown, "text": "hacked"})
            their_end = await ask(bob, {"type": "end", "task_id": task_id})
            await append(alice, task_id, "chat.")
            await end(alice, task_id)
            own = await ask(alice, {"type": "append", "task_id": task_id, "text": "x"})
    assert theirs["code"] == "task_not_found"
    assert without_id(theirs, task_id) == without_id(nobody, unknown)
    assert their_end["code"] == "task_not_found"
    assert own["code"] == "task_ended"


async def test_bad_pieces_get_invalid_text_and_the_stream_goes_on(bus: BusSettings) -> None:
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        task_id = await open_stream(ws, "Good start, ")
        nul = await ask(ws, {"type": "append", "task_id": task_id, "text": "bad\u0000"})
        # A character split across two pieces: half a surrogate pair is no text.
        half = await ask(ws, '{"type":"append","task_id":"' + task_id + '","text":"\\ud83d"}')
        wrong = await ask(ws, {"type": "append", "task_id": task_id, "text": 5})
        bad_first = await ask(ws, {"type": "speak", "text": "\u0007", "stream": True})
        await append(ws, task_id, "good end.")
        await end(ws, task_id)
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)
        spoken = s.gates[0].pieces
    assert nul["code"] == half["code"] == wrong["code"] == bad_first["code"] == "invalid_text"
    assert nul["task_id"] == task_id
    assert_one_continuous_stream(heard)
    assert words(spoken) == "Good start, good end.".split()


async def test_appended_text_counts_against_chars_per_minute(bus: BusSettings) -> None:
    limits = LimitsSettings(chars_per_minute=60)
    async with stack(bus, limits=limits) as s, frontend(s.url) as (ws, _):
        task_id = await open_stream(ws, "Twenty characters.. ")  # 20
        await append(ws, task_id, "Another thirty characters go. ")  # 50
        limited = await ask(ws, {"type": "append", "task_id": task_id, "text": "Eleven more"})
        whole = await ask(ws, {"type": "append", "task_id": task_id, "text": "x" * 61})
        await append(ws, task_id, "Ten more.")  # 59: still fits
        await end(ws, task_id)
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)
        spoken = s.gates[0].pieces
    assert limited["code"] == "rate_limited" and limited["retry_after_ms"] > 0
    assert limited["task_id"] == task_id
    assert whole["code"] == "text_too_long"
    assert_one_continuous_stream(heard)
    assert "Eleven" not in " ".join(spoken) and words(spoken)[-2:] == ["Ten", "more."]


async def test_a_stream_takes_at_most_max_stream_chars(bus: BusSettings) -> None:
    async with stack(bus, max_stream_chars=30) as s, frontend(s.url) as (ws, _):
        too_long_first = await ask(ws, {"type": "speak", "text": "x" * 31, "stream": True})
        task_id = await open_stream(ws, "Twenty characters.. ")
        refused = await ask(ws, {"type": "append", "task_id": task_id, "text": "Eleven more"})
        await append(ws, task_id, "Ten more. ")  # exactly 30
        await end(ws, task_id)
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)
        spoken = s.gates[0].pieces
    assert too_long_first["code"] == refused["code"] == "text_too_long"
    assert refused["task_id"] == task_id
    assert_one_continuous_stream(heard)
    assert words(spoken) == "Twenty characters.. Ten more.".split()


async def test_a_stream_nobody_feeds_ends_by_itself_with_reason_idle(bus: BusSettings) -> None:
    async with stack(bus, stream_idle_timeout_s=0.3) as s, frontend(s.url) as (ws, _):
        task_id = await open_stream(ws, "Hello there, everyone, and then")
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)  # ends only when the stream went idle
        late = await ask(ws, {"type": "append", "task_id": task_id, "text": " more."})
        spoken = s.gates[0].pieces
    assert_one_continuous_stream(heard)
    assert heard.end["reason"] == "idle"
    assert words(spoken) == "Hello there, everyone, and then".split(), "the rest was spoken"
    assert late["code"] == "task_ended"


async def test_several_streams_on_one_connection_each_get_their_own_task(bus: BusSettings) -> None:
    async with stack(bus) as s, frontend(s.url) as (ws, _):
        first = await open_stream(ws, "The first stream ")
        second = await open_stream(ws, "The second stream ")
        listeners = [asyncio.create_task(hear(s.url, task)) for task in (first, second)]
        await append(ws, second, "says two. ")
        await append(ws, first, "says one. ")
        await end(ws, second)
        await append(ws, first, "And it goes on.")
        await end(ws, first)
        async with asyncio.timeout(TIMEOUT_S):
            one, two = await asyncio.gather(*listeners)
        spoken = " ".join(s.gates[0].pieces)
    assert first != second
    for heard in (one, two):
        assert_one_continuous_stream(heard)
    assert one.end["duration_ms"] > two.end["duration_ms"]
    assert "The first stream says one." in spoken and "The second stream says two." in spoken


async def test_closing_the_connection_ends_its_streams_and_speaks_what_was_sent(
    bus: BusSettings,
) -> None:
    async with stack(bus) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await open_stream(ws, "Said before the client left")
        async with asyncio.timeout(TIMEOUT_S):
            heard = await hear(s.url, task_id)
        spoken = s.gates[0].pieces
    assert_one_continuous_stream(heard)
    assert "reason" not in heard.end
    assert words(spoken) == "Said before the client left".split()


@pytest.mark.timeout(300)
async def test_the_heart_voice_speaks_a_stream_as_one_continuous_task() -> None:
    pieces = [
        "Okay chat",
        ", let us",
        " try this le",
        "vel one more time. The",
        " boss is ",
        "weak to fire.",
    ]
    async with running_recorder(wait_s=MODEL_WAIT_S) as recorder:  # a real neural voice
        voices: dict[str, VoiceSettings] = {"heart": HibariVoice(engine="hibari")}
        settings = sine_settings(recorder.url, voices=voices, frame_ms=40, warmup=False)
        async with running_worker(settings, wait_ready=False) as worker:
            async with asyncio.timeout(MODEL_WAIT_S):
                await eventually(lambda: _ok(worker), every=0.05)
            task_id = str(uuid.uuid4())
            body = {"task_id": task_id, "text": "", "stream": True}
            assert (await worker.http.post("/v1/tasks", json=body)).status_code == 202
            for index, piece in enumerate(pieces):
                last = index == len(pieces) - 1
                message = {"task_id": task_id, "text": piece, "end": last}
                response = await worker.http.post(f"/v1/tasks/{task_id}/text", json=message)
                assert response.status_code == 200, response.text
            task = await recorder.ended(task_id)
            after = await worker.http.post(
                f"/v1/tasks/{task_id}/text", json={"task_id": task_id, "text": "x"}
            )
            unknown = str(uuid.uuid4())
            nobody = await worker.http.post(
                f"/v1/tasks/{unknown}/text", json={"task_id": unknown, "text": "x"}
            )
    assert [kind for kind, _ in recorder.log].count("open") == 1
    assert task.end is not None and task.end.status == "completed"
    assert [frame.chunk_id for frame in task.frames] == list(range(len(task.frames)))
    pcm = np.frombuffer(b"".join(frame.pcm for frame in task.frames), dtype="<i2")
    seconds = len(pcm) / 24000
    assert 2.0 < seconds < 8.0, seconds  # thirteen words of speech
    assert np.abs(pcm).max() > 3000
    assert after.status_code == 409 and after.json()["code"] == "task_ended"
    assert nobody.status_code == 404 and nobody.json()["code"] == "task_not_found"


async def test_the_worker_refuses_text_for_a_task_that_is_not_a_stream() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            task_id = str(uuid.uuid4())
            body = {"task_id": task_id, "text": f"{'A long line. ' * 30}"}
            assert (await worker.http.post("/v1/tasks", json=body)).status_code == 202
            response = await worker.http.post(
                f"/v1/tasks/{task_id}/text", json={"task_id": task_id, "text": "x"}
            )
            mismatch = await worker.http.post(
                f"/v1/tasks/{task_id}/text", json={"task_id": str(uuid.uuid4()), "text": "x"}
            )
            await recorder.ended(task_id)
    assert response.status_code == 404
    assert mismatch.status_code == 400


async def test_aivtuber_say_stream_speaks_standard_input_as_it_arrives(
    tmp_path: Path, bus: BusSettings
) -> None:
    target = tmp_path / "reply.wav"
    async with stack(bus) as s:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aivtuber_common.say",
            "--stream",
            "--voice",
            "sine",
            "--url",
            s.url,
            "-o",
            str(target),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        try:
            process.stdin.write("Hello chat, welcome back to the stré".encode())
            await process.stdin.drain()
            waited_out = "Hello chat, welcome back to the".split()
            async with asyncio.timeout(TIMEOUT_S):  # spoken while the input is still open
                await eventually(lambda: words(s.gates[0].pieces) == waited_out)
            spoken_before_eof = list(s.gates[0].pieces)
            # A two-byte character split between two writes.
            process.stdin.write(b"am! Caf\xc3")
            await process.stdin.drain()
            process.stdin.write(b"\xa9 time.")
            process.stdin.close()
            async with asyncio.timeout(TIMEOUT_S):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        spoken = s.gates[0].pieces
    assert process.returncode == 0, err.decode()
    # No boundary yet ("Hello chat," is too short a clause): spoken up to its last whole
    # word once it had waited stream_max_wait_ms, before the input ended.
    assert words(spoken_before_eof) == "Hello chat, welcome back to the".split()
    assert words(spoken) == "Hello chat, welcome back to the stréam! Café time.".split()
    assert "first byte read -> first audible sample:" in out.decode()
    with wave.open(str(target)) as wav:
        assert wav.getframerate() == SINE_RATE and wav.getnframes() > 0


async def test_a_stream_whose_input_handler_died_ends_by_itself_on_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "STREAM_ORPHAN_S", 0.3)
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            task_id = str(uuid.uuid4())
            body = {"task_id": task_id, "text": "Nobody will ever end this", "stream": True}
            assert (await worker.http.post("/v1/tasks", json=body)).status_code == 202
            task = await recorder.ended(task_id)  # no TaskText ever comes
            health = (await worker.health()).json()
    assert task.end is not None and task.end.status == "completed"
    assert task.end.reason == "idle"
    assert task.frames, "what was sent was spoken"
    assert health["running"] == health["queued"] == 0


async def test_text_that_arrives_before_it_is_needed_joins_clauses_with_no_short_frame() -> None:
    # Direct bus: an answered message on /ws/input means the worker holds the text before it.
    async with stack(worker_options={"stream_max_wait_ms": NEVER_MS}) as s:
        async with frontend(s.url) as (ws, _):
            # 29 characters: its audio ends mid-frame (the sine voice: 320 samples each).
            task_id = await open_stream(ws, f"{HOLD} the first clauses of it, ")
            heard = asyncio.create_task(hear(s.url, task_id))
            await append(ws, task_id, "and then the second clause follows. And a third ")
            await append(ws, task_id, "sentence ends it.")
            await end(ws, task_id)
            marker = await ask(ws, {"type": "append", "task_id": task_id, "text": "x"})
            s.gates[0].release()  # the first clause is made only now: the rest waits ready
            async with asyncio.timeout(TIMEOUT_S):
                stream = await heard
        spoken = s.gates[0].pieces
    assert marker["code"] == "task_ended"
    assert len(spoken) >= 3, "spoken clause by clause"
    assert_one_continuous_stream(stream)
    frame = SINE_RATE * 40 // 1000
    # No frame was cut short at a join: the cutter ran on from one clause into the next.
    assert all(chunk["samples"] == frame for chunk in stream.chunks[:-1])


@pytest.mark.timeout(300)
async def test_a_japanese_voice_speaks_a_stream_split_at_japanese_boundaries(
    tmp_path: Path,
) -> None:
    pieces = ["こんにち", "は、今日は", "いい天気で", "すね。また", "明日。"]
    # The real Kokoro model speaks five pieces: 12 s at times, over 15 s on a loaded machine.
    async with running_recorder(wait_s=MODEL_WAIT_S) as recorder:
        voices: dict[str, VoiceSettings] = {"alpha": KokoroJaVoice(speaker="jf_alpha")}
        settings = sine_settings(
            recorder.url, voices=voices, frame_ms=40, warmup=False, data_dir=str(tmp_path)
        )
        async with running_worker(settings, wait_ready=False) as worker:
            async with asyncio.timeout(MODEL_WAIT_S):
                await eventually(lambda: _ok(worker), every=0.05)
            task_id = str(uuid.uuid4())
            body = {"task_id": task_id, "text": "", "stream": True}
            assert (await worker.http.post("/v1/tasks", json=body)).status_code == 202
            for index, piece in enumerate(pieces):
                message = {"task_id": task_id, "text": piece, "end": index == len(pieces) - 1}
                response = await worker.http.post(f"/v1/tasks/{task_id}/text", json=message)
                assert response.status_code == 200, response.text
            task = await recorder.ended(task_id)
    assert task.end is not None and task.end.status == "completed"
    assert [frame.chunk_id for frame in task.frames] == list(range(len(task.frames)))
    pcm = np.frombuffer(b"".join(frame.pcm for frame in task.frames), dtype="<i2")
    assert 1.5 < len(pcm) / 24000 < 8.0  # eighteen kana and kanji of speech
    assert np.abs(pcm).max() > 3000


async def _ok(worker: WorkerClient) -> bool:
    return bool((await worker.health()).json()["status"] == "ok")
