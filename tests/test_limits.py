"""Per-tenant limits on /ws/input: speaks and characters per minute, active tasks.

Real sockets throughout: an input handler, a real TTS worker (in this process, with engines
that hold or fail tasks on cue) and a recorder standing in for the output handler. The
frontends send the identity headers the gateway would send, from loopback, without an
internal token (how the gateway talks to the back ends when none is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aivtuber_common.config import (
    AuthSettings,
    InputHandlerSettings,
    LimitOverrides,
    LimitsSettings,
    OutputHandlerSettings,
    Settings,
    SineVoice,
    TenantSettings,
)
from aivtuber_common.identity import CLIENT_HEADER, GATEWAY_TOKEN_HEADER, TENANT_HEADER
from aivtuber_common.internal import TASK_EVENTS_PATH, TaskSnapshot
from aivtuber_common.token_file import with_internal_token
from aivtuber_input import activity
from aivtuber_input import create_app as input_app
from aivtuber_input.activity import ORPHAN_GRACE_S, ActiveTasks
from aivtuber_output import create_app as output_app
from aivtuber_tts.engines import LocalEngine
from tests.support import RunningServer, eventually, free_port, run_server
from tests.test_worker_crash import HoldingTts, wait_healthy, worker_process
from tests.tts_fakes import (
    GatedEngine,
    IngestRecorder,
    factory_with,
    running_recorder,
    running_worker,
    sine_settings,
)

WAIT_S = 15.0
HELD = "One. Two."  # the gated engine holds its second piece: the task stays active


class FailingEngine(LocalEngine):
    name = "failing"
    sample_rate = 16000
    warmup = False

    def synthesize_piece(self, piece: str) -> bytes:
        raise RuntimeError("the model ran out of tea")


@contextlib.asynccontextmanager
async def stack(
    limits: LimitsSettings | None = None, tenants: dict[str, TenantSettings] | None = None
) -> AsyncIterator[tuple[RunningServer, GatedEngine, IngestRecorder]]:
    """An input handler in front of one worker whose ``gated`` voice holds tasks."""
    gated = GatedEngine()
    async with contextlib.AsyncExitStack() as stack:
        recorder = await stack.enter_async_context(running_recorder())
        worker_settings = sine_settings(
            recorder.url,
            voices={
                "gated": SineVoice(),
                "failing": SineVoice(),
                "sine": SineVoice(),
            },
            max_concurrent=1,
        )
        engines = factory_with({"gated": gated, "failing": FailingEngine()})
        worker = await stack.enter_async_context(
            running_worker(worker_settings, engine_factory=engines)
        )
        stack.callback(gated.release.set)  # before the worker stops: its thread must end
        settings = Settings(
            limits=limits or LimitsSettings(),
            auth=AuthSettings(tenants=tenants or {}),
            input_handler=InputHandlerSettings(workers=[worker.server.http_url]),
        )
        handler = await stack.enter_async_context(run_server(input_app(settings)))
        yield handler, gated, recorder


@contextlib.asynccontextmanager
async def frontend(
    server: RunningServer,
    tenant: str | None = None,
    client_ip: str = "10.0.0.1",
    token: str | None = None,
) -> AsyncIterator[ClientConnection]:
    """A client of the input handler as the gateway is (with ``token`` when one is set)."""
    headers = {CLIENT_HEADER: client_ip, **({GATEWAY_TOKEN_HEADER: token} if token else {})}
    if tenant is not None:
        headers[TENANT_HEADER] = tenant
    async with connect(server.ws_url + "/ws/input", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["action"] == "task_id_assigned"
        yield ws


async def ask(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    async with asyncio.timeout(WAIT_S):
        return dict(json.loads(await ws.recv()))


async def speak(ws: ClientConnection, text: str = HELD, **extra: Any) -> dict[str, Any]:
    return await ask(ws, {"type": "speak", "text": text, "voice": "gated", **extra})


async def queued(ws: ClientConnection, text: str = HELD, **extra: Any) -> str:
    reply = await speak(ws, text, **extra)
    assert reply.get("action") == "upload_processed", reply
    return str(reply["task_id"])


async def queued_once_allowed(ws: ClientConnection, text: str = HELD, **extra: Any) -> int:
    """Speak until the active-task cap lets it through (the worker's report of a task's end
    travels on its own socket); how many times it was refused first."""
    refusals = 0
    async with asyncio.timeout(WAIT_S):
        while True:
            reply = await speak(ws, text, **extra)
            if reply.get("action") == "upload_processed":
                return refusals
            assert reply["code"] == "rate_limited", reply
            refusals += 1
            await asyncio.sleep(min(reply["retry_after_ms"], 20) / 1000)


def assert_rate_limited(reply: dict[str, Any], request_id: str | None = None) -> int:
    expected = {"type", "code", "message", "retry_after_ms"} | (
        {"request_id"} if request_id else set()
    )
    assert set(reply) == expected, reply
    assert reply["type"] == "error" and reply["code"] == "rate_limited"
    assert reply.get("request_id") == request_id
    assert isinstance(reply["retry_after_ms"], int) and reply["retry_after_ms"] > 0
    assert reply["message"].endswith(".")
    return int(reply["retry_after_ms"])


async def test_speaks_per_minute_are_counted_across_a_tenants_connections() -> None:
    limits = LimitsSettings(speaks_per_minute=3, max_active_tasks=100)
    async with stack(limits) as (server, gated, _):
        gated.release.set()  # tasks end at once: only the rate counts
        async with frontend(server, "alpha") as one, frontend(server, "alpha") as two:
            await queued(one)
            await queued(two)
            await queued(one)
            reply = await speak(two, request_id="r4")
            retry_ms = assert_rate_limited(reply, "r4")
            # The oldest of the three leaves the minute first: that is the wait.
            assert 55_000 < retry_ms <= 60_000
            assert "3 speaks per minute" in reply["message"]
            # The connection stays open and usable; other tenants and IPs have their own.
            assert (await ask(two, {"type": "dance"}))["code"] == "unknown_type"
            async with frontend(server, "beta") as other:
                await queued(other)
            async with frontend(server, None, "10.0.0.7") as anonymous:
                await queued(anonymous)
            assert_rate_limited(await speak(one))


async def test_anonymous_clients_are_limited_per_address() -> None:
    limits = LimitsSettings(speaks_per_minute=1, max_active_tasks=100)
    async with stack(limits) as (server, gated, _):
        gated.release.set()
        async with (
            frontend(server, None, "192.0.2.1") as first,
            frontend(server, None, "192.0.2.1") as same_ip,
            frontend(server, None, "192.0.2.2") as other_ip,
        ):
            await queued(first)
            assert_rate_limited(await speak(same_ip))
            await queued(other_ip)


async def test_chars_per_minute_count_characters_and_say_when_they_fit() -> None:
    limits = LimitsSettings(chars_per_minute=30, max_active_tasks=100)
    async with stack(limits) as (server, gated, _):
        gated.release.set()
        async with frontend(server, "alpha") as ws:
            await queued(ws, "Twenty characters!!!")  # 20
            reply = await speak(ws, "Eleven ch..")  # 20 + 11 > 30
            retry_ms = assert_rate_limited(reply)
            assert 55_000 < retry_ms <= 60_000 and "30 characters per minute" in reply["message"]
            await queued(ws, "Ten chars.")  # 20 + 10 fits
            # A text that could never fit the budget is not worth waiting for.
            too_long = await speak(ws, "x" * 31, request_id="big")
            assert too_long["code"] == "text_too_long" and too_long["request_id"] == "big"
            assert "30 characters per minute" in too_long["message"]


async def test_a_tenants_own_limits_override_the_defaults() -> None:
    tenants = {
        "big": TenantSettings(key="k" * 16, limits=LimitOverrides(speaks_per_minute=4)),
        "small": TenantSettings(key="s" * 16),
    }
    limits = LimitsSettings(speaks_per_minute=2, max_active_tasks=100)
    async with stack(limits, tenants) as (server, gated, _):
        gated.release.set()
        async with frontend(server, "big") as big, frontend(server, "small") as small:
            for _ in range(4):
                await queued(big)
            assert_rate_limited(await speak(big))
            for _ in range(2):
                await queued(small)
            assert_rate_limited(await speak(small))


async def test_active_tasks_are_capped_and_freed_when_tasks_complete() -> None:
    async with stack(LimitsSettings(max_active_tasks=2)) as (server, gated, recorder):
        async with frontend(server, "alpha") as one, frontend(server, "alpha") as two:
            first = await queued(one)
            await queued(two)
            reply = await speak(one, request_id="third")
            retry_ms = assert_rate_limited(reply, "third")
            assert retry_ms < 60_000 and "2 unfinished tasks" in reply["message"]
            # Nothing already accepted was dropped; nobody has subscribed to any of them.
            async with frontend(server, "beta") as other:
                await queued(other, "Hi.", voice="sine")
            gated.release.set()
            await recorder.ended(first)
            await queued_once_allowed(one, "Hi.", voice="sine")
            await queued_once_allowed(two, "Hi.", voice="sine")
    assert all(task.end is not None for task in recorder.tasks.values())
    # The tenant travels with the task, for the output handler's ownership checks.
    assert recorder.tasks[first].open.tenant == "alpha"


async def test_a_cancelled_task_frees_its_place() -> None:
    async with stack(LimitsSettings(max_active_tasks=1)) as (server, _, recorder):
        async with frontend(server, "alpha") as ws:
            held = await queued(ws)
            assert_rate_limited(await speak(ws))
            cancelled = await ask(ws, {"type": "cancel", "task_id": held})
            assert cancelled["action"] == "cancelled"
            await queued_once_allowed(ws, "Hi.", voice="sine")
    task = recorder.tasks[held]
    assert task.end is not None and task.end.status == "cancelled"


async def test_a_failed_task_frees_its_place() -> None:
    async with stack(LimitsSettings(max_active_tasks=1)) as (server, _, recorder):
        async with frontend(server, "alpha") as ws:
            failing = await queued(ws, "Doomed.", voice="failing")
            end = (await recorder.ended(failing)).end
            assert end is not None and end.status == "failed"
            await queued_once_allowed(ws)


@pytest.mark.parametrize("failure", ["killed", "hung"])
async def test_the_tasks_of_a_dead_or_hung_worker_stop_counting(
    tmp_path: Path, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL: no goodbye from the worker; SIGSTOP: it just stops answering. Either way
    its task must not stay active forever."""
    # A hung worker is noticed after SILENCE_LIMIT_S and its tasks released ORPHAN_GRACE_S
    # later; shortened here (still above the worker's 2 s snapshot interval).
    monkeypatch.setattr(activity, "SILENCE_LIMIT_S", 3.0)
    monkeypatch.setattr(activity, "ORPHAN_GRACE_S", 1.0)
    tts = HoldingTts()
    port = free_port()
    worker_url = f"http://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        remote = await stack.enter_async_context(run_server(tts.app))
        stack.callback(tts.release.set)
        output = await stack.enter_async_context(
            run_server(output_app(Settings(output_handler=OutputHandlerSettings())))
        )
        # The worker process reads the machine's token file: so does this input handler.
        settings = with_internal_token(
            Settings(
                limits=LimitsSettings(max_active_tasks=1),
                input_handler=InputHandlerSettings(workers=[worker_url], worker_timeout_s=1.0),
            )
        )
        handler = await stack.enter_async_context(run_server(input_app(settings)))
        async with worker_process(tmp_path, port, output, remote) as (process, _):
            await wait_healthy(worker_url)
            async with frontend(handler, "alpha", token=settings.internal_token) as ws:
                held = await ask(ws, {"type": "speak", "text": "Please HOLD this line."})
                assert held["action"] == "upload_processed", held
                reply = await ask(ws, {"type": "speak", "text": "Another HOLD line."})
                assert_rate_limited(reply)
                if failure == "killed":
                    process.send_signal(signal.SIGKILL)
                    await asyncio.wait_for(process.wait(), WAIT_S)
                else:
                    process.send_signal(signal.SIGSTOP)
                    stack.callback(_resume, process)

                # The place is free again. (The next speak meets no working worker, so it
                # is tts_unavailable, no longer rate_limited.)
                async def not_limited() -> dict[str, Any] | None:
                    reply = await ask(ws, {"type": "speak", "text": "Hi."})
                    return None if reply["code"] == "rate_limited" else reply

                async with asyncio.timeout(WAIT_S):
                    reply = await eventually(not_limited, every=0.05)
                assert reply["code"] == "tts_unavailable", reply


