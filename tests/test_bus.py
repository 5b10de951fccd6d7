"""The Redis bus's own rules over a real redis-server: config, the fixed entry IDs that keep
one voice per task, cancels of tasks no worker took yet, and Redis absent at start.
(The protocol suite runs on both buses in test_end_to_end.py; processes being killed in
test_bus_scale.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from aivtuber_common.bus import END_ID, OPEN_ID, BusUnavailable, RedisLink
from aivtuber_common.bus.liveness import Heartbeat
from aivtuber_common.config import (
    ConfigError,
    DirectBusSettings,
    OutputHandlerSettings,
    RedisBusSettings,
    Settings,
    SineVoice,
    TtsWorkerSettings,
    load_settings,
)
from aivtuber_common.internal import SubmitTask, TaskEnd, TaskOpen
from aivtuber_common.transport import SinkLost, TaskNotFound
from aivtuber_input import create_app as input_app
from aivtuber_input.redis_submitter import RedisTaskSubmitter
from aivtuber_output import create_app as output_app
from aivtuber_output.redis_source import RedisFrameSource
from aivtuber_tts import create_app as worker_app
from aivtuber_tts.redis_bus import RedisFrameSink
from tests.frontend import ask, frontend, listen
from tests.redis_support import RedisServer, redis_bus_settings
from tests.support import RunningServer, eventually, free_port, run_server
from tests.test_end_to_end import Gate, held_factory
from tests.tts_fakes import worker_health

TIMEOUT_S = 15.0


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_bus_defaults_to_direct_and_redis_keys_are_validated(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, {}), environ={}).bus == DirectBusSettings()
    redis = load_settings(write(tmp_path, {"bus": {"kind": "redis"}}), environ={}).bus
    assert isinstance(redis, RedisBusSettings) and redis.url == "redis://127.0.0.1:6379/0"
    bad = [
        ({"kind": "direct", "url": "redis://x"}, "bus.direct.url: unknown key"),
        ({"kind": "redis", "url": "http://x"}, "must be a redis://"),
        ({"kind": "redis", "heartbeat_ttl_s": 1, "heartbeat_interval_s": 1}, "heartbeat_ttl_s"),
        ({"kind": "kafka"}, "bus"),
    ]
    for bus, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_settings(write(tmp_path, {"bus": bus}), environ={})


def opened(task_id: str) -> TaskOpen:
    return TaskOpen(task_id=task_id, text="Hi", voice="sine", engine="sine", sample_rate=16000)


async def test_a_second_writer_of_a_task_collides_so_a_task_never_has_two_voices(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_bus_settings(redis_server.url))
    first, second = (RedisFrameSink(link, 60, 1000) for _ in range(2))
    task_id = str(uuid.uuid4())
    try:
        await first.open(opened(task_id))
        await second.open(opened(task_id))  # a re-run of a task with no audio: allowed
        await first.append(task_id, 0, 0.5, b"\x01\x00" * 8)
        with pytest.raises(SinkLost):
            await second.append(task_id, 0, 0.5, b"\x02\x00" * 8)
        await first.end(TaskEnd(task_id=task_id, status="completed"))
        with pytest.raises(SinkLost):  # nothing fits after the end
            await first.append(task_id, 1, 0.5, b"\x01\x00" * 8)
        await second.end(TaskEnd(task_id=task_id, status="failed", code="worker_lost"))
        entries = await link.client.xrange(link.keys.task(task_id))
    finally:
        await link.aclose()
    assert [entry_id.decode() for entry_id, _ in entries] == [OPEN_ID, "1-0", END_ID]
    assert TaskEnd.model_validate_json(entries[-1][1][b"d"]).status == "completed"


async def test_a_task_cancelled_before_any_worker_took_it_is_dropped_by_the_worker(
    redis_server: RedisServer,
) -> None:
    bus = redis_bus_settings(redis_server.url)
    link = RedisLink(bus)
    worker_name = "stand-in"
    stand_in = Heartbeat(
        link,
        "worker",
        worker_name,
        lambda: worker_health(name=worker_name),
    )
    submitter = RedisTaskSubmitter(link, 60)
    task_id = str(uuid.uuid4())
    try:
        await link.ping()
        await stand_in.beat()  # a worker that never reads: the task stays queued
        await submitter.refresh()
        await submitter.submit(SubmitTask(task_id=task_id, text="Never spoken."))
        assert await submitter.cancel(task_id) is True
        assert await submitter.cancel(task_id) is False  # ended already
        with pytest.raises(TaskNotFound):  # never existed
            await submitter.cancel(str(uuid.uuid4()))
        await stand_in.withdraw()
        config = TtsWorkerSettings(voices={"sine": SineVoice()}, default_voice="sine")
        async with run_server(worker_app(Settings(bus=bus, tts_worker=config))):

            async def all_taken() -> bool:
                groups = await link.client.xinfo_groups(link.keys.tasks)
                if not groups:  # the worker has not made its group yet (xpending: NOGROUP)
                    return False
                pending = (await link.client.xpending(link.keys.tasks, "workers"))["pending"]
                return not pending and not groups[0]["lag"]

            async with asyncio.timeout(TIMEOUT_S):
                await eventually(all_taken, every=0.05)
        entries = await link.client.xrange(link.keys.task(task_id))
    finally:
        await link.aclose()
    kinds = [fields[b"k"] for _, fields in entries]
    assert kinds == [b"queued", b"end"], "the worker took it, found it ended, spoke nothing"
    assert TaskEnd.model_validate_json(entries[-1][1][b"d"]).status == "cancelled"


async def test_redis_unreachable_at_start_is_a_503_and_clear_errors_never_a_hang() -> None:
    bus = redis_bus_settings(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    settings = Settings(bus=bus, output_handler=OutputHandlerSettings(task_wait_s=TIMEOUT_S))
    async with run_server(output_app(settings)) as output, run_server(input_app(settings)) as inp:
        async with httpx.AsyncClient() as http:
            for server in (output, inp):

                async def unavailable(url: str = server.http_url) -> httpx.Response | None:
                    response = await http.get(f"{url}/health")
                    return response if response.status_code == 503 else None

                async with asyncio.timeout(TIMEOUT_S):
                    response = await eventually(unavailable, every=0.05)
                assert response.json()["bus"]["connected"] is False
        heard = await asyncio.wait_for(listen(output.ws_url, str(uuid.uuid4())), TIMEOUT_S)
        async with frontend(inp.ws_url) as (ws, _):
            reply = await asyncio.wait_for(ask(ws, {"type": "speak", "text": "Hi"}), TIMEOUT_S)
    assert heard.end is not None and heard.end["code"] == "tts_unavailable", heard.end
    assert heard.close_code == 1011
    assert reply["type"] == "error" and reply["code"] == "tts_unavailable"


async def test_heartbeats_list_live_workers_and_forget_expired_ones(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(
        # A TTL long enough that the first refresh below sees the beat on a loaded machine.
        redis_bus_settings(redis_server.url, heartbeat_ttl_s=2.0, heartbeat_interval_s=0.1)
    )
    beat = Heartbeat(link, "worker", "w1", lambda: worker_health(name="w1"))
    submitter = RedisTaskSubmitter(link, 60)
    client = Redis.from_url(redis_server.url)
    try:
        await beat.beat()
        await submitter.refresh()
        assert [worker.name for worker in submitter.workers] == ["w1"]
        async with asyncio.timeout(TIMEOUT_S):
            await eventually(lambda: _gone(client, beat.key), every=0.05)
        await submitter.refresh()
        assert submitter.workers == []
        assert not await client.smembers(link.keys.live_index("worker"))
    finally:
        await client.aclose()
        await link.aclose()


async def test_a_full_connection_pool_refuses_the_call_without_calling_redis_down(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_bus_settings(redis_server.url), max_connections=1)
    try:
        assert await link.ping()
        blocked = asyncio.create_task(link.client.xread({"nothing": "$"}, block=2000))
        pool = link.client.connection_pool
        async with asyncio.timeout(TIMEOUT_S):  # until it has taken the only connection
            await eventually(lambda: pool._in_use_connections)  # type: ignore[attr-defined]
        with pytest.raises(BusUnavailable, match="too many open reads"):
            with link.guard():
                await link.client.get("x")
        assert link.up
        blocked.cancel()
        await asyncio.wait({blocked})
    finally:
        await link.aclose()


async def test_a_cancel_stops_the_task_on_the_worker_that_holds_it(
    redis_server: RedisServer,
) -> None:
    bus = redis_bus_settings(redis_server.url)
    gate = Gate()
    sine = {"sine": SineVoice(sample_rate=16000)}
    config = TtsWorkerSettings(voices=sine, default_voice="sine")
    app = worker_app(Settings(bus=bus, tts_worker=config), engine_factory=held_factory(gate))
    link = RedisLink(bus)
    submitter = RedisTaskSubmitter(link, 60)
    task_id = str(uuid.uuid4())
    try:
        async with run_server(app) as worker, httpx.AsyncClient() as http:
            await link.ping()
            async with asyncio.timeout(TIMEOUT_S):
                await eventually(lambda: _refreshed(submitter), every=0.05)
                await submitter.submit(SubmitTask(task_id=task_id, text="Go. Then HOLD on."))
                await eventually(lambda: _running(http, worker, 1), every=0.02)
                assert await submitter.cancel(task_id) is True
                # Stopped there while its engine thread is still held: the slot is free.
                await eventually(lambda: _running(http, worker, 0), every=0.02)
            gate.release()
    finally:
        gate.release()
        await link.aclose()


async def test_a_worker_shutting_down_hands_back_unspoken_tasks_to_another_worker(
    redis_server: RedisServer,
) -> None:
    bus = redis_bus_settings(redis_server.url)
    sine = {"sine": SineVoice(sample_rate=16000)}
    config = TtsWorkerSettings(voices=sine, default_voice="sine")
    gate = Gate()
    leaving = worker_app(Settings(bus=bus, tts_worker=config), engine_factory=held_factory(gate))
    link = RedisLink(bus)
    submitter = RedisTaskSubmitter(link, 60)
    task_id = str(uuid.uuid4())
    text = "HOLD on, this is spoken by the next worker."
    try:
        await link.ping()
        async with run_server(leaving) as worker, httpx.AsyncClient() as http:
            async with asyncio.timeout(TIMEOUT_S):
                await eventually(lambda: _refreshed(submitter), every=0.05)
                await submitter.submit(SubmitTask(task_id=task_id, text=text))
                await eventually(lambda: _running(http, worker, 1), every=0.02)
            worker.server.should_exit = True
            gate.release()  # the engine thread it was in may end now; no frame will be sent
        async with run_server(worker_app(Settings(bus=bus, tts_worker=config))):
            kinds: list[bytes] = []
            async with asyncio.timeout(TIMEOUT_S):
                while b"end" not in kinds:
                    entries = await link.client.xrange(link.keys.task(task_id))
                    kinds = [fields[b"k"] for _, fields in entries]
                    await asyncio.sleep(0.05)
    finally:
        gate.release()
        await link.aclose()
    assert kinds[:2] == [b"queued", b"open"] and kinds[-1] == b"end" and b"frame" in kinds
    assert TaskEnd.model_validate_json(entries[-1][1][b"d"]).status == "completed"


async def test_on_redis_a_task_is_its_tenants_and_stays_active_only_until_it_ends(
    redis_server: RedisServer,
) -> None:
    """Cancel: another tenant's task is not found, like an unknown one. Active tasks: each
    is released when its end entry appears (a cancel, a worker's end) or its stream is gone.
    Listening: another tenant's task is not found either."""
    link = RedisLink(redis_bus_settings(redis_server.url))
    stand_in = Heartbeat(
        link,
        "worker",
        "stand-in",
        lambda: worker_health(voices={"sine": "ready", "other": "loading"}, name="stand-in"),
    )
    ended: list[str] = []
    submitter = RedisTaskSubmitter(link, 60, on_ended=ended.append)
    source = RedisFrameSource(link, task_wait_s=0.3, task_timeout_s=5)
    sink = RedisFrameSink(link, 60, 1000)
    cancelled, spoken, expired = (str(uuid.uuid4()) for _ in range(3))
    try:
        await link.ping()
        assert not submitter.ready
        await stand_in.beat()
        await submitter.refresh()
        assert submitter.ready
        voices = await submitter.voices()
        assert [(v.name, v.ready) for v in voices] == [("other", False), ("sine", True)]
        for task_id in (cancelled, spoken, expired):
            await submitter.submit(SubmitTask(task_id=task_id, text="Hi.", tenant="alice"))
        with pytest.raises(TaskNotFound):
            await submitter.cancel(cancelled, "bob")
        with pytest.raises(TaskNotFound):
            await submitter.cancel(cancelled, None)  # anonymous is not alice either
        assert ended == []
        assert await submitter.cancel(cancelled, "alice") is True
        assert ended == [cancelled]

        # A worker speaks one to its end; another's stream is lost (Redis restarted empty).
        await sink.open(opened(spoken).model_copy(update={"tenant": "alice"}))
        await sink.append(spoken, 0, 0.5, b"\x01\x00" * 8)
        with pytest.raises(TaskNotFound):  # bob cannot listen to alice's task
            async with contextlib.aclosing(source.read(spoken, 0, "bob")) as events:
                async for _ in events:
                    pass
        await submitter.check_ended()
        assert ended == [cancelled], "still speaking: still active"
        await sink.end(TaskEnd(task_id=spoken, status="completed"))
        await link.client.delete(link.keys.task(expired))
        await submitter.check_ended()
        assert sorted(ended[1:]) == sorted([spoken, expired])

        async with contextlib.aclosing(source.read(spoken, 0, "alice")) as events:
            heard = [event async for event in events]
        assert isinstance(heard[0], TaskOpen) and heard[0].tenant == "alice"
        assert heard[1] == (0, 0.5, b"\x01\x00" * 8, None, None)
        assert isinstance(heard[-1], TaskEnd) and heard[-1].status == "completed"
    finally:
        await stand_in.withdraw()
        await source.aclose()
        await link.aclose()


async def _gone(client: Redis, key: str) -> bool:
    return not await client.exists(key)


async def _refreshed(submitter: RedisTaskSubmitter) -> bool:
    await submitter.refresh()
    return submitter.available


async def _running(http: httpx.AsyncClient, worker: RunningServer, count: int) -> bool:
    running: int = (await http.get(f"{worker.http_url}/health")).json()["running"]
    return running == count
