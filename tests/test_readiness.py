"""Honest health: /health says ok only when a line can be spoken, and a speak that arrives
while the workers warm up waits for one instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from aivtuber_input.workers import HttpTaskSubmitter
from bench.procs import Proc, python_argv
from bench.stack import MAIN, Ports, stack_config, write_config
from tests.frontend import frontend, listen, speak
from tests.support import PROCESS_START_S, run_server
from tests.test_input_handler import FakeWorker, ask, client, input_handler
from tests.tts_fakes import worker_health

START_TIMEOUT_S = 60.0  # a hang guard for the in-process servers of a loaded machine


class WarmingWorker(FakeWorker):
    """Answers /health 503 "starting" until :attr:`warm` is set, then 200."""

    def __init__(self) -> None:
        super().__init__()
        self.warm = asyncio.Event()
        self.probed_starting = asyncio.Event()

    async def health(self, request: Request) -> Response:
        if not self.warm.is_set():
            self.probed_starting.set()
            body = worker_health("starting", {"sine": "loading"}).model_dump_json()
            return Response(body, status_code=503, media_type="application/json")
        return await super().health(request)


async def test_input_health_is_degraded_until_a_worker_is_ready_and_a_speak_waits_for_it() -> None:
    worker = WarmingWorker()
    async with run_server(worker.app) as tts:
        async with input_handler([tts.http_url], health_interval_s=0.05) as server:
            async with httpx.AsyncClient() as http:
                await asyncio.wait_for(worker.probed_starting.wait(), START_TIMEOUT_S)
                response = await http.get(f"{server.http_url}/health")
                assert response.status_code == 503
                assert response.json()["status"] == "degraded"
                async with client(server) as (ws, assigned):
                    await ws.send('{"type":"speak","text":"Waited for."}')
                    # The speak is waiting for a ready worker, not refused.
                    with contextlib.suppress(TimeoutError):
                        early = await asyncio.wait_for(ws.recv(), 0.2)
                        raise AssertionError(f"answered before a worker was ready: {early}")
                    worker.warm.set()
                    reply = await asyncio.wait_for(ws.recv(), START_TIMEOUT_S)
                    assert '"upload_processed"' in reply and assigned in reply
                response = await http.get(f"{server.http_url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert [task["text"] for task in worker.submitted] == ["Waited for."]


async def test_a_speak_with_every_worker_down_is_refused_at_once() -> None:
    async with input_handler(["http://127.0.0.1:9"], ready_wait_s=60) as server:
        async with client(server) as (ws, _):
            reply = await asyncio.wait_for(ask(ws, {"type": "speak", "text": "Hi"}), 20)
    assert reply["code"] == "tts_unavailable"


@pytest.mark.piper
@pytest.mark.timeout(300)  # four cold processes and a neural voice (see PROCESS_START_S)
async def test_the_stack_started_at_once_speaks_as_soon_as_the_gateway_health_says_ok(
    tmp_path: Path,
) -> None:
    # The shipped default voice: it takes seconds to load, the window this is about.
    ports = Ports.pick()
    config, _ = write_config(tmp_path, stack_config(ports, "joe"))
    procs = [
        Proc(section, python_argv(MAIN[section], "--config", str(config)), tmp_path)
        for section in ("gateway", "input_handler", "output_handler", "tts_worker")
    ]
    try:
        for proc in procs:  # all four together, in the Procfile's order
            proc.start()
        health = f"http://127.0.0.1:{ports.gateway}/health"
        async with httpx.AsyncClient(timeout=2.0) as http, asyncio.timeout(PROCESS_START_S):
            while True:
                for proc in procs:
                    proc.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(health)).status_code == 200:
                        break
                await asyncio.sleep(0.02)
        # At once: no retry, no grace period.
        url = f"ws://127.0.0.1:{ports.gateway}"
        async with frontend(url) as (ws, _):
            task_id = await speak(ws, "Ready when health said so.")
        heard = await asyncio.wait_for(listen(url, task_id), START_TIMEOUT_S)
    finally:
        for proc in reversed(procs):
            proc.stop()
    assert heard.end is not None and heard.end["type"] == "audio_complete", heard.end
    assert len(heard.pcm) > 0


async def test_a_worker_whose_other_voice_failed_is_ready_for_its_default_voice() -> None:
    degraded = worker_health("degraded", {"joe": "ready", "broken": "failed"}, default_voice="joe")
    starting = worker_health("starting", {"joe": "loading"}, default_voice="joe")
    answers = {"http://a": (503, degraded), "http://b": (503, starting)}

    def handle(request: httpx.Request) -> httpx.Response:
        status, body = answers[f"http://{request.url.host}"]
        return httpx.Response(status, content=body.model_dump_json())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        submitter = HttpTaskSubmitter(http, list(answers), timeout_s=1.0)
        await submitter.refresh()
    assert submitter.ready
    assert [worker.state for worker in submitter.workers] == ["ready", "starting"]
