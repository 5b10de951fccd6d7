"""The output handler over real sockets: a test ingest client plays the TTS worker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import OutputHandlerSettings, Settings
from aivtuber_common.internal import INGEST_PATH, TaskEnd, TaskOpen, encode_frame
from aivtuber_output import create_app
from aivtuber_output.store import TaskNotFound, TaskState, TaskStore
from tests.support import RunningServer, run_server, wait_until

RATE = 16000


def frame(index: int, samples: int = 640) -> bytes:
    """A recognisable PCM frame: every sample holds the frame's index."""
    return (index + 1).to_bytes(2, "little", signed=True) * samples


def make_settings(token: str | None = None, **output: Any) -> Settings:
    return Settings(internal_token=token, output_handler=OutputHandlerSettings(**output))


@contextlib.asynccontextmanager
async def output_handler(token: str | None = None, **output: Any) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(make_settings(token, **output))) as server:
        yield server


class Worker:
    """Plays a TTS worker on one ingest connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def open(self, task_id: str, text: str = "Hello there") -> None:
        message = TaskOpen(
            task_id=task_id, text=text, voice="sine", engine="sine", sample_rate=RATE
        )
        await self.ws.send(message.model_dump_json())

    async def frames(self, task_id: str, frames: list[bytes], start: int = 0) -> None:
        for index, pcm in enumerate(frames, start):
            await self.ws.send(encode_frame(task_id, index, 0.1234, pcm))

    async def end(self, task_id: str, status: str = "completed", **extra: Any) -> None:
        await self.ws.send(TaskEnd(task_id=task_id, status=status, **extra).model_dump_json())


@contextlib.asynccontextmanager
async def worker(server: RunningServer, token: str | None = None) -> AsyncIterator[Worker]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with connect(server.ws_url + INGEST_PATH, additional_headers=headers) as ws:
        yield Worker(ws)


@dataclass
class Received:
    start: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    pcm: list[bytes] = field(default_factory=list)
    end: dict[str, Any] | None = None
    close_code: int | None = None

    @property
    def audio(self) -> bytes:
        return b"".join(self.pcm)


async def listen(
    server: RunningServer, task_id: str, query: str = "", token: str | None = None
) -> Received:
    """Subscribe and read until the server closes, checking the message order on the way
    (as the gateway does, with ``token`` when one is in force)."""
    received = Received()
    headers = {"x-aivtuber-gateway-token": token} if token else {}
    async with connect(
        f"{server.ws_url}/ws/output/{task_id}{query}", additional_headers=headers
    ) as ws:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    assert len(received.pcm) == len(received.chunks) - 1, "binary without header"
                    received.pcm.append(message)
                    continue
                data = json.loads(message)
                if data["type"] == "audio_start":
                    received.start = data
                elif data["type"] == "audio_chunk":
                    assert len(received.pcm) == len(received.chunks), "header without binary"
                    received.chunks.append(data)
                else:
                    received.end = data
        except ConnectionClosed:
            pass
        received.close_code = ws.close_code
    return received


async def status(server: RunningServer, task_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/status/{task_id}")
    return response.json()


def subscribed(server: RunningServer, task_id: str, count: int = 1) -> Callable[[], Any]:
    async def check() -> bool:
        body = await status(server, task_id)
        return bool(body["connected"])

    return check


# --- the task store without sockets -----------------------------------------------------------


def store(**overrides: Any) -> TaskStore:
    options = {
        "task_wait_s": 5.0,
        "task_ttl_s": 60.0,
        "task_timeout_s": 5.0,
        "max_buffered_bytes": 1 << 20,
    }
    options.update(overrides)
    return TaskStore(**options)


def opened(task_id: str) -> TaskOpen:
    return TaskOpen(task_id=task_id, text="hi", voice="sine", engine="sine", sample_rate=RATE)


async def read_all(source: TaskStore, task_id: str, from_chunk: int = 0) -> list[Any]:
    return [event async for event in source.read(task_id, from_chunk)]


async def test_store_gives_every_reader_the_whole_stream_in_order() -> None:
    tasks = store()
    task_id = str(uuid.uuid4())
    early = asyncio.create_task(read_all(tasks, task_id))
    await asyncio.sleep(0)  # let the early reader register as waiting
    tasks.open(opened(task_id), source="w1")
    for index in range(5):
        tasks.append(task_id, index, 0.1, frame(index))
    tasks.end(TaskEnd(task_id=task_id, status="completed"))
    late = await read_all(tasks, task_id)
    assert await early == late
    assert [event[0] for event in late[1:-1]] == [0, 1, 2, 3, 4]
    assert await read_all(tasks, task_id, from_chunk=3) == [late[0], *late[4:]]
    tasks.close()


async def test_store_reader_of_an_unannounced_task_gives_up_after_task_wait_s() -> None:
    tasks = store(task_wait_s=0.05)
    task_id = str(uuid.uuid4())
    with pytest.raises(TaskNotFound):
        await read_all(tasks, task_id)
    assert tasks.snapshot(task_id) is None  # the placeholder is gone


async def test_store_fails_the_tasks_of_a_lost_source_only() -> None:
    tasks = store()
    lost, kept = str(uuid.uuid4()), str(uuid.uuid4())
    tasks.open(opened(lost), source="w1")
    tasks.open(opened(kept), source="w2")
    assert tasks.source_lost("w1") == [lost]
    snapshot = tasks.snapshot(lost)
    assert snapshot is not None and snapshot.state is TaskState.FAILED
    assert snapshot.code == "worker_lost"
    assert tasks.snapshot(kept).state is TaskState.WAITING  # type: ignore[union-attr]
    tasks.close()


async def test_store_evicts_the_oldest_finished_task_beyond_the_memory_bound() -> None:
    tasks = store(max_buffered_bytes=3000)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for task_id in (first, second):
        tasks.open(opened(task_id))
        tasks.append(task_id, 0, 0.1, b"\0" * 2000)
        tasks.end(TaskEnd(task_id=task_id, status="completed"))
    assert tasks.snapshot(first) is None
    assert tasks.snapshot(second) is not None
    assert tasks.buffered_bytes == 2000
    tasks.close()


async def test_store_fails_a_task_whose_frames_skip_a_chunk() -> None:
    tasks = store()
    task_id = str(uuid.uuid4())
    tasks.open(opened(task_id))
    tasks.append(task_id, 0, 0.1, frame(0))
    with pytest.raises(Exception, match="frame 2 arrived when 1 was expected"):
        tasks.append(task_id, 2, 0.1, frame(2))
    assert tasks.snapshot(task_id).code == "frame_lost"  # type: ignore[union-attr]
    tasks.close()


# --- over sockets -------------------------------------------------------------------------


async def test_subscriber_gets_start_chunks_with_their_pcm_and_complete_then_close_1000() -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i) for i in range(4)] + [frame(4, samples=100)]
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id, text="Hello everyone!")
        await tts.frames(task_id, frames)
        await tts.end(task_id)
        got = await listen(server, task_id)
    assert got.start == {
        "type": "audio_start",
        "status": "success",
        "task_id": task_id,
        "content": "Hello everyone!",
        "audio_present": True,
        "format": "pcm_s16le",
        "sample_rate": RATE,
        "channels": 1,
        "voice": "sine",
        "engine": "sine",
    }
    assert [c["chunk_id"] for c in got.chunks] == [0, 1, 2, 3, 4]
    assert [c["samples"] for c in got.chunks] == [640, 640, 640, 640, 100]
    assert all(c["total_chunks"] is None and c["level"] == 0.1234 for c in got.chunks)
    assert got.pcm == frames
    assert got.end == {
        "type": "audio_complete",
        "task_id": task_id,
        "chunks": 5,
        "duration_ms": round(2660 * 1000 / RATE, 1),
        "cancelled": False,
    }
    assert got.close_code == 1000


async def test_early_live_and_late_subscribers_get_identical_bytes() -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i) for i in range(30)]
    async with output_handler() as server, worker(server) as tts:
        early = asyncio.create_task(listen(server, task_id))
        await wait_until(subscribed(server, task_id))
        assert (await status(server, task_id))["status"] == "waiting"
        await tts.open(task_id)
        await tts.frames(task_id, frames[:10])
        await wait_until(lambda: _chunks_at_least(server, task_id, 10))
        live = asyncio.create_task(listen(server, task_id))
        await tts.frames(task_id, frames[10:], start=10)
        await tts.end(task_id)
        late = await listen(server, task_id)
        results = [await early, await live, late]
    for got in results:
        assert got.pcm == frames
        assert [c["chunk_id"] for c in got.chunks] == list(range(30))
        assert got.close_code == 1000


async def _chunks_at_least(server: RunningServer, task_id: str, count: int) -> bool:
    return (await status(server, task_id))["chunks"] >= count


async def test_two_subscribers_of_a_streaming_task_each_get_the_whole_stream() -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i) for i in range(8)]
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id)
        await tts.frames(task_id, frames[:3])
        first = asyncio.create_task(listen(server, task_id))
        second = asyncio.create_task(listen(server, task_id))
        await tts.frames(task_id, frames[3:], start=3)
        await tts.end(task_id)
        assert (await first).pcm == (await second).pcm == frames


async def test_from_chunk_resumes_after_what_the_client_already_played() -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i) for i in range(6)]
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id)
        await tts.frames(task_id, frames)
        await tts.end(task_id)
        got = await listen(server, task_id, "?from_chunk=4")
        beyond = await listen(server, task_id, "?from_chunk=99")
        bad = await listen(server, task_id, "?from_chunk=-1")
    assert got.start is not None
    assert [c["chunk_id"] for c in got.chunks] == [4, 5]
    assert got.pcm == frames[4:]
    assert got.end is not None and got.end["chunks"] == 6
    assert beyond.chunks == [] and beyond.end is not None and beyond.close_code == 1000
    assert bad.end is not None and bad.end["code"] == "invalid_from_chunk"
    assert bad.close_code == 4400


async def test_a_cancelled_task_completes_with_cancelled_true() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id)
        await tts.frames(task_id, [frame(0), frame(1)])
        await tts.end(task_id, status="cancelled")
        got = await listen(server, task_id)
        assert (await status(server, task_id))["status"] == "cancelled"
    assert got.end is not None and got.end["cancelled"] is True
    assert got.end["chunks"] == 2
    assert got.close_code == 1000


async def test_a_failed_task_sends_the_error_shape_and_closes_1011() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id)
        await tts.frames(task_id, [frame(0)])
        await tts.end(task_id, status="failed", code="engine_error", message="The voice broke.")
        got = await listen(server, task_id)
    assert got.pcm == [frame(0)]
    assert got.end == {
        "type": "error",
        "status": "error",
        "task_id": task_id,
        "code": "engine_error",
        "error": "The voice broke.",
    }
    assert got.close_code == 1011


async def test_a_dropped_worker_fails_its_tasks_with_worker_lost_and_others_continue() -> None:
    lost_id, kept_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with output_handler() as server, worker(server) as steady:
        async with worker(server) as doomed:
            await doomed.open(lost_id)
            await doomed.frames(lost_id, [frame(0), frame(1)])
            await steady.open(kept_id)
            await steady.frames(kept_id, [frame(0)])
            lost = asyncio.create_task(listen(server, lost_id))
            kept = asyncio.create_task(listen(server, kept_id))
            await wait_until(subscribed(server, lost_id))
        # The doomed worker's connection is closed here.
        got = await lost
        assert got.pcm == [frame(0), frame(1)]
        assert got.end is not None and got.end["code"] == "worker_lost"
        assert got.close_code == 1011
        await steady.frames(kept_id, [frame(1)], start=1)
        await steady.end(kept_id)
        assert (await kept).pcm == [frame(0), frame(1)]


async def test_a_task_that_stops_receiving_frames_fails_with_timeout() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler(task_timeout_s=0.2) as server, worker(server) as tts:
        await tts.open(task_id)
        await tts.frames(task_id, [frame(0)])
        got = await listen(server, task_id)
    assert got.end is not None and got.end["code"] == "timeout"
    assert got.close_code == 1011


async def test_an_invalid_task_id_is_refused_at_once_with_4400() -> None:
    async with output_handler() as server:
        for bad in ("not-a-uuid", str(uuid.uuid4()).upper(), "123"):
            got = await listen(server, bad)
            assert got.end is not None and got.end["code"] == "invalid_task_id"
            assert got.end["status"] == "error"
            assert got.close_code == 4400


async def test_an_unknown_task_gets_task_not_found_and_4404_after_task_wait_s() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler(task_wait_s=0.2) as server:
        got = await listen(server, task_id)
        assert (await status(server, task_id))["status"] == "not_found"
    assert got.start is None
    assert got.end is not None and got.end["code"] == "task_not_found"
    assert got.close_code == 4404


async def test_a_subscriber_that_does_not_read_never_blocks_the_worker() -> None:
    task_id = str(uuid.uuid4())
    frames = [frame(i, samples=8000) for i in range(200)]  # 3.2 MB, more than socket buffers
    async with output_handler() as server, worker(server) as tts:
        await tts.open(task_id)
        url = f"{server.ws_url}/ws/output/{task_id}"
        # close_timeout: a client that does not read cannot see the server's close reply.
        async with connect(url, max_queue=1, close_timeout=0.2) as stalled:
            await stalled.recv()  # audio_start, then it stops reading
            await tts.frames(task_id, frames)
            await tts.end(task_id)
            got = await listen(server, task_id)
            assert got.pcm == frames
        await wait_until(lambda: _no_subscribers(server))


async def _no_subscribers(server: RunningServer) -> bool:
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{server.http_url}/health")).json()
    return health["subscribers"] == 0


async def test_wav_endpoint_serves_finished_audio_and_explains_other_cases() -> None:
    done_id, live_id, failed_id = (str(uuid.uuid4()) for _ in range(3))
    frames = [frame(i) for i in range(3)]
    async with output_handler() as server, worker(server) as tts, httpx.AsyncClient() as http:
        await tts.open(done_id)
        await tts.frames(done_id, frames)
        await tts.end(done_id)
        await tts.open(live_id)
        await tts.open(failed_id)
        await tts.end(failed_id, status="failed", code="engine_error", message="Broke.")
        await wait_until(lambda: _has_status(server, failed_id, "failed"))
        ok = await http.get(f"{server.http_url}/tasks/{done_id}/audio.wav")
        live = await http.get(f"{server.http_url}/tasks/{live_id}/audio.wav")
        failed = await http.get(f"{server.http_url}/tasks/{failed_id}/audio.wav")
        unknown = await http.get(f"{server.http_url}/tasks/{uuid.uuid4()}/audio.wav")
        invalid = await http.get(f"{server.http_url}/tasks/nope/audio.wav")
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(ok.content)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        assert wav.readframes(wav.getnframes()) == b"".join(frames)
    assert live.status_code == 409 and live.json()["code"] == "task_not_finished"
    assert failed.status_code == 409 and failed.json()["code"] == "task_failed"
    assert unknown.status_code == 404 and unknown.json()["code"] == "task_not_found"
    assert invalid.status_code == 400 and invalid.json()["code"] == "invalid_task_id"


async def _has_status(server: RunningServer, task_id: str, wanted: str) -> bool:
    return (await status(server, task_id))["status"] == wanted


async def test_status_follows_a_task_from_waiting_to_completed() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler() as server, worker(server) as tts:
        assert await status(server, task_id) == {
            "task_id": task_id,
            "status": "not_found",
            "connected": False,
            "chunks": 0,
        }
        await tts.open(task_id)
        await wait_until(lambda: _has_status(server, task_id, "waiting"))
        await tts.frames(task_id, [frame(0), frame(1)])
        await wait_until(lambda: _has_status(server, task_id, "streaming"))
        await tts.end(task_id)
        await wait_until(lambda: _has_status(server, task_id, "completed"))
        assert await status(server, task_id) == {
            "task_id": task_id,
            "status": "completed",
            "connected": False,
            "chunks": 2,
        }


async def test_ingest_demands_the_internal_token_when_one_is_set() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler(token="s3cret-internal-token") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with connect(server.ws_url + INGEST_PATH, additional_headers=headers) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4401
        async with worker(server, token="s3cret-internal-token") as tts:
            await tts.open(task_id)
            await tts.frames(task_id, [frame(0)])
            await tts.end(task_id)
            got = await listen(server, task_id, token="s3cret-internal-token")
    assert got.pcm == [frame(0)]


async def test_bad_ingest_messages_are_logged_and_the_connection_keeps_working() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler() as server, worker(server) as tts:
        await tts.ws.send("{not json")
        await tts.ws.send(b"short")
        await tts.ws.send(encode_frame(str(uuid.uuid4()), 0, 0.1, frame(0)))  # unknown task
        await tts.open(task_id)
        await tts.frames(task_id, [frame(0)])
        await tts.end(task_id)
        got = await listen(server, task_id)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.http_url}/metrics")).text
    assert got.pcm == [frame(0)] and got.close_code == 1000
    assert "aivtuber_output_ingest_errors_total 3.0" in metrics


async def test_health_and_metrics_report_tasks_and_latency() -> None:
    task_id = str(uuid.uuid4())
    async with output_handler() as server, worker(server) as tts, httpx.AsyncClient() as http:
        await tts.open(task_id)
        await tts.frames(task_id, [frame(0), frame(1)])
        await tts.end(task_id)
        await listen(server, task_id)
        health = (await http.get(f"{server.http_url}/health")).json()
        metrics = (await http.get(f"{server.http_url}/metrics")).text
    assert health["status"] == "ok"
    assert health["ingest_connections"] == 1
    assert health["tasks"]["completed"] == 1
    assert "aivtuber_output_first_frame_seconds_count 1.0" in metrics
    assert "aivtuber_output_frame_gap_seconds_count 1.0" in metrics
    assert 'aivtuber_output_tasks_finished_total{code="",status="completed"} 1.0' in metrics
    assert "aivtuber_output_frames_sent_total 2.0" in metrics