@pytest.mark.parametrize("voice", ["gated", "sine"])
async def test_a_speak_flood_from_one_socket_leaves_a_bounded_number_of_tasks(voice: str) -> None:
    """The flood that once piled up thousands of unclaimed tasks in the output handler:
    with the default limits, at most max_active_tasks of it is ever accepted at once and at
    most speaks_per_minute in the minute, whatever the client sends."""
    limits, speaks = LimitsSettings(), 200
    async with stack(limits) as (server, _, recorder):
        async with frontend(server, None, "198.51.100.9") as ws:
            for n in range(speaks):
                message = {"type": "speak", "text": f"Line {n}. More.", "voice": voice}
                await ws.send(json.dumps(message))
            replies = []
            async with asyncio.timeout(WAIT_S):
                for _ in range(speaks):
                    replies.append(json.loads(await ws.recv()))
    accepted = [reply for reply in replies if reply.get("action") == "upload_processed"]
    limited = [reply for reply in replies if reply.get("code") == "rate_limited"]
    assert len(accepted) + len(limited) == speaks
    # Every task the output handler was told of is one of the accepted ones.
    assert len(recorder.tasks) == len(accepted)
    if voice == "gated":
        # No task ends: the active-task cap is the bound.
        assert len(accepted) == limits.max_active_tasks
    else:
        # Tasks end as fast as the tone is made: the rate per minute is the bound.
        assert limits.max_active_tasks <= len(accepted) <= limits.speaks_per_minute


