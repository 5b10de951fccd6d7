"""The TTS worker over real sockets: its HTTP API, and what it pushes to a stand-in ingest."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from aivtuber_common.audio import samples_per_frame
from aivtuber_common.config import SineVoice
from aivtuber_tts.splitting import split_text
from tests.tts_fakes import (
    WAIT_S,
    GatedEngine,
    factory_with,
    running_recorder,
    running_worker,
    sine_settings,
)

TEXT = "Hi chat! Welcome back to the stream, it is so good to see you all. Thanks!"


async def test_sine_task_streams_open_then_contiguous_frames_then_completed() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            task_id = str(uuid.uuid4())
            response = await worker.submit(TEXT, task_id=task_id)
            assert response.status_code == 202
            assert response.json() == {"task_id": task_id, "voice": "sine", "queued": 0}
            # TaskOpen went out before the 202: the recorder may still be reading it, but
            # it is the first thing on the socket for this task.
            task = await recorder.ended(task_id)
    assert recorder.log[0] == ("open", task_id)
    assert recorder.log[-1] == ("end", task_id)
    assert task.open.sample_rate == 22050 and task.open.engine == "sine"
    assert task.open.text == TEXT and task.open.voice == "sine"
    assert task.end is not None and task.end.status == "completed"
    assert [frame.chunk_id for frame in task.frames] == list(range(len(task.frames)))
    frame_bytes = samples_per_frame(22050, 40) * 2
    sizes = [len(frame.pcm) for frame in task.frames]
    assert set(sizes[:-1]) == {frame_bytes}
    assert 0 < sizes[-1] <= frame_bytes and sizes[-1] % 2 == 0
    assert all(frame.level > 0 for frame in task.frames)
    # 20 ms per character of every piece (white space between pieces is not spoken).
    spoken_chars = sum(len(piece) for piece in split_text(TEXT))
    assert sum(sizes) // 2 == pytest.approx(spoken_chars * 0.020 * 22050, rel=0.01)


async def test_default_voice_is_used_when_the_task_names_none_and_voices_are_listed() -> None:
    voices = {
        "beep": SineVoice(frequency_hz=440.0),
        "boop": SineVoice(sample_rate=16000),
    }
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices=voices, default_voice="boop")
        async with running_worker(settings) as worker:
            task_id = str(uuid.uuid4())
            assert (await worker.submit("Hello there.", task_id=task_id)).status_code == 202
            task = await recorder.ended(task_id)
            listing = (await worker.http.get("/v1/voices")).json()
    assert task.open.voice == "boop" and task.open.sample_rate == 16000
    assert listing["default"] == "boop"
    assert [(v["id"], v["engine"], v["state"]) for v in listing["voices"]] == [
        ("beep", "sine", "ready"),
        ("boop", "sine", "ready"),
    ]


async def test_health_reports_voices_devices_counts_and_ingest() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url, max_concurrent=2)) as worker:
            response = await worker.health()
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "ok" and body["ingest_connected"] is True
    assert body["running"] == 0 and body["queued"] == 0
    assert body["capacity"] == 2 + 32
    assert body["voices"][0]["device"] == "cpu" and body["voices"][0]["state"] == "ready"
    assert body["ready_s"] is not None


async def test_cancel_stops_the_task_at_once_and_its_in_flight_piece_sends_nothing() -> None:
    gated = GatedEngine()
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"gated": SineVoice()})
        async with running_worker(settings, engine_factory=factory_with({"gated": gated})) as w:
            task_id = str(uuid.uuid4())
            text = "First piece here. Second piece here. Third piece here."
            assert (await w.submit(text, task_id=task_id)).status_code == 202
            # The first piece's frames arrive; the second piece is computing in its thread.
            await recorder.wait_for(lambda: len(recorder.tasks[task_id].frames) >= 2)
            await asyncio.to_thread(gated.piece_started.wait, WAIT_S)
            response = await w.http.delete(f"/v1/tasks/{task_id}")
            assert response.json() == {"task_id": task_id, "cancelled": True}
            task = await recorder.ended(task_id)
            gated.release.set()  # the in-flight piece now finishes: its audio must go nowhere
            body = await w.wait_health(lambda b: b["running"] == 0 and b["queued"] == 0)
            metrics = (await w.http.get("/metrics")).text
            # A later task still works: the slot of the cancelled piece came back.
            other = str(uuid.uuid4())
            assert (await w.submit("One more.", task_id=other)).status_code == 202
            assert (await recorder.ended(other)).end.status == "completed"  # type: ignore[union-attr]
    assert task.end is not None and task.end.status == "cancelled"
    # The first piece only: 100 ms = two whole 40 ms frames; the 20 ms rest would only have
    # gone out with the next piece or at the end.
    assert len(task.frames) == 2
    assert task.frames_after_end == 0
    assert body["status"] == "ok"
    assert 'aivtuber_tts_tasks_total{outcome="cancelled",voice="gated"} 1.0' in metrics


async def test_cancel_of_an_unknown_task_answers_404_task_not_found() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            task_id = str(uuid.uuid4())
            response = await worker.http.delete(f"/v1/tasks/{task_id}")
    assert response.status_code == 404
    assert response.json()["code"] == "task_not_found"


async def test_worker_says_busy_when_slots_and_queue_are_full() -> None:
    gated = GatedEngine()
    async with running_recorder() as recorder:
        settings = sine_settings(
            recorder.url,
            voices={"gated": SineVoice()},
            max_concurrent=1,
            max_queued=1,
        )
        async with running_worker(settings, engine_factory=factory_with({"gated": gated})) as w:
            first, second = str(uuid.uuid4()), str(uuid.uuid4())
            assert (await w.submit("One. Two.", task_id=first)).status_code == 202
            accepted = await w.submit("Three. Four.", task_id=second)
            assert accepted.status_code == 202
            refused = await w.submit("Five.")
            health = (await w.health()).json()
            gated.release.set()
            await recorder.ended(first)
            await recorder.ended(second)
            after = await w.submit("Six.")
    assert refused.status_code == 503
    assert refused.json()["code"] == "busy"
    assert "busy" in refused.json()["message"]
    assert health["running"] + health["queued"] == 2 and health["capacity"] == 2
    assert after.status_code == 202


async def test_unknown_voice_is_refused_with_404_and_the_known_ones() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            response = await worker.submit("Hello.", voice="nobody")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_voice"
    assert "'nobody'" in response.json()["message"] and "sine" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "json_invalid"),
        (b'{"task_id": "not-a-uuid", "text": "Hi."}', "task_id"),
        (b'{"task_id": "00000000-0000-4000-8000-000000000000"}', "text"),
        (b'{"task_id": "00000000-0000-4000-8000-000000000000", "text": "  "}', "empty"),
    ],
)
async def test_bad_submissions_get_bad_request_with_a_reason(body: bytes, where: str) -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            response = await worker.http.post("/v1/tasks", content=body)
            assert (await worker.health()).status_code == 200
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert where in response.json()["message"] or where == "json_invalid"


async def test_a_task_id_already_running_is_refused() -> None:
    gated = GatedEngine()
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"gated": SineVoice()})
        async with running_worker(settings, engine_factory=factory_with({"gated": gated})) as w:
            task_id = str(uuid.uuid4())
            assert (await w.submit("One. Two.", task_id=task_id)).status_code == 202
            again = await w.submit("One. Two.", task_id=task_id)
            gated.release.set()
            await recorder.ended(task_id)
    assert again.status_code == 400 and "already running" in again.json()["message"]


async def test_internal_token_is_demanded_on_tasks_and_sent_on_the_ingest() -> None:
    async with running_recorder(token="s3cret-internal-token") as recorder:
        async with running_worker(
            sine_settings(recorder.url, token="s3cret-internal-token")
        ) as worker:
            missing = await worker.submit("Hello.")
            wrong = await worker.submit("Hello.", headers={"Authorization": "Bearer nope"})
            cancel = await worker.http.delete(f"/v1/tasks/{uuid.uuid4()}")
            task_id = str(uuid.uuid4())
            right = await worker.submit(
                "Hello.", task_id=task_id, headers={"Authorization": "Bearer s3cret-internal-token"}
            )
            await recorder.ended(task_id)
            health = await worker.health()
    assert missing.status_code == wrong.status_code == cancel.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert right.status_code == 202
    assert health.status_code == 200  # read-only endpoints stay open
    assert recorder.authorization[-1] == "Bearer s3cret-internal-token"


async def test_worker_is_not_ready_while_the_output_handler_is_down_and_connects_later() -> None:
    from tests.support import free_port

    port = free_port()
    settings = sine_settings(f"ws://127.0.0.1:{port}")
    async with running_worker(settings, wait_ready=False) as worker:
        body = await worker.wait_health(lambda b: b["voices"][0]["state"] == "ready")
        response = await worker.health()
        refused = await worker.submit("Hello.")
        assert response.status_code == 503
        assert body["status"] == "degraded" and body["ingest_connected"] is False
        assert refused.status_code == 503 and refused.json()["code"] == "not_ready"
        assert "output handler" in refused.json()["message"]
        async with running_recorder(port=port) as recorder:
            await worker.wait_health(lambda b: b["status"] == "ok")
            task_id = str(uuid.uuid4())
            assert (await worker.submit("Hello.", task_id=task_id)).status_code == 202
            assert (await recorder.ended(task_id)).end.status == "completed"  # type: ignore[union-attr]


async def test_a_task_whose_ingest_connection_drops_is_stopped_and_the_worker_reconnects() -> None:
    gated = GatedEngine()
    async with running_recorder() as recorder:
        recorder.drop_after_frames = 2
        settings = sine_settings(recorder.url, voices={"gated": SineVoice()})
        async with running_worker(settings, engine_factory=factory_with({"gated": gated})) as w:
            task_id = str(uuid.uuid4())
            assert (await w.submit("One. Two. Three.", task_id=task_id)).status_code == 202
            await asyncio.to_thread(gated.piece_started.wait, WAIT_S)
            # The socket drops; the worker stops the task and comes back on a new socket.
            await recorder.wait_for(lambda: recorder.disconnects >= 1)
            await w.wait_health(lambda b: b["status"] == "ok" and b["running"] == 0)
            gated.release.set()
            metrics = (await w.http.get("/metrics")).text
            other = str(uuid.uuid4())
            assert (await w.submit("Again.", task_id=other)).status_code == 202
            assert (await recorder.ended(other)).end.status == "completed"  # type: ignore[union-attr]
    lost = recorder.tasks[task_id]
    assert lost.end is None and len(lost.frames) == 2
    assert 'aivtuber_tts_tasks_total{outcome="lost",voice="gated"} 1.0' in metrics


async def test_an_engine_error_ends_the_task_failed_with_a_sentence() -> None:
    broken = GatedEngine(fail_on_piece=1)
    broken.release.set()
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"broken": SineVoice()})
        async with running_worker(settings, engine_factory=factory_with({"broken": broken})) as w:
            task_id = str(uuid.uuid4())
            assert (await w.submit("One. Two. Three.", task_id=task_id)).status_code == 202
            task = await recorder.ended(task_id)
            body = (await w.health()).json()
    assert task.end is not None and task.end.status == "failed"
    assert task.end.code == "engine_error"
    assert task.end.message == "The gated engine failed: the model ran out of tea"
    assert len(task.frames) == 2  # the first piece got through before the failure
    assert body["status"] == "ok"


async def test_metrics_count_tasks_first_chunk_and_real_time_factor() -> None:
    async with running_recorder() as recorder:
        async with running_worker(sine_settings(recorder.url)) as worker:
            task_id = str(uuid.uuid4())
            await worker.submit("Hello there. How are you?", task_id=task_id)
            await recorder.ended(task_id)
            await worker.submit("Hi.", voice="nobody")
            text = (await worker.http.get("/metrics")).text
    assert 'aivtuber_tts_tasks_total{outcome="completed",voice="sine"} 1.0' in text
    assert 'aivtuber_tts_refusals_total{code="unknown_voice"} 1.0' in text
    assert 'aivtuber_tts_first_chunk_seconds_count{voice="sine"} 1.0' in text
    assert 'aivtuber_tts_real_time_factor_count{voice="sine"} 1.0' in text
    assert "aivtuber_tts_queue_depth 0.0" in text
    assert "aivtuber_tts_running 0.0" in text


async def test_shutdown_ends_running_tasks_as_failed_worker_stopped() -> None:
    gated = GatedEngine()
    async with running_recorder() as recorder:
        settings = sine_settings(recorder.url, voices={"gated": SineVoice()})
        async with running_worker(settings, engine_factory=factory_with({"gated": gated})) as w:
            task_id = str(uuid.uuid4())
            assert (await w.submit("One. Two.", task_id=task_id)).status_code == 202
            await asyncio.to_thread(gated.piece_started.wait, WAIT_S)
            # Leaving the block stops the worker while the second piece is in flight; the
            # piece finishes in its thread once released.
            asyncio.get_running_loop().call_later(0.2, gated.release.set)
        task = await recorder.ended(task_id)
    assert task.end is not None and task.end.status == "failed"
    assert task.end.code == "worker_stopped"