# --- the active-task bookkeeping, on a clock of its own --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_workers_tasks_are_released_after_the_grace_period() -> None:
    clock = Clock()
    active = ActiveTasks(clock)
    active.snapshot("w", TaskSnapshot(active=[], ended=[]), asked_at=clock.now)
    active.admitted("t1", "k", 10)
    active.accepted("t1", "w")
    active.stream_lost("w", worker_gone=False)  # hung, or a network hiccup
    clock.now += ORPHAN_GRACE_S - 0.1
    assert active.count("k") == 1
    assert active.expected_wait_s("k") == pytest.approx(0.1, abs=0.01)
    clock.now += 0.1
    assert active.count("k") == 0


def test_a_reconnected_workers_first_snapshot_settles_what_happened_meanwhile() -> None:
    clock = Clock()
    active = ActiveTasks(clock)
    active.snapshot("w", TaskSnapshot(active=[], ended=[]), asked_at=clock.now)
    for task_id in ("still-held", "ended-meanwhile", "given-after-asking", "ended-just-now"):
        active.admitted(task_id, "k", 10)
    active.accepted("still-held", "w")
    active.accepted("ended-meanwhile", "w")
    active.stream_lost("w", worker_gone=False)
    clock.now += 1
    asked_at = clock.now
    clock.now += 0.01
    active.accepted("given-after-asking", "w")  # may be missing from the snapshot
    active.accepted("ended-just-now", "w")
    snapshot = TaskSnapshot(active=["still-held"], ended=["ended-just-now"])
    active.snapshot("w", snapshot, asked_at)
    clock.now += ORPHAN_GRACE_S * 2  # no orphan is left to expire
    assert active.count("k") == 2  # still-held, given-after-asking
    active.ended("given-after-asking")
    active.ended("still-held")
    assert active.count("k") == 0 and len(active) == 0


def test_a_task_whose_end_arrives_before_its_acceptance_is_not_counted() -> None:
    active = ActiveTasks(Clock())
    active.admitted("t1", "k", 10)
    active.ended("t1")  # the events socket was faster than the POST's answer
    active.accepted("t1", "w")
    assert active.count("k") == 0


async def test_the_workers_events_socket_needs_the_internal_token() -> None:
    async with running_recorder("s3cret-internal-token") as recorder:
        async with running_worker(
            sine_settings(recorder.url, token="s3cret-internal-token")
        ) as worker:
            url = worker.server.ws_url + TASK_EVENTS_PATH
            async with connect(url) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 4401
            headers = {"Authorization": "Bearer s3cret-internal-token"}
            async with connect(url, additional_headers=headers) as ws:
                first = json.loads(await ws.recv())
    assert first == {"type": "task_snapshot", "active": [], "ended": []}


def test_orphans_of_clients_that_never_come_back_are_swept() -> None:
    clock = Clock()
    active = ActiveTasks(clock)
    for n in range(40):  # forty addresses, one task each, on a worker that then hangs
        active.admitted(f"old-{n}", f"ip:192.0.2.{n}", 10)
        active.accepted(f"old-{n}", "w")
    clock.now += ORPHAN_GRACE_S
    for n in range(30):  # others keep speaking; nobody asks about the old addresses
        active.admitted(f"new-{n}", f"ip:198.51.100.{n}", 10)
    assert len(active) == 30


def _resume(process: asyncio.subprocess.Process) -> None:
    # SIGCONT for a stopped worker, unless its context already reaped it.
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)
